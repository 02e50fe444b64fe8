"""One real `headstart serve` process for the serve tests: two models trained on the bundled sample, on loopback.

The server is started as a subprocess on a free port (``--port 0``; the port is read from its "listening on"
line), with an API key from the environment variable, and used by the API, browser and load tests alike; at the
end of the session it gets SIGINT and must exit 0 without a traceback.

Not a conftest.py: a second module named ``conftest`` would shadow tests/conftest.py for the test modules that do
``from conftest import shared_data``. Each serve test module imports the fixtures from here; they share one
server (and one pair of models) through ``_SHARED``, and the first session teardown stops it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="headstart serve needs the serve extra (pip install 'headstart[serve]')")
pytest.importorskip("uvicorn", reason="headstart serve needs the serve extra (pip install 'headstart[serve]')")

SAMPLE = Path(__file__).resolve().parents[2] / "src" / "headstart" / "sample_data" / "pets"

API_KEY = "test-key-7f3a"
MAX_FILES = 8
STARTUP_SECONDS = 300  # two cores shared with other test runs: importing torch and warming up can take a while


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path
    models: dict[str, Path]
    api_key: str = API_KEY

    def client(self, *, key: str | None = API_KEY, timeout: float = 120.0):
        from headstart.serve.client import Client

        return Client(self.url, api_key=key, timeout=timeout)

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")


def headstart_command() -> list[str]:
    return [sys.executable, "-m", "headstart"]


def start_server(
    models: list[str], log: Path, *extra: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, str]:
    """Start `headstart serve MODELS --port 0 EXTRA`; return the process and its URL once it listens."""
    handle = log.open("wb")
    process = subprocess.Popen(
        [*headstart_command(), "serve", *models, "--port", "0", *extra],
        stdout=handle,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    handle.close()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = re.search(r"listening on (http://\S+)", log.read_text(errors="replace"))
        if found:
            return process, found.group(1)
        if process.poll() is not None:
            raise AssertionError(f"headstart serve exited with {process.returncode}:\n{log.read_text()}")
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"headstart serve did not listen within 120 s:\n{log.read_text()}")


def wait_ready(url: str, process: subprocess.Popen, log: Path, seconds: float = STARTUP_SECONDS) -> None:
    from headstart.serve.client import Client

    client = Client(url, timeout=10)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"headstart serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            if client.get("/readyz").status == 200:
                return
        except OSError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"/readyz did not turn 200 within {seconds} s:\n{log.read_text()}")


def stop_server(process: subprocess.Popen, seconds: float = 60) -> int:
    """Ctrl-C (SIGINT), as a person would; the exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        return process.wait(seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"headstart serve did not stop within {seconds} s of Ctrl-C") from None


_SHARED: dict[str, object] = {}


@pytest.fixture(scope="session")
def served_models(sample_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The session's sample model (mirror averaging as CV chose) and one forced to average with the mirror image,
    so both feature paths are served (the second costs only a probe fit: the features are cached)."""
    from headstart.workflows.training import train

    if "models" not in _SHARED:
        flip = train(
            SAMPLE / "train",
            backbone="tf_efficientnet_lite0",  # (as the session model: its features cached)
            out=tmp_path_factory.mktemp("serve-models") / "flip.safetensors",
            flip_average=True,
        ).model_path
        _SHARED["models"] = {"pets": sample_model, "flip": flip}
    return dict(_SHARED["models"])  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def server(served_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """`headstart serve pets=… flip=…` on loopback, ready, with an API key (from $HEADSTART_API_KEY)."""
    if "server" not in _SHARED:
        log = tmp_path_factory.mktemp("serve-log") / "serve.log"
        args = [f"{name}={path}" for name, path in served_models.items()]
        process, url = start_server(
            args,
            log,
            "--max-files",
            str(MAX_FILES),
            "--max-upload-mb",
            "20",
            "--max-batch-size",
            "16",
            env={"HEADSTART_API_KEY": API_KEY, "OMP_NUM_THREADS": "2"},
        )
        _SHARED["server"] = Server(url, process, log, dict(served_models))
        try:
            wait_ready(url, process, log)
        except BaseException:
            _SHARED.pop("server")
            process.kill()
            raise
    shared = _SHARED["server"]
    yield shared
    if _SHARED.get("server") is shared:  # the first teardown stops it, the others find it gone
        del _SHARED["server"]
        status = stop_server(shared.process)  # type: ignore[attr-defined]
        text = shared.stderr()  # type: ignore[attr-defined]
        assert status == 0, f"Ctrl-C should stop the server with status 0, got {status}:\n{text[-3000:]}"
        assert "Traceback" not in text, f"the server printed a traceback:\n{text[-3000:]}"


@pytest.fixture(scope="session")
def photos() -> list[tuple[str, bytes]]:
    """The bundled sample's unseen test photos as (filename, bytes)."""
    return [(p.name, p.read_bytes()) for p in sorted((SAMPLE / "test").rglob("*.jpg"))]
