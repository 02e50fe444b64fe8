"""Starting and stopping `headstart serve`: clear errors before binding, clean exits on Ctrl-C and SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from servetools import photos, served_models, server, start_server, stop_server, wait_ready  # noqa: F401  (the fixtures)

pytestmark = pytest.mark.slow


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "headstart", "serve", *args], capture_output=True, text=True, timeout=120
    )


def test_missing_model_file_is_one_line(tmp_path: Path) -> None:
    r = run(str(tmp_path / "nothing.safetensors"), "--port", "0")
    assert r.returncode == 2 and "no such model file" in r.stderr and "Traceback" not in r.stderr


def test_busy_port_is_one_line(server) -> None:
    port = server.url.rsplit(":", 1)[1]
    r = run(str(server.models["pets"]), "--port", port)
    assert r.returncode == 2 and f"Port {port} on 127.0.0.1 is in use" in r.stderr and "Traceback" not in r.stderr


def test_bad_options_name_the_option(server) -> None:
    r = run(str(server.models["pets"]), "--max-batch-size", "0")
    assert (
        r.returncode == 2 and "The '--max-batch-size' option must be an int" in r.stderr and "Traceback" not in r.stderr
    )


def test_ctrl_c_while_loading_stops_cleanly(served_models, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    process, _ = start_server([str(served_models["pets"])], log)
    assert stop_server(process) == 0
    text = log.read_text()
    assert "stopped" in text and "Traceback" not in text, text


def wait_until_received(
    url: str, n: int, seconds: float = 120, route: str = "/v1/predict", key: str | None = None
) -> None:
    """Until the server has ``n`` requests to ``route`` in flight or answered (by its own /metrics)."""
    import re

    from headstart.serve.client import Client

    client = Client(url, timeout=30, api_key=key)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        text = client.get("/metrics").body.decode()
        in_flight = int(re.search(r"^headstart_requests_in_flight (\d+)", text, re.M).group(1)) - 1  # (this one)
        done = sum(
            int(x)
            for x in re.findall(rf'^headstart_requests_total\{{route="{route}",status="\d+"\}} (\d+)', text, re.M)
        )
        if in_flight + done >= n:
            return
        time.sleep(0.02)
    raise AssertionError(f"the server did not receive {n} requests within {seconds} s")


def test_sigterm_finishes_requests_in_flight(served_models, photos, tmp_path: Path) -> None:
    from headstart.serve.client import Client

    log = tmp_path / "serve.log"
    process, url = start_server([str(served_models["pets"])], log, "--max-batch-size", "4")
    try:
        wait_ready(url, process, log)
        statuses: list[int] = []

        def ask(i: int) -> None:
            statuses.append(Client(url, timeout=120).post_files("/v1/predict", [photos[i]]).status)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        wait_until_received(url, 8)  # every request is in (decoding, queued or in a batch) or answered
        process.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(120)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    text = log.read_text()
    assert statuses == [200] * 8, (statuses, text)
    assert "stopped" in text and "Traceback" not in text, text


def test_a_model_that_does_not_load_stops_the_server(served_models, tmp_path: Path) -> None:
    """A model file whose weights do not fit its architecture: the server says so and exits 2, no traceback — now
    before it listens (the trunk is checked against the weights its metadata names when the file is opened)."""
    from dataclasses import replace

    from headstart.models.classifier import Classifier

    good = Classifier.load(served_models["pets"])
    broken = Classifier(
        replace(good.spec, name="tf_efficientnet_lite1"),
        good.classes,
        good.head_weight,
        good.head_bias,
        good.trunk,
        good.metadata,
    )
    path = broken.save(tmp_path / "broken.safetensors")
    r = run(str(path), "--port", "0")
    assert r.returncode == 2 and "tf_efficientnet_lite1" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "broken.safetensors" in r.stderr and "listening on" not in r.stderr + r.stdout


def explain_seconds(url: str, photo: tuple[str, bytes], key: str) -> float:
    from headstart.serve.client import Client

    start = time.perf_counter()
    r = Client(url, api_key=key, timeout=300).post_files("/v1/explain", [photo])
    assert r.status == 200, r.body[:300]
    return time.perf_counter() - start


def test_first_explain_is_warm_and_sigterm_refuses_waiting_work_with_json_503(
    served_models, photos, tmp_path: Path
) -> None:
    """A fresh server (its key from --api-key-file): the first Grad-CAM costs what the second does (warmed up at
    load; it took ~7 s); then SIGTERM while six explanations wait for the one running: each answer is a 200 or a
    JSON 503 `shutting_down`, the process exits promptly with 0 and prints no traceback."""
    import json

    from headstart.serve.client import Client
    from headstart.serve.limits import Limits

    key = "file-key-41c9"
    key_file = tmp_path / "key.txt"
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    log = tmp_path / "serve.log"
    process, url = start_server([str(served_models["pets"])], log, "--api-key-file", str(key_file))
    try:
        wait_ready(url, process, log)
        assert key not in Path(f"/proc/{process.pid}/cmdline").read_bytes().decode(errors="replace")
        assert Client(url, timeout=30).get("/v1/models").status == 401
        first = explain_seconds(url, photos[0], key)
        second = explain_seconds(url, photos[1], key)
        assert first < 2 * second + 1.0, f"first explain {first:.2f} s, second {second:.2f} s: not warmed up"

        answers: list[tuple[int, str, bytes]] = []

        def ask(i: int) -> None:
            r = Client(url, api_key=key, timeout=300).post_files("/v1/explain", [photos[i]])
            answers.append((r.status, r.headers.get("content-type", ""), r.body))

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        wait_until_received(url, 8, route="/v1/explain", key=key)  # (the two timed above, and these six)
        process.send_signal(signal.SIGTERM)
        stopped = time.perf_counter()
        for t in threads:
            t.join(300)
        status = process.wait(120)
        seconds = time.perf_counter() - stopped
    finally:
        if process.poll() is None:
            process.kill()
    text = log.read_text()
    assert status == 0 and "Traceback" not in text, text[-3000:]
    assert len(answers) == 6
    refused = [json.loads(body) for code, kind, body in answers if code != 200]
    assert all(code in (200, 503) for code, _, _ in answers), [(c, b[:200]) for c, _, b in answers]
    assert refused and all(r["code"] == "shutting_down" for r in refused), refused
    assert seconds < second + Limits().shutdown_grace_s + 10, f"exit {seconds:.1f} s after SIGTERM"


def test_api_key_file_errors_are_one_line(tmp_path: Path, served_models) -> None:
    r = run(str(served_models["pets"]), "--api-key-file", str(tmp_path / "missing.txt"), "--port", "0")
    assert r.returncode == 2 and "cannot read the API key file" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "empty.txt").write_text("\n")
    r = run(str(served_models["pets"]), "--api-key-file", str(tmp_path / "empty.txt"), "--port", "0")
    assert r.returncode == 2 and "the API key file is empty" in r.stderr


def test_help_recommends_the_environment_or_a_key_file() -> None:
    import re

    r = run("--help")
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", r.stdout).split())  # the words, without the help's boxes
    assert "HEADSTART_API_KEY" in text and "--api-key-file" in text and "process list" in text
