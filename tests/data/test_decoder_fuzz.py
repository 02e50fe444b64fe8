"""The decoder against hostile and mutated files: headstart's own error or an RGB image, bounded memory, no hang.

Every case is decoded in a worker subprocess whose address space is capped (``RLIMIT_AS``: 1 GiB above the
interpreter's own after importing the decoder and every Pillow plugin) and which is killed on a timeout. Two kinds
of input:

- tiny files crafted byte by byte whose headers lie, one for every format and frame kind (issue 11: the 91-byte
  ICO named ``.jpg`` that declares 65535×65535 and reached 5+ GB inside ``Image.open``; the 69-byte PNG accepted as
  an 89.5 Mpx image);
- 2,400 seeded mutations (bits flipped, bytes and size-like integers written over headers, truncations, spans
  deleted, repeated or spliced in from another file) of real photos: the bundled sample converted to every format
  headstart reads and to the modes a folder of photos holds (16-bit, CMYK, palette, transparency, EXIF-rotated,
  animated, multi-frame).

A failing mutation is reproducible from its id (``seed name/number``): :func:`mutate` is deterministic.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

HERE = Path(__file__).resolve().parent
SAMPLE = HERE.parents[1] / "src" / "headstart" / "sample_data" / "pets" / "train"
CAP = 1 << 30  # address space a worker may use above its baseline
DEFAULT_LIMIT = 89_478_485
UNDER = 9459  # 9459² = 89,472,681 pixels: just under the default limit
MUTATIONS_PER_SEED = 80
BOOT = f"import sys; sys.path.insert(0, {str(HERE)!r}); import test_decoder_fuzz as t; t.worker(sys.argv[1])"


# --- crafted files ------------------------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(w: int, h: int, *, depth: int = 8, colour: int = 6, extra: bytes = b"") -> bytes:
    """A PNG whose IHDR says w×h and whose IDAT holds 64 zero bytes: 69 bytes in all."""
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + extra
        + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _chunk(b"IEND", b"")
    )


def ico(inner: bytes, w: int = 0, h: int = 0) -> bytes:
    """An ICO of one entry (0 means 256 in its directory) holding ``inner`` (a PNG or a DIB)."""
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", w, h, 0, 0, 1, 32, len(inner), 22) + inner


def ico_bmp(w: int, h: int) -> bytes:
    return ico(struct.pack("<IiiHHIIiiII", 40, w, 2 * h, 1, 32, 0, 0, 0, 0, 0, 0) + b"\0" * 64, 16, 16)


def gif(w: int, h: int, frame: tuple[int, int] = (1, 1), second: tuple[int, int] | None = None) -> bytes:
    """A GIF of canvas w×h whose first frame is ``frame`` (and, optionally, a second frame of size ``second``)."""
    out = b"GIF89a" + struct.pack("<HHBBB", w, h, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    for fw, fh in [frame] + ([second] if second else []):
        out += b"," + struct.pack("<HHHHB", 0, 0, fw, fh, 0) + b"\x02\x02\x44\x01\x00"
    return out + b";"


def tiff(w: int, h: int, *, bits: int = 8, samples: int = 3, compression: int = 1, data: bytes = b"\0" * 16) -> bytes:
    """A little-endian TIFF of one strip holding ``data`` (samples 1, 3 or 4)."""
    bits_at = 8 + 2 + 12 * (10 if samples == 4 else 9) + 4  # where the BitsPerSample values go (3-4 samples)
    bits_data = struct.pack(f"<{samples}H", *[bits] * samples) if samples > 1 else b""
    entries = [
        (256, 4, 1, w),
        (257, 4, 1, h),
        (258, 3, samples, bits if samples == 1 else bits_at),
        (259, 3, 1, compression),
        (262, 3, 1, 2 if samples > 1 else 1),
        (273, 4, 1, bits_at + len(bits_data)),
        (277, 3, 1, samples),
        (278, 4, 1, h),
        (279, 4, 1, len(data)),
    ]
    entries += [(338, 3, 1, 2)] if samples == 4 else []
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        if kind == 3 and count == 1:
            ifd += struct.pack("<HHIHH", tag, kind, count, value, 0)
        else:  # a LONG, or SHORTs stored at an offset
            ifd += struct.pack("<HHII", tag, kind, count, value)
    return b"II*\0" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + bits_data + data


def webp_vp8l(w: int, h: int) -> bytes:
    payload = b"\x2f" + struct.pack("<I", (w - 1) | ((h - 1) << 14) | (1 << 28)) + b"\0" * 9
    body = b"WEBP" + b"VP8L" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", len(body)) + body


def webp_animated_canvas(w: int, h: int) -> bytes:
    payload = b"\x02\0\0\0" + (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little")
    body = b"WEBP" + b"VP8X" + struct.pack("<I", 10) + payload + b"ANIM" + struct.pack("<I", 6) + b"\0" * 6
    return b"RIFF" + struct.pack("<I", len(body)) + body


def jpeg_sof(w: int, h: int, *, progressive: bool = False) -> bytes:
    """A real 8×8 JPEG whose frame header is rewritten to say w×h."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (40, 90, 140)).save(buf, "JPEG", progressive=progressive)
    data = bytearray(buf.getvalue())
    at = data.find(b"\xff\xc2" if progressive else b"\xff\xc0")
    data[at + 5 : at + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def jpeg_scans(n: int) -> bytes:
    """A 16×16 progressive JPEG with its last scan repeated n times (libjpeg warns and decodes every one)."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (9, 99, 199)).save(buf, "JPEG", progressive=True)
    data = buf.getvalue()
    return data[:-2] + data[data.rindex(b"\xff\xda") : -2] * n + b"\xff\xd9"


def _padded(jpeg: bytes, n: int = 12_000) -> bytes:
    """A JPEG with a comment of n bytes after its start: big enough to hold the pixels it declares."""
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", n + 2) + b"\0" * n + jpeg[2:]


def bmp(w: int, h: int) -> bytes:
    header = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 70, 0, 0, 54) + header + b"\0" * 16


def apng(frame: tuple[int, int]) -> bytes:
    """A 1×1 APNG of two frames of size ``frame``."""
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)
    fctl = [_chunk(b"fcTL", struct.pack(">IIIIIHHBB", i, *frame, 0, 0, 1, 10, 0, 0)) for i in (0, 1)]
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"acTL", struct.pack(">II", 2, 0))
        + fctl[0]
        + _chunk(b"IDAT", zlib.compress(b"\0" * 5))
        + fctl[1]
        + _chunk(b"fdAT", struct.pack(">I", 2) + zlib.compress(b"\0" * 64))
        + _chunk(b"IEND", b"")
    )


def icns(inner: bytes) -> bytes:
    entry = b"ic10" + struct.pack(">I", 8 + len(inner)) + inner
    return b"icns" + struct.pack(">I", 8 + len(entry)) + entry


def second_frame_huge(fmt: str) -> bytes:
    """A real two-frame MPO or TIFF whose second frame's header is rewritten to 65535×65535 (or 65500 for JPEG)."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, fmt, save_all=True, append_images=[Image.new("RGB", (8, 8))])
    data = bytearray(buf.getvalue())
    if fmt == "MPO":
        at = data.rfind(b"\xff\xc0")
        data[at + 5 : at + 9] = struct.pack(">HH", 65500, 65500)
        return bytes(data)
    first = struct.unpack("<I", data[4:8])[0]
    n = struct.unpack("<H", data[first : first + 2])[0]
    second = struct.unpack("<I", data[first + 2 + 12 * n : first + 6 + 12 * n])[0]
    for i in range(struct.unpack("<H", data[second : second + 2])[0]):
        at = second + 2 + 12 * i
        tag, kind = struct.unpack("<HH", data[at : at + 4])
        if tag in (256, 257):
            data[at + 8 : at + 12] = struct.pack("<I", 65535) if kind == 4 else struct.pack("<HH", 65535, 0)
    return bytes(data)


BOMB = r"above the limit of 89,478,485 pixels \(possible decompression bomb\); raise the limit with --max-pixels"
CANNOT_HOLD = r"^truncated or corrupt image data \(the header declares .* bytes of \w+ data can hold"
TOO_MUCH_MEMORY = r"takes about [\d,]+ MB, more than the 683 MB the pixel limit allows"
CORRUPT = r"^truncated or corrupt image data"


def hostile() -> dict[str, tuple[bytes, str]]:
    """name → (the file's bytes, what decoding it must give: a regular expression over the reason, or 'ok')."""
    huge = 65535
    cases = {
        "ico_png_65535": (ico(png(huge, huge)), BOMB),  # issue 11: 91 bytes named .jpg, 5+ GB before
        "ico_png_under_limit": (ico(png(UNDER, UNDER)), CORRUPT),
        # issue 20: the same lie as a PNG's, a 1-pixel-wide 89,478,485-pixel image in 91 bytes: one rule for both
        # (each frame a header declares is held to what the file's bytes can hold), whatever holds the frame
        "ico_png_1_by_limit": (ico(png(1, 89_478_485)), CANNOT_HOLD),
        "ico_png_1_by_limit_as_listed": (ico(png(1, 89_478_485), 1, 89_478_485 % 256), CANNOT_HOLD),  # main: used
        "ico_bmp_1_by_limit": (ico_bmp(1, 44_000_000), CANNOT_HOLD),  # (a DIB in an ICO stores twice its height)
        "png_1_by_limit": (png(1, 89_478_485), CANNOT_HOLD),
        "ico_bmp_65535": (ico_bmp(huge, huge), BOMB),
        "png_65535": (png(huge, huge), BOMB),
        "png_under_limit_rgba": (png(UNDER, UNDER), CANNOT_HOLD),  # issue 11: 69 bytes, accepted as 89.5 Mpx
        "png_under_limit_rgba16": (png(UNDER, UNDER, depth=16), CANNOT_HOLD),
        "png_under_limit_grey16": (png(UNDER, UNDER, depth=16, colour=0), CANNOT_HOLD),
        "png_under_limit_1bit": (png(UNDER, UNDER, depth=1, colour=0), CANNOT_HOLD),
        "apng_frames_larger_than_canvas": (apng((huge, huge)), CORRUPT),
        "gif_canvas_65535": (gif(huge, huge), BOMB),
        "gif_frame_65535": (gif(UNDER, UNDER, frame=(huge, huge)), BOMB),
        "gif_second_frame_65535": (gif(1, 1, second=(huge, huge)), "ok"),  # frames after the first are not read
        "gif_frame_under_limit": (gif(UNDER, UNDER, frame=(UNDER, UNDER)), CANNOT_HOLD),
        "tiff_65535": (tiff(huge, huge), BOMB),
        "tiff_under_limit_raw": (tiff(UNDER, UNDER), CANNOT_HOLD),
        "tiff_under_limit_rgba16_deflate": (
            tiff(UNDER, UNDER, bits=16, samples=4, compression=8, data=zlib.compress(b"\0" * 100)),
            CANNOT_HOLD,
        ),
        "tiff_under_limit_lzw": (tiff(UNDER, UNDER, compression=5), CANNOT_HOLD),
        "tiff_second_page_65535": (second_frame_huge("TIFF"), "ok"),
        "mpo_second_frame_65500": (second_frame_huge("MPO"), "ok"),
        "webp_16383": (webp_vp8l(16383, 16383), BOMB),
        "webp_under_limit": (webp_vp8l(UNDER, UNDER), TOO_MUCH_MEMORY),  # Pillow's WebP decoder keeps 4 copies
        "webp_animated_canvas_16384": (webp_animated_canvas(16384, 16384), BOMB),
        "webp_animated_canvas_under_limit": (webp_animated_canvas(UNDER, UNDER), CORRUPT),
        "jpeg_65500": (jpeg_sof(65500, 65500), BOMB),
        "jpeg_under_limit": (jpeg_sof(UNDER, UNDER), CANNOT_HOLD),  # 631 bytes libjpeg would fill with grey
        "jpeg_progressive_under_limit": (jpeg_sof(UNDER, UNDER, progressive=True), CANNOT_HOLD),
        "jpeg_600_scans": (jpeg_scans(600), r"progressive JPEG of more than 500 scans \(the most allowed at 16×16\)"),
        "jpeg_100_scans": (jpeg_scans(100), "ok"),
        "jpeg_70_scans_89_mpx": (
            _padded(jpeg_sof(UNDER, UNDER, progressive=True)[:-2] + b"\xff\xda" * 70 + b"\xff\xd9"),
            r"more than 64 scans \(the most allowed at 9459×9459\)",
        ),
        "bmp_under_limit": (bmp(UNDER, UNDER), CANNOT_HOLD),
        "icns_png_65535": (icns(png(huge, huge)), r"not a photo format headstart reads: it is ICNS data"),
        "one_byte": (b"\xff", r"^not an image"),
        "png_signature_only": (b"\x89PNG\r\n\x1a\n", CORRUPT),
        "jpeg_soi_only": (b"\xff\xd8\xff\xe0", CORRUPT),
    }
    assert len(cases["ico_png_65535"][0]) == 91 and len(cases["png_under_limit_rgba"][0]) == 69, "issue 11's files"
    return cases


# --- real photos in every format ----------------------------------------------------------------------------------


def _photo(name: str, size: int = 96) -> Image.Image:
    with Image.open(SAMPLE / name) as img:
        img.draft("RGB", (size * 2, size * 2))
        img = img.convert("RGB")
    img.thumbnail((size, size))
    return img


def seeds() -> dict[str, bytes]:
    """name (with the suffix it is saved under) → bytes: the bundled photos in every format and mode headstart
    reads."""
    cat, dog = _photo("Abyssinian/Abyssinian_12.jpg"), _photo("beagle/beagle_10.jpg", 80)
    rgba = cat.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(cat.size))
    grey16 = Image.fromarray(np.asarray(cat.convert("L"), dtype=np.uint16) * 257)
    exif = Image.Exif()
    exif[0x0112] = 6
    out: dict[str, bytes] = {}

    def put(name: str, img: Image.Image, fmt: str, **params) -> None:
        buf = io.BytesIO()
        img.save(buf, fmt, **params)
        out[name] = buf.getvalue()

    put("baseline.jpg", cat, "JPEG", quality=85)
    put("progressive.jpg", dog, "JPEG", progressive=True, quality=80)
    put("cmyk.jpg", cat.convert("CMYK"), "JPEG")
    put("rotated.jpg", dog, "JPEG", exif=exif)
    put("grey.jpg", dog.convert("L"), "JPEG")
    put("two_frames.mpo", cat, "MPO", save_all=True, append_images=[dog])
    put("rgb.png", cat, "PNG")
    put("rgba.png", rgba, "PNG")
    put("palette_transparent.png", cat.convert("P", palette=Image.Palette.ADAPTIVE, colors=32), "PNG", transparency=0)
    put("grey16.png", grey16, "PNG")
    put("animated.png", cat, "PNG", save_all=True, append_images=[dog.resize(cat.size)], duration=50)
    put("animated.gif", cat, "GIF", save_all=True, append_images=[dog.resize(cat.size)], duration=50)
    put("palette.gif", dog.convert("P"), "GIF")
    put("lossy.webp", cat, "WEBP", quality=70)
    put("lossless_alpha.webp", rgba, "WEBP", lossless=True)
    put("animated.webp", dog, "WEBP", save_all=True, append_images=[cat.resize(dog.size)], duration=50)
    put("rgb.bmp", cat, "BMP")
    put("palette_rle.bmp", dog.convert("P"), "BMP", compression="bmp_rle")
    put("raw.tif", cat, "TIFF")
    put("lzw.tif", dog, "TIFF", compression="tiff_lzw")
    put("deflate.tif", cat, "TIFF", compression="tiff_adobe_deflate")
    put("packbits_rgba.tif", rgba, "TIFF", compression="packbits")
    put("grey16.tif", grey16, "TIFF")
    put("two_pages.tif", cat, "TIFF", save_all=True, append_images=[dog])
    put("png_frames.ico", cat, "ICO", sizes=[(48, 48), (16, 16)])
    put("bmp_frame.ico", rgba, "ICO", sizes=[(32, 32)], bitmap_format="bmp")
    put("rgb.ppm", dog, "PPM")
    put("rle.tga", cat, "TGA", compression="tga_rle")
    put("rgb.qoi", dog, "QOI")
    put("rgb.jp2", cat, "JPEG2000")
    return out


