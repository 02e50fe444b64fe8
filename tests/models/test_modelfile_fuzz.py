"""Mutation fuzzing of the model-file loader: hundreds of damaged and hostile model files, each loaded and (when it
loads) used for a prediction in a worker process with bounded memory; only headstart's own errors may come out.

The files are mutations of a real model file (``data/old-format-v1.safetensors``: a probe on timm's small
``test_efficientnet``, 430 KB): flipped bytes in the header and in the weights, truncations, appended bytes, a
wrong header length, JSON fields replaced by hostile values (null, strings for lists, huge numbers, NaN, deep
nesting), tensors with other dtypes, shapes and byte ranges, NaN weights, and valid variations that must load and
predict. Each case is generated from its number, so a failure names a case that can be rebuilt and run alone:
``python tests/models/test_modelfile_fuzz.py --case N``.

The workers import torch first, then cap their address space at what they use plus ``HEADROOM`` (a hostile file
that makes headstart allocate more fails the case), and report their peak resident memory.
"""

from __future__ import annotations

import json
import math
import os
import random
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
BASE = HERE / "data" / "old-format-v1.safetensors"
PHOTO = HERE.parents[1] / "src" / "headstart" / "sample_data" / "pets" / "test" / "pug"
N_CASES = 560
WORKERS = 2
HEADROOM = 3 << 30  # address space a worker may add to what torch and timm took (RLIMIT_AS)
PEAK_RSS_LIMIT = 3 << 30  # predict with a hostile model file stays under 3 GB resident
CASE_SECONDS = 30  # one case that takes longer is a hang

# ----------------------------------------------------------------------------------------------- the mutations
_HOSTILE = [
    None,
    True,
    False,
    0,
    -1,
    1,
    7,
    2**31,
    2**63,
    2**64,
    -(2**63),
    1e308,
    -1e308,
    0.5,
    -0.0,
    1e-300,
    "",
    " ",
    "x",
    "abcdefghijkl",
    "a" * 100_000,
    "../../etc/passwd",
    "hf-hub:timm/resnet50",
    [],
    [None],
    ["a", "a"],
    [1, 2, 3],
    [3, 2**20, 2**20],
    {},
    {"a": 1},
    list(range(10_000)),
    [[[]]],
]
_SPECIAL_FLOATS = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1" * 5000, "-" + "9" * 4400, "1e-400"]


def _parts(data: bytes) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    """(safetensors header without __metadata__, headstart document, tensor bytes) of a model file."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    document = json.loads(header.pop("__metadata__")["headstart"])
    return header, document, data[8 + n :]


def _assemble(
    header: dict[str, Any], document: Any, body: bytes, *, meta: Any = None, text: str | None = None
) -> bytes:
    full = dict(header)
    full["__metadata__"] = (
        meta if meta is not None else {"headstart": text if text is not None else json.dumps(document)}
    )
    raw = json.dumps(full).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into a JSON value (dict keys and list indices), the root excluded."""
    out = []
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))[:20]
    else:
        return out
    for key, child in items:
        out.append((*prefix, key))
        out += _paths(child, (*prefix, key))
    return out


def _set(document: Any, path: tuple, value: Any, *, delete: bool = False) -> None:
    node = document
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


