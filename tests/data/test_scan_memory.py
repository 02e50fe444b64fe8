"""``scan`` keeps its memory flat: however many files (20,000), however large each photo (just under the limit).

Each scan runs in a fresh subprocess, so its peak resident memory (``VmHWM``) is its own. Files are made fast:
a handful of real small images, hard-linked under 20,000 distinct names in 20 folders (every 500th one broken).
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image

# The peak is VmHWM, the high-water mark of this process's own memory: ru_maxrss would count the parent's too
# (Linux carries the memory of the process that was replaced by exec into it, and subprocess uses vfork).
SCAN = """
import json, sys, time
from headstart.data.scanning import scan
started = time.perf_counter()
report = scan(sys.argv[1], workers=int(sys.argv[2]))
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"n": report.n_files, "unusable": [u.path.name for u in report.unusable],
                  "reasons": sorted({u.reason for u in report.unusable}),
                  "seconds": time.perf_counter() - started, "peak_mb": hwm / 1024}))
"""


def _scan(folder: Path, workers: int = 8, timeout: float = 120) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-c", SCAN, str(folder), str(workers)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


def _many(root: Path, n: int) -> list[str]:
    """n photo names (PNG, JPEG, GIF, WebP of 24×20 px, all named .jpg) under root; the broken ones' names."""
    sources = []
    for i, fmt in enumerate(("PNG", "JPEG", "GIF", "WEBP")):
        buf = io.BytesIO()
        Image.new("RGB", (24, 20), (40 * i, 100, 200)).save(buf, fmt)
        sources.append(root / f".source{i}")
        sources[-1].write_bytes(buf.getvalue())
    broken = root / ".broken"
    broken.write_bytes(b"<html>404</html>")
    names = []
    for i in range(n):
        folder = root / f"{i // 1000:02d}"
        folder.mkdir(exist_ok=True)
        os.link(broken if i % 500 == 0 else sources[i % 4], folder / f"photo_{i:05d}.jpg")
        if i % 500 == 0:
            names.append(f"photo_{i:05d}.jpg")
    return names


@pytest.mark.slow
def test_scanning_20000_files_keeps_memory_flat(tmp_path: Path) -> None:
    small, large = tmp_path / "5000", tmp_path / "20000"
    small.mkdir()
    large.mkdir()
    _many(small, 5000)
    broken = _many(large, 20000)

    few, many = _scan(small), _scan(large)
    assert few["n"] == 5000 and many["n"] == 20000
    assert many["unusable"] == broken and many["reasons"] == [
        "not an image: Pillow cannot identify the format (it is an HTML page, probably an error page saved by a "
        "failed download)"
    ]
    assert many["peak_mb"] < 200, f"scan of 20,000 files peaked at {many['peak_mb']:.0f} MB"
    grown = many["peak_mb"] - few["peak_mb"]
    assert grown < 8, (
        f"peak grew {grown:.0f} MB from 5,000 to 20,000 files ({few['peak_mb']:.0f} → {many['peak_mb']:.0f})"
    )
    print(
        f"5,000 files: {few['peak_mb']:.0f} MB, {few['seconds']:.1f} s; "
        f"20,000 files: {many['peak_mb']:.0f} MB, {many['seconds']:.1f} s"
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _large_png(path: Path, side: int, *, depth: int, colour: int, channels: int) -> Path:
    """A real, complete PNG of side×side pixels (a horizontal ramp), compressed row by row: no big array here."""
    ramp = bytes(int(255 * x / (side - 1)) for x in range(side))
    row = b"\0" + (bytes(v for v in ramp for _ in range(channels * depth // 8)))
    squeeze = zlib.compressobj(1)
    idat = b"".join(squeeze.compress(row) for _ in range(side)) + squeeze.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, depth, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))
    return path


@pytest.mark.slow
def test_scanning_photos_just_under_the_pixel_limit_on_eight_threads_stays_under_1_gb(tmp_path: Path) -> None:
    """Eight threads over 89 Mpx photos (358 MB each once decoded) would need 2.9 GB at once; the decode budget
    lets one or two run together."""
    side = 9459  # 89,472,681 pixels: just under the default limit of 89,478,485
    rgba = _large_png(tmp_path / ".rgba", side, depth=8, colour=6, channels=4)
    grey16 = _large_png(tmp_path / ".grey16", side, depth=16, colour=0, channels=1)
    folder = tmp_path / "large"
    folder.mkdir()
    for i in range(4):
        os.link(rgba, folder / f"rgba_{i}.png")
    for i in range(2):
        os.link(grey16, folder / f"grey16_{i}.png")
    result = _scan(folder, workers=8, timeout=300)
    assert result["n"] == 6 and result["unusable"] == [], result
    assert result["peak_mb"] < 1024, f"peaked at {result['peak_mb']:.0f} MB"
    print(f"6 photos of 89 Mpx on 8 threads: {result['peak_mb']:.0f} MB, {result['seconds']:.1f} s")