# --- the mutator --------------------------------------------------------------------------------------------------

_INTERESTING = (
    0,
    1,
    2,
    0x7F,
    0x80,
    0xFF,
    0x100,
    0x3FFF,
    0x7FFF,
    0x8000,
    0xFFFF,
    0x10000,
    9459,
    16383,
    65500,
    0x7FFFFFFF,
    0x80000000,
    0xFFFFFFFF,
)


def mutate(data: bytes, rng: random.Random, others: list[bytes]) -> bytes:
    """1 to 5 edits, most of them in the first 160 bytes where the sizes, modes and offsets live."""
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3, 5))):
        if not out:
            break
        head = rng.random() < 0.6
        at = rng.randrange(min(len(out), 160)) if head else rng.randrange(len(out))
        kind = rng.randrange(8)
        if kind == 0:
            out[at] ^= 1 << rng.randrange(8)
        elif kind == 1:
            out[at] = rng.randrange(256)
        elif kind == 2:
            width = rng.choice((2, 4))
            value = rng.choice(_INTERESTING) & ((1 << (8 * width)) - 1)
            out[at : at + width] = value.to_bytes(width, rng.choice(("big", "little")))
        elif kind == 3:
            del out[rng.randrange(1, len(out) + 1) :]  # truncated
        elif kind == 4:
            del out[at : at + rng.randrange(1, 64)]
        elif kind == 5:
            span = bytes(out[at : at + rng.randrange(1, 256)])
            out[at:at] = span * rng.randrange(1, 4)
        elif kind == 6:
            out[at : at + rng.randrange(1, 32)] = bytes([rng.choice((0, 0xFF))]) * rng.randrange(1, 32)
        else:
            other = rng.choice(others)
            start = rng.randrange(len(other))
            out[at:] = other[start : start + rng.randrange(1, 512)] + out[at:]  # spliced
    return bytes(out)