_TARGETS = {  # key path -> values to try; valid ones among them must load and predict
    ("classes",): [
        None,
        "abcdefghijkl",
        [],
        ["a"] * 12,
        [""] + ["c%d" % i for i in range(11)],
        list(range(12)),
        ["c%d" % i for i in range(11)],
        ["c%d" % i for i in range(13)],
        ["ünï %d 猫" % i for i in range(12)],
        [["x"]] * 12,
        ["  "] + ["c%d" % i for i in range(11)],
    ],
    ("backbone", "name"): [
        "tf_efficientnet_lite0",
        "resnet50",
        "no_such_net",
        "resnet50.bogus",
        "hf-hub:x/y",
        "/etc/passwd",
        "",
        None,
        5,
        "vit_gigantic_patch14_clip_224",
        "test_efficientnet",
    ],
    ("backbone", "num_features"): [0, -1, 255, 257, 2**40, "256", None, 256.0, True],
    ("backbone", "num_classes"): [-1, None, "x", 0, 10**30],
    ("backbone", "flip_average"): [True, False, "yes", None, 1],
    ("backbone", "label_names"): [None, [], "abc", [1, 2], ["a"] * 1000],
    ("backbone", "source"): [None, 5, "", "x" * 10_000],
    ("backbone", "weights_id"): [None, 5, "other"],
    ("backbone", "data_config"): [None, [], {}, "x"],
    ("backbone", "data_config", "input_size"): [
        [3, 2**20, 2**20],
        [3, 1024, 1024],
        [3, 8, 8],
        [3, 7, 160],
        [1, 160, 160],
        [3, 160],
        [3, 64, 96],
        [3, 160, 160, 1],
        [3, -160, 160],
        None,
        "160",
        [3, 160.5, 160],
        [3, True, 160],
        [3, 1025, 160],
        [3, 2**64, 2**64],
    ],
    ("backbone", "data_config", "crop_pct"): [0, -1, 0.5, 1.0, 1.01, 1e-300, 0.001, "0.9", None, 0.0625],
    ("backbone", "data_config", "mean"): [[0, 0, 0], [1, 2], [0.5] * 4, None, ["a", "b", "c"], [1e300, 0, 0]],
    ("backbone", "data_config", "std"): [[0, 1, 1], [-1, 1, 1], [1, 1, 1], [1e-300, 1, 1], [1e-3, 1, 1], None, [2]],
    ("backbone", "data_config", "interpolation"): [
        "nearest",
        "bilinear",
        "box",
        "hamming",
        "lanczos",
        "random",
        "cubic",
        None,
        3,
    ],
    ("backbone", "data_config", "crop_mode"): ["squash", "border", "center", "zoom", None, 1],
    ("format_version",): [0, 2, -1, "1", None, 1.0, True, 2**64],
    ("data",): [None, [], "x", {"source": 5}, {"source": None}],
    ("metrics",): [None, [], "x", {}],
    ("method",): [None, 5, "finetune", ["probe"]],
    ("estimator",): [[], "x", {"method": "nope"}],
    ("finetune",): [[], {"epochs": "many"}],
}


def make_case(number: int) -> tuple[str, bytes]:
    """The ``number``-th mutated model file: ``(kind, bytes)``, the same on every run."""
    base = BASE.read_bytes()
    rng = random.Random(number)
    kind = KINDS[number % len(KINDS)]
    return kind, KINDS_FN[kind](base, rng)


def _flip(data: bytes, rng: random.Random, low: int, high: int, count: int) -> bytes:
    out = bytearray(data)
    for _ in range(count):
        i = rng.randrange(low, high)
        out[i] = rng.randrange(256) if rng.random() < 0.5 else out[i] ^ (1 << rng.randrange(8))
    return bytes(out)


def _header_len(data: bytes) -> int:
    return 8 + struct.unpack("<Q", data[:8])[0]


def _m_bytes(base: bytes, rng: random.Random) -> bytes:
    return _flip(base, rng, 0, len(base), rng.randint(1, 16))


def _m_header_bytes(base: bytes, rng: random.Random) -> bytes:
    return _flip(base, rng, 0, _header_len(base), rng.randint(1, 4))


def _m_data_bytes(base: bytes, rng: random.Random) -> bytes:
    return _flip(base, rng, _header_len(base), len(base), rng.randint(1, 32))


def _m_truncate(base: bytes, rng: random.Random) -> bytes:
    n = _header_len(base)
    cut = rng.choice(
        [rng.randrange(0, 9), rng.randrange(8, n), rng.randrange(n, len(base)), len(base) - rng.randint(1, 8)]
    )
    return base[:cut]


def _m_append(base: bytes, rng: random.Random) -> bytes:
    return base + rng.randbytes(rng.choice([1, 7, 8, 4096]))


def _m_length_field(base: bytes, rng: random.Random) -> bytes:
    n = _header_len(base) - 8
    value = rng.choice(
        [
            0,
            1,
            2,
            n - 1,
            n + 1,
            n + 8,
            len(base),
            len(base) - 8,
            15 << 20,
            2**31,
            2**63,
            2**64 - 1,
            rng.randrange(2**64),
        ]
    )
    return struct.pack("<Q", value) + base[8:]


def _m_doc_field(base: bytes, rng: random.Random) -> bytes:
    header, document, body = _parts(base)
    path = rng.choice(_paths(document))
    value = rng.choice(_HOSTILE)
    if rng.random() < 0.15:
        value = json.loads(_nested(rng.choice([10, 60])))
    _set(document, path, value)
    return _assemble(header, document, body)


def _m_doc_targeted(base: bytes, rng: random.Random) -> bytes:
    header, document, body = _parts(base)
    path = rng.choice(sorted(_TARGETS))
    _set(document, path, rng.choice(_TARGETS[path]))
    return _assemble(header, document, body)