# --- the worker (runs in a subprocess: `python -c BOOT job.json`) --------------------------------------------------


def _status_bytes(field: str) -> int:
    """``VmSize`` (address space) or ``VmHWM`` (peak resident memory) of this process, in bytes. (Not ru_maxrss: on
    Linux it carries the memory of the process that exec replaced, here the parent's.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def worker(job_path: str) -> None:
    """Decode every case of the job under the address-space cap; one JSON line a case, then the memory used."""
    import resource
    import time
    import traceback
    import warnings

    import headstart.data.images as images
    from headstart.data.scanning import scan
    from headstart.errors import UnusableImageError

    job = json.loads(Path(job_path).read_text())
    Image.init()
    warnings.simplefilter("ignore")
    if job.get("pillow_limit_off"):
        Image.MAX_IMAGE_PIXELS = None  # headstart's limit must not lean on Pillow's
    seed_bytes = {name: Path(path).read_bytes() for name, path in job["seeds"].items()}
    others = list(seed_bytes.values())
    scratch = Path(job["scratch"])
    base_rss = _status_bytes("VmHWM")
    cap = _status_bytes("VmSize") + job["cap"]
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    max_pixels = job.get("max_pixels", DEFAULT_LIMIT)
    for case in job["cases"]:
        if "seed" in case:
            data = seed_bytes[case["seed"]]
            if case["n"] >= 0:
                data = mutate(data, random.Random(f"{case['seed']}/{case['n']}"), others)
        else:
            data = Path(case["file"]).read_bytes()
        started = time.perf_counter()
        result = {"id": case["id"], "call": case["call"]}
        try:
            if case["call"] == "scan":
                report = scan(case["folder"], max_pixels=max_pixels, workers=8)
                result.update(outcome="ok", detail={u.path.name: u.reason for u in report.unusable}, n=report.n_files)
            elif case["call"] == "check":
                path = scratch / f"{case['id'].replace('/', '_')}.jpg"  # any name: formats are read from the bytes
                path.write_bytes(data)
                reason = images.check_image(path, max_pixels=max_pixels)
                path.unlink()
                result.update(outcome="ok" if reason is None else "unusable", detail=reason)
            else:
                draft = (224, 224) if case["call"] == "draft" else None
                img = images.decode_image(data, name=case["id"], max_pixels=max_pixels, draft_size=draft)
                ok = img.mode == "RGB" and img.width > 0 and img.height > 0
                result.update(outcome="ok" if ok else "error", detail=f"{img.mode} {img.size}")
        except UnusableImageError as exc:
            result.update(outcome="unusable", detail=exc.reason)
        except BaseException:
            result.update(outcome="error", detail=traceback.format_exc(limit=8))
        result["seconds"] = round(time.perf_counter() - started, 4)
        print(json.dumps(result), flush=True)
    print(json.dumps({"peak_rss": _status_bytes("VmHWM"), "base_rss": base_rss}), flush=True)


def run_workers(jobs: list[dict], tmp_path: Path, timeout: float) -> list[tuple[list[dict], dict]]:
    """Run the jobs in parallel worker processes; (case results, memory summary) for each."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = []
    for i, job in enumerate(jobs):
        scratch = tmp_path / f"scratch{i}"
        scratch.mkdir(exist_ok=True)
        path = tmp_path / f"job{i}.json"
        path.write_text(json.dumps({"cap": CAP, "scratch": str(scratch), **job}))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", BOOT, str(path)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    results = []
    for proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
            done = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
            pytest.fail(
                f"a worker hung (> {timeout} s) after {len(done)} cases; the last finished: "
                f"{done[-1] if done else None}"
            )
        assert proc.returncode == 0, f"worker died (exit {proc.returncode}): {stderr[-3000:]}"
        lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
        results.append((lines[:-1], lines[-1]))
    return results


def _escaped(cases: list[dict]) -> list[dict]:
    return [c for c in cases if c["outcome"] not in ("ok", "unusable")]


@pytest.fixture(scope="module")
def seed_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("seeds")
    paths = {}
    for name, data in seeds().items():
        (folder / name).write_bytes(data)
        paths[name] = str(folder / name)
    return paths


# --- tests --------------------------------------------------------------------------------------------------------


def test_every_seed_decodes_as_itself(seed_files: dict[str, str]) -> None:
    """The unmutated seeds are usable and in the format they claim: the fuzzing starts from real, varied photos."""
    from headstart.data.images import FORMATS, load_image

    for name, path in seed_files.items():
        with Image.open(path) as img:
            fmt, mode, frames = img.format, img.mode, getattr(img, "n_frames", 1)
        assert fmt in FORMATS or fmt == "MPO", f"{name}: Pillow reads it as {fmt}, not a format headstart reads"
        out = load_image(path)
        assert out.mode == "RGB" and min(out.size) >= 16, f"{name} ({fmt} {mode}, {frames} frames): {out}"
    kinds = {Path(p).suffix for p in seed_files.values()}
    assert kinds >= {".jpg", ".png", ".gif", ".webp", ".bmp", ".tif", ".ico", ".mpo", ".ppm", ".tga"}, kinds