def _m_doc_remove(base: bytes, rng: random.Random) -> bytes:
    header, document, body = _parts(base)
    _set(document, rng.choice(_paths(document)), None, delete=True)
    return _assemble(header, document, body)


def _m_tensor_entry(base: bytes, rng: random.Random) -> bytes:
    header, document, body = _parts(base)
    names = sorted(header)
    name = rng.choice(["head.weight", "head.bias"]) if rng.random() < 0.5 else rng.choice(names)
    entry = header[name]
    what = rng.choice(["dtype", "shape", "offsets", "remove", "rename", "extra", "entry"])
    if what == "dtype":
        entry["dtype"] = rng.choice(["F16", "F64", "I8", "U8", "BOOL", "BF16", "F8_E4M3", "X", 5, None])
    elif what == "shape":
        shape = list(entry["shape"])
        entry["shape"] = rng.choice(
            [
                shape[::-1],
                [*shape, 1],
                shape[:-1],
                [0],
                [],
                [2**40, 2**40],
                [-1],
                "x",
                [d * 2 for d in shape],
                [1] * 9,
                [True],
            ]
        )
    elif what == "offsets":
        begin, end = entry["data_offsets"]
        entry["data_offsets"] = rng.choice(
            [
                [begin, end + 4],
                [begin + 4, end],
                [begin, 2**63],
                [-4, end],
                [end, begin],
                [0, end - begin],
                [begin],
                "x",
                [begin, end, 0],
                [begin + 0.5, end],
            ]
        )
    elif what == "remove":
        del header[name]
    elif what == "rename":
        header[rng.choice(["backbone.nope", "head.weights", name + "x", ""])] = header.pop(name)
    elif what == "extra":
        header[name]["extra"] = 1
    else:
        header[name] = rng.choice([None, [], "x", {"dtype": "F32"}])
    return _assemble(header, document, body)


def _m_nesting(base: bytes, rng: random.Random) -> bytes:
    header, document, body = _parts(base)
    depth = rng.choice([63, 64, 65, 200, 1000, 5000, 100_000])
    where = rng.choice(["document", "header", "classes"])
    text = json.dumps(document)
    if where == "document":
        return _assemble(header, document, body, text=text[:-1] + ', "deep": ' + _nested(depth) + "}")
    if where == "classes":
        return _assemble(
            header, document, body, text=text.replace('"classes": [', '"classes": [' + _nested(depth) + ", ", 1)
        )
    raw = json.dumps({**header, "__metadata__": {"headstart": text}})
    raw = raw[:-1] + ', "deep": ' + _nested(depth) + "}"
    raw_bytes = raw.encode() + b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw_bytes)) + raw_bytes + body


def _m_huge_numbers(base: bytes, rng: random.Random) -> bytes:
    header, document, body = _parts(base)
    path = rng.choice(
        [
            p
            for p in _paths(document)
            if isinstance(_get(document, p), (int, float)) and not isinstance(_get(document, p), bool)
        ]
    )
    marker = "__HUGE__"
    _set(document, path, marker)
    return _assemble(
        header, document, body, text=json.dumps(document).replace(f'"{marker}"', rng.choice(_SPECIAL_FLOATS))
    )


def _get(document: Any, path: tuple) -> Any:
    for key in path:
        document = document[key]
    return document


def _m_metadata_table(base: bytes, rng: random.Random) -> bytes:
    header, document, body = _parts(base)
    meta = rng.choice(
        [
            {},
            {"headstart": 5},
            {"headstart": None},
            {"headstart": "[]"},
            {"headstart": "null"},
            {"headstart": '"text"'},
            {"format": "pt"},
            [],
            "x",
            {"headstart": json.dumps(document), "a": 1},
        ]
    )
    return _assemble(header, document, body, meta=meta if meta else {"other": "x"})


def _m_head_values(base: bytes, rng: random.Random) -> bytes:
    import numpy as np

    header, document, body = _parts(base)
    name = rng.choice(
        ["head.weight", "head.bias", rng.choice(sorted(k for k in header if header[k]["dtype"] == "F32"))]
    )
    begin, end = header[name]["data_offsets"]
    values = np.frombuffer(body[begin:end], dtype="<f4").copy()
    values[rng.randrange(len(values))] = rng.choice([math.nan, math.inf, -math.inf, 3e38, 0.0, -1e-45])
    return _assemble(header, document, body[:begin] + values.tobytes() + body[end:])