def test_hostile_headers_are_refused_before_allocating(tmp_path: Path) -> None:
    """Each crafted file gives its expected verdict through every entry point, with Pillow's own limit switched off
    (headstart must not lean on it), the process staying within 150 MB of its baseline: nothing was allocated."""
    folder = tmp_path / "hostile"
    folder.mkdir()
    cases, expected = [], {}
    for name, (data, want) in hostile().items():
        (folder / f"{name}.jpg").write_bytes(data)
        expected[name] = want
        for call in ("bytes", "draft", "check"):
            cases.append({"id": name, "file": str(folder / f"{name}.jpg"), "call": call})
    cases.append({"id": "scan", "file": str(folder / "one_byte.jpg"), "call": "scan", "folder": str(folder)})
    [(results, memory)] = run_workers([{"seeds": {}, "cases": cases, "pillow_limit_off": True}], tmp_path, 120)

    assert not _escaped(results), f"not headstart's errors: {_escaped(results)}"
    wrong = []
    for result in results[:-1]:
        want = expected[result["id"]]
        got = "ok" if result["outcome"] == "ok" else result["detail"]
        if (want == "ok") != (got == "ok") or (want != "ok" and not re.search(want, got)):
            wrong.append((result["id"], result["call"], got))
    assert not wrong, "unexpected verdicts:\n" + "\n".join(map(str, wrong))
    scanned = results[-1]
    assert scanned["n"] == len(expected), scanned
    assert set(scanned["detail"]) == {f"{n}.jpg" for n, want in expected.items() if want != "ok"}, scanned["detail"]
    slow = [(r["id"], r["call"], r["seconds"]) for r in results if r["seconds"] > 2.0]
    assert not slow, f"slow verdicts (a refusal should not decode): {slow}"
    grown = (memory["peak_rss"] - memory["base_rss"]) / 2**20
    assert grown < 150, f"peak RSS grew {grown:.0f} MB above the baseline: something was allocated"
    print(
        f"{len(expected)} hostile files × 3 calls + a scan: peak {memory['peak_rss'] / 2**20:.0f} MB "
        f"({grown:.0f} MB above the baseline), slowest {max(r['seconds'] for r in results):.2f} s"
    )


@pytest.mark.slow
def test_with_no_pixel_limit_memory_failures_are_still_headstart_errors(tmp_path: Path) -> None:
    """``max_pixels=None`` lifts the refusal, not the contract: under the 1 GiB cap the 65535×65535 ICO fails with
    an UnusableImageError (out of memory, or its data cut short), never a MemoryError or a crash."""
    folder = tmp_path / "bombs"
    folder.mkdir()
    cases = []
    for name in ("ico_png_65535", "png_65535", "gif_canvas_65535", "tiff_65535", "jpeg_65500"):
        (folder / f"{name}.jpg").write_bytes(hostile()[name][0])
        cases += [{"id": name, "file": str(folder / f"{name}.jpg"), "call": call} for call in ("bytes", "check")]
    [(results, _)] = run_workers([{"seeds": {}, "cases": cases, "max_pixels": None}], tmp_path, 120)
    assert not _escaped(results), f"not headstart's errors: {_escaped(results)}"
    assert all(r["outcome"] == "unusable" for r in results if r["id"] != "gif_canvas_65535"), results


@pytest.mark.slow
def test_mutation_fuzzing_of_every_format(seed_files: dict[str, str], tmp_path: Path) -> None:
    """2,400+ mutated photos (and the seeds themselves), decoded three ways (bytes with draft, bytes in full, file
    check) by two workers under the 1 GiB cap: only UnusableImageError or an RGB image, none over 5 s."""
    cases = []
    for name in seed_files:
        for n in range(-1, MUTATIONS_PER_SEED):
            cases.append({"id": f"{name}/{n}", "seed": name, "n": n, "call": ("draft", "bytes", "check")[n % 3]})
    assert len(cases) >= 2000
    half = len(cases) // 2
    jobs = [{"seeds": seed_files, "cases": cases[:half]}, {"seeds": seed_files, "cases": cases[half:]}]
    outcomes = run_workers(jobs, tmp_path, 150)
    results = [r for part, _ in outcomes for r in part]

    assert len(results) == len(cases)
    assert not _escaped(results), "escaped the contract:\n" + "\n".join(
        f"{r['id']} ({r['call']}): {r['detail']}" for r in _escaped(results)[:5]
    )
    unmutated = [r for r in results if r["id"].endswith("/-1")]
    assert all(r["outcome"] == "ok" for r in unmutated), [r for r in unmutated if r["outcome"] != "ok"]
    usable = sum(r["outcome"] == "ok" for r in results) / len(results)
    assert 0.1 < usable < 0.9, f"{usable:.0%} of the mutants decode: the mutator is too mild or too harsh"
    slowest = max(results, key=lambda r: r["seconds"])
    assert slowest["seconds"] < 5.0, f"slowest case {slowest}"
    for _, memory in outcomes:
        assert memory["peak_rss"] < 1 << 30, f"a worker peaked at {memory['peak_rss'] / 2**20:.0f} MB"
    reasons = sorted({re.sub(r"\(.*", "", r["detail"]).strip() for r in results if r["outcome"] == "unusable"})
    print(
        f"{len(results)} cases over {len(seed_files)} seeds: {usable:.0%} decode, {len(reasons)} kinds of reason; "
        f"slowest {slowest['seconds']:.2f} s ({slowest['id']}); peaks "
        + ", ".join(f"{m['peak_rss'] / 2**20:.0f} MB" for _, m in outcomes)
    )