def _m_json_text(base: bytes, rng: random.Random) -> bytes:
    header, document, body = _parts(base)
    text = json.dumps(document)
    i = rng.randrange(len(text))
    how = rng.choice(["delete", "insert", "duplicate", "cut"])
    if how == "delete":
        text = text[:i] + text[i + 1 :]
    elif how == "insert":
        text = text[:i] + rng.choice('{}[]",:\\0 \x00\ud800') + text[i:]
    elif how == "duplicate":
        text = text[:i] + text[i : i + rng.randint(1, 200)] + text[i:]
    else:
        text = text[:i]
    return _assemble(header, document, body, text=text)


def _m_valid(base: bytes, rng: random.Random) -> bytes:
    """Changes a sound file may have: it must load and predict."""
    header, document, body = _parts(base)
    config = document["backbone"]["data_config"]
    change = rng.choice(["classes", "size", "crop", "interpolation", "mode", "flip", "extra"])
    if change == "classes":
        document["classes"] = [f"клас {i} 🐱" for i in range(len(document["classes"]))]
    elif change == "size":
        config["input_size"] = [3, rng.choice([8, 32, 96, 160, 333]), rng.choice([8, 64, 160, 512])]
    elif change == "crop":
        config["crop_pct"] = rng.choice([0.25, 0.5, 0.875, 1.0])
    elif change == "interpolation":
        config["interpolation"] = rng.choice(["nearest", "bilinear", "bicubic", "box", "hamming", "lanczos"])
    elif change == "mode":
        config["crop_mode"] = rng.choice(["center", "squash", "border"])
    elif change == "flip":
        document["backbone"]["flip_average"] = not document["backbone"]["flip_average"]
    else:
        document["notes"] = {"anything": [1, "two", None]}
    return _assemble(header, document, body)


KINDS_FN = {
    "bytes": _m_bytes,
    "header-bytes": _m_header_bytes,
    "data-bytes": _m_data_bytes,
    "truncate": _m_truncate,
    "append": _m_append,
    "length-field": _m_length_field,
    "doc-field": _m_doc_field,
    "doc-targeted": _m_doc_targeted,
    "doc-targeted-2": _m_doc_targeted,
    "doc-remove": _m_doc_remove,
    "tensor-entry": _m_tensor_entry,
    "nesting": _m_nesting,
    "huge-numbers": _m_huge_numbers,
    "metadata-table": _m_metadata_table,
    "head-values": _m_head_values,
    "json-text": _m_json_text,
    "valid": _m_valid,
}
KINDS = list(KINDS_FN)


# ---------------------------------------------------------------------------------------------------- the worker
def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def run_case(number: int, folder: Path, photo: Path) -> dict[str, Any]:
    """Load case ``number`` and, when it loads, predict one photo with it; what happened, as a dict."""
    from headstart.errors import HeadstartError, ModelFileError
    from headstart.features.cache import FeatureCache
    from headstart.models.classifier import Classifier

    kind, data = make_case(number)
    path = folder / f"case-{number}.safetensors"
    path.write_bytes(data)
    cache_file = folder / f"case-{number}.sqlite"
    result: dict[str, Any] = {"case": number, "kind": kind}
    start = time.perf_counter()
    try:
        model = Classifier.load(path)
        result["loaded"] = True
        predictions = model.predict([photo], top_k=3, cache=FeatureCache(cache_file), engine="torch")
        if not predictions.predictions:  # (weights that compute NaN: the photo is named as unusable, with why)
            (skipped,) = predictions.unusable
            assert skipped.reason, skipped
            result.update(outcome="skipped", message=skipped.reason[:400])
        else:
            (first,) = predictions.to_list()
            assert [p["label"] for p in first["predictions"]][:1] and all(
                label in model.classes for label in (p["label"] for p in first["predictions"])
            ), first
            result["outcome"] = "predicted"
    except ModelFileError as exc:
        result.update(outcome="ModelFileError", message=str(exc)[:400], names_file=str(path) in str(exc))
    except HeadstartError as exc:
        result.update(outcome=type(exc).__name__, message=str(exc)[:400], names_file=str(path) in str(exc))
    except BaseException as exc:
        import traceback

        result.update(
            outcome="ESCAPED " + type(exc).__name__, message=str(exc)[:400], traceback=traceback.format_exc()[-1500:]
        )
    result["seconds"] = round(time.perf_counter() - start, 3)
    for leftover in (path, cache_file, Path(f"{cache_file}-wal"), Path(f"{cache_file}-shm")):
        leftover.unlink(missing_ok=True)
    return result


def worker(cases: list[int], folder: Path, progress: Path) -> None:
    """Run ``cases`` in this process: torch first, then the address-space cap, then one case after another."""
    import resource
    import signal

    import timm  # noqa: F401
    import torch

    from headstart.models.classifier import Classifier  # noqa: F401

    torch.set_num_threads(1)
    limit = _status("VmSize") + HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    def hang(signum, frame):
        raise TimeoutError(f"a case took more than {CASE_SECONDS} s")

    signal.signal(signal.SIGALRM, hang)
    photo = sorted(PHOTO.glob("*.jpg"))[0]
    folder.mkdir(parents=True, exist_ok=True)
    with open(progress, "a") as log:
        for number in cases:
            log.write(json.dumps({"started": number}) + "\n")
            log.flush()
            signal.alarm(CASE_SECONDS)
            result = run_case(number, folder, photo)
            signal.alarm(0)
            result["peak_rss"] = _status("VmHWM")
            log.write(json.dumps(result) + "\n")
            log.flush()


# ------------------------------------------------------------------------------------------------------ the test
def _run_workers(cases: list[int], tmp_path: Path) -> list[dict[str, Any]]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MALLOC_ARENA_MAX": "2",
        "HEADSTART_CACHE_DIR": str(tmp_path / "cache"),
    }
    chunks = [cases[i::WORKERS] for i in range(WORKERS)]
    processes = []
    for i, chunk in enumerate(chunks):
        progress = tmp_path / f"worker-{i}.jsonl"
        command = [sys.executable, __file__, "--worker", json.dumps(chunk), str(tmp_path / f"w{i}"), str(progress)]
        processes.append(
            (subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT), progress)
        )
    records = []
    for process, progress in processes:
        try:
            output = process.communicate(timeout=240)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            process.kill()
            output = process.communicate()[0].decode(errors="replace")
        lines = [json.loads(line) for line in progress.read_text().splitlines()] if progress.exists() else []
        done = {r["case"] for r in lines if "case" in r}
        started = [r["started"] for r in lines if "started" in r and r["started"] not in done]
        assert process.returncode == 0 and not started, (
            f"worker ended with {process.returncode} during case {started} "
            f"(rebuild it: python {__file__} --case {started[0] if started else '?'}):\n{output[-3000:]}"
        )
        records += [r for r in lines if "case" in r]
    return records


@pytest.mark.slow
def test_hundreds_of_mutated_model_files_end_in_headstarts_own_errors_or_a_prediction(tmp_path: Path) -> None:
    start = time.perf_counter()
    records = _run_workers(list(range(N_CASES)), tmp_path)
    seconds = time.perf_counter() - start
    assert sorted(r["case"] for r in records) == list(range(N_CASES))

    escaped = [r for r in records if r["outcome"].startswith("ESCAPED")]
    assert not escaped, "\n\n".join(
        f"case {r['case']} ({r['kind']}): {r['outcome']}: {r['message']}\n{r.get('traceback', '')}" for r in escaped[:5]
    )
    unnamed = [r for r in records if r["outcome"] == "ModelFileError" and not r["names_file"]]
    assert not unnamed, [(r["case"], r["message"]) for r in unnamed[:5]]
    valid = [r for r in records if r["kind"] == "valid"]
    assert all(r["outcome"] == "predicted" for r in valid), [r for r in valid if r["outcome"] != "predicted"][:3]
    refused = sum(r["outcome"] != "predicted" for r in records)
    predicted = sum(r["outcome"] == "predicted" for r in records)
    assert refused >= N_CASES // 2 and predicted >= 60, (refused, predicted)
    peak = max(r["peak_rss"] for r in records)
    slowest = max(records, key=lambda r: r["seconds"])
    assert peak < PEAK_RSS_LIMIT, f"peak resident memory {peak / 2**30:.2f} GB"
    print(
        f"\n{N_CASES} mutated model files in {seconds:.0f} s: {predicted} loaded and predicted, {refused} refused "
        f"({sum(r['outcome'] == 'ModelFileError' for r in records)} ModelFileError); peak RSS {peak / 2**20:.0f} MB; "
        f"slowest case {slowest['case']} ({slowest['kind']}) {slowest['seconds']} s"
    )


if __name__ == "__main__":
    if sys.argv[1] == "--worker":
        worker(json.loads(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
    elif sys.argv[1] == "--case":  # rebuild one case and run it here, with a full traceback
        import tempfile

        number = int(sys.argv[2])
        with tempfile.TemporaryDirectory() as folder:
            print(run_case(number, Path(folder), sorted(PHOTO.glob("*.jpg"))[0]))
