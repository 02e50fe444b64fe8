"""headstart.data.images: every odd photo a folder holds loads as upright RGB; every broken one is named with a reason."""

from __future__ import annotations

import io
import os
import re
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from headstart.data.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    check_image,
    is_image_file,
    list_image_files,
    load_image,
)
from headstart.errors import UnusableImageError

pytestmark = pytest.mark.filterwarnings("ignore::headstart.data.images.SmallImageWarning")  # tiny test images

RED = (255, 0, 0)
BLUE = (0, 0, 255)


def near(actual: tuple[int, ...], expected: tuple[int, ...], tol: int = 12) -> bool:
    return all(abs(a - e) <= tol for a, e in zip(actual, expected))


def save(img: Image.Image, path: Path, format: str | None = None, **params) -> Path:
    img.save(path, format=format, **params)
    return path


def jpeg_bytes(size: tuple[int, int] = (64, 48), seed: int = 0) -> bytes:
    """A noisy JPEG, so its entropy-coded data is most of the file (truncating it cuts real pixels)."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def header(path: Path) -> tuple[str, int]:
    """(mode, number of frames) as Pillow sees the file, for checking a test's own setup."""
    with Image.open(path) as img:
        return img.mode, getattr(img, "n_frames", 1)


def assert_rgb(img: Image.Image, size: tuple[int, int]) -> None:
    assert img.mode == "RGB", f"mode is {img.mode!r}, expected 'RGB'"
    assert img.size == size, f"size is {img.size}, expected {size}"


# --- load_image: every mode ends as upright RGB -------------------------------------------------------------------


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (20, 10), BLUE)
    img.paste(RED, (0, 0, 5, 10))  # left quarter red; orientation 6 = turn 90° clockwise to view
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(img, tmp_path / "rotated.jpg", quality=95, exif=exif)
    out = load_image(path)
    assert_rgb(out, (10, 20))
    top, bottom = out.getpixel((5, 1)), out.getpixel((5, 18))
    assert near(top, RED) and near(bottom, BLUE), f"top={top}, bottom={bottom}; expected red on top, blue below"


def test_greyscale_and_1bit(tmp_path: Path) -> None:
    grey = load_image(save(Image.new("L", (8, 6), 77), tmp_path / "grey.png"))
    assert_rgb(grey, (8, 6))
    assert grey.getpixel((0, 0)) == (77, 77, 77), f"got {grey.getpixel((0, 0))}, expected (77, 77, 77)"
    bits = load_image(save(Image.new("1", (8, 6), 1), tmp_path / "bits.png"))
    assert bits.getpixel((3, 3)) == (255, 255, 255), f"got {bits.getpixel((3, 3))}, expected white"


def test_palette_with_transparency_goes_over_white(tmp_path: Path) -> None:
    img = Image.new("P", (10, 10), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (0, 0, 5, 10))  # left half red (index 1), right half index 0 = transparent
    path = save(img, tmp_path / "pal.png", transparency=0)
    out = load_image(path)
    assert_rgb(out, (10, 10))
    assert out.getpixel((1, 1)) == RED, f"opaque pixel {out.getpixel((1, 1))}, expected {RED}"
    assert out.getpixel((8, 8)) == (255, 255, 255), f"transparent pixel {out.getpixel((8, 8))}, expected white"


def test_palette_without_transparency(tmp_path: Path) -> None:
    img = Image.new("RGB", (10, 10), BLUE).convert("P")
    out = load_image(save(img, tmp_path / "pal.bmp"))
    assert out.getpixel((2, 2)) == BLUE, f"got {out.getpixel((2, 2))}, expected {BLUE}"


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", quality=95)
    assert header(path)[0] == "CMYK", "test setup: Pillow should write a CMYK JPEG"
    out = load_image(path)
    assert_rgb(out, (16, 16))
    assert near(out.getpixel((8, 8)), RED), f"got {out.getpixel((8, 8))}, expected about {RED}"


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    arr = np.array([[65535, 32896, 257, 0]], dtype=np.uint16)
    path = save(Image.fromarray(arr), tmp_path / "deep.png")
    assert header(path)[0].startswith("I"), "test setup: expected a 16-bit greyscale PNG"
    out = load_image(path)
    got = [out.getpixel((x, 0))[0] for x in range(4)]
    assert got == [255, 128, 1, 0], f"got {got}, expected [255, 128, 1, 0] (value / 257)"


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.array([[0, 32896, 65535]], dtype=np.int32), [0, 128, 255]),  # mode I, 16-bit data
        (np.array([[0.0, 0.5, 1.0]], dtype=np.float32), [0, 128, 255]),  # mode F, 0..1
    ],
    ids=["I", "F"],
)
def test_32bit_tiff_is_scaled(tmp_path: Path, array: np.ndarray, expected: list[int]) -> None:
    path = save(Image.fromarray(array), tmp_path / "deep.tif")
    out = load_image(path)
    got = [out.getpixel((x, 0))[0] for x in range(3)]
    assert got == expected, f"got {got}, expected {expected}"


def test_rgba_goes_over_white(tmp_path: Path) -> None:
    img = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    img.paste((0, 0, 255, 255), (0, 0, 5, 10))
    out = load_image(save(img, tmp_path / "rgba.png"))
    assert_rgb(out, (10, 10))
    assert out.getpixel((1, 1)) == BLUE, f"opaque pixel {out.getpixel((1, 1))}, expected {BLUE}"
    assert out.getpixel((8, 1)) == (255, 255, 255), f"transparent pixel {out.getpixel((8, 1))}, expected white"


def test_la_half_transparent(tmp_path: Path) -> None:
    out = load_image(save(Image.new("LA", (4, 4), (0, 128)), tmp_path / "la.png"))
    value = out.getpixel((0, 0))
    assert near(value, (127, 127, 127), tol=2), f"black at alpha 128 over white gave {value}, expected ~127 grey"


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "WEBP"])
def test_other_format_named_jpg_is_usable(tmp_path: Path, fmt: str) -> None:
    path = save(Image.new("RGB", (12, 9), RED), tmp_path / f"really_{fmt.lower()}.jpg", format=fmt)
    assert check_image(path) is None, f"{fmt} named .jpg reported unusable: {check_image(path)}"
    out = load_image(path)
    assert_rgb(out, (12, 9))
    assert near(out.getpixel((4, 4)), RED), f"got {out.getpixel((4, 4))}, expected about {RED}"


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animation_gives_first_frame(tmp_path: Path, fmt: str) -> None:
    frames = [Image.new("RGB", (10, 10), c) for c in (RED, BLUE)]
    path = tmp_path / f"anim.{fmt.lower()}"
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert header(path)[1] == 2, "test setup: expected an animation of 2 frames"
    out = load_image(path)
    assert near(out.getpixel((5, 5)), RED), f"got {out.getpixel((5, 5))}, expected the first (red) frame"


def test_webp(tmp_path: Path) -> None:
    out = load_image(save(Image.new("RGB", (10, 8), BLUE), tmp_path / "x.webp", lossless=True))
    assert_rgb(out, (10, 8))
    assert out.getpixel((3, 3)) == BLUE, f"got {out.getpixel((3, 3))}, expected {BLUE}"


def test_result_does_not_depend_on_the_file(tmp_path: Path) -> None:
    path = save(Image.new("RGB", (10, 8), BLUE), tmp_path / "x.png")
    out = load_image(path)
    path.unlink()
    assert out.getpixel((1, 1)) == BLUE, "image lost its pixels when the file went away"


# --- load_image: unusable files -----------------------------------------------------------------------------------


def reason_of(path: Path, **kwargs) -> str:
    with pytest.raises(UnusableImageError) as info:
        load_image(path, **kwargs)
    assert info.value.path == path, f"error names {info.value.path}, expected {path}"
    assert str(path) in str(info.value), f"message {str(info.value)!r} does not name the file"
    assert check_image(path, **kwargs) == info.value.reason, "check_image and load_image disagree"
    return info.value.reason


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.touch()
    reason = reason_of(path)
    assert "empty file (0 bytes)" in reason, f"reason {reason!r}, expected 'empty file (0 bytes)'"


def test_text_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("hello, this is not a photo\n")
    reason = reason_of(path)
    assert reason.startswith("not an image: Pillow cannot identify the format ("), f"reason {reason!r}"
    assert "hello" in reason, f"reason {reason!r} should quote the start of the text"


def test_html_named_jpg_says_failed_download(tmp_path: Path) -> None:
    path = tmp_path / "page.jpg"
    path.write_text("<!DOCTYPE html><html><body>403 Forbidden</body></html>")
    reason = reason_of(path)
    assert "HTML" in reason, f"reason {reason!r}, expected it to say the file is an HTML page"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image(tmp_path: Path, fmt: str) -> None:
    if fmt == "JPEG":
        data = jpeg_bytes((128, 96))
    else:
        buf = io.BytesIO()
        rng = np.random.default_rng(1)
        Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(buf, "PNG")
        data = buf.getvalue()
    path = tmp_path / f"half.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    assert not ImageFile.LOAD_TRUNCATED_IMAGES, "LOAD_TRUNCATED_IMAGES must stay off"
    reason = reason_of(path)
    assert reason.startswith("truncated or corrupt image data ("), f"reason {reason!r}"


def test_decompression_bomb_refused_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(Image.new("1", (12000, 12000)), tmp_path / "bomb.png")
    assert path.stat().st_size < 100_000, "test setup: the bomb should be a small file"

    def no_decoding(self):
        raise AssertionError("load_image decoded an image it should have refused from the header")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    start = time.perf_counter()
    reason = reason_of(path, max_pixels=10_000_000)
    elapsed = time.perf_counter() - start
    for part in ("12000×12000", "144,000,000", "10,000,000", "--max-pixels"):
        assert part in reason, f"reason {reason!r} lacks {part!r}"
    assert elapsed < 1.0, f"refusing took {elapsed:.2f}s, expected well under 1s (no decoding)"


def test_bomb_limit_is_the_callers(tmp_path: Path) -> None:
    path = save(Image.new("1", (3000, 3000), 1), tmp_path / "big.png")  # 9,000,000 pixels
    reason = reason_of(path, max_pixels=1_000_000)
    assert "3000×3000" in reason, f"reason {reason!r}"
    for limit in (None, 10_000_000):
        out = load_image(path, max_pixels=limit)
        assert_rgb(out, (3000, 3000))


@pytest.mark.parametrize("suffix", [".png", ".gif", ".tif"])
def test_pillow_global_limit_does_not_interfere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    """Pillow raises at 2× its global limit (here 2,000 pixels) in open() and, for GIF/TIFF, while decoding."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = save(Image.new("RGB", (100, 100), RED), tmp_path / f"img{suffix}")
    for limit in (None, 20_000):
        assert_rgb(load_image(path, max_pixels=limit), (100, 100))
    reason = reason_of(path, max_pixels=5_000)
    assert "100×100" in reason and "--max-pixels" in reason, f"reason {reason!r} is not headstart's own"
    assert Image.MAX_IMAGE_PIXELS == 1000, f"Pillow's limit left at {Image.MAX_IMAGE_PIXELS}, expected 1000"


def test_directory_and_missing_file(tmp_path: Path) -> None:
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    assert "directory" in reason_of(folder), f"reason {reason_of(folder)!r}"
    missing = tmp_path / "missing.jpg"
    assert "not found" in reason_of(missing), f"reason {reason_of(missing)!r}"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions and a non-root user")
def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "locked.jpg"
    path.write_bytes(jpeg_bytes())
    path.chmod(0)
    try:
        reason = reason_of(path)
    finally:
        path.chmod(0o644)
    assert "permission denied" in reason, f"reason {reason!r}, expected 'permission denied'"


def test_permission_denied_on_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same case as above, simulated, so it also runs as root (where chmod 0 does not stop reading)."""
    import headstart.data.images as images

    path = tmp_path / "locked.jpg"
    path.write_bytes(jpeg_bytes())

    def denied(file, mode="r", *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr(images, "open", denied, raising=False)
    reason = reason_of(path)
    assert "permission denied" in reason, f"reason {reason!r}, expected 'permission denied'"


def test_unexpected_decoder_error_is_wrapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.jpg"
    path.write_bytes(jpeg_bytes())

    def broken_load(self):
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", broken_load)
    reason = reason_of(path)
    assert "decoder exploded" in reason, f"reason {reason!r} should carry the exception text"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"max_pixels": 0},
            "The 'max_pixels' parameter of load_image must be an int in [1, inf) or None (no limit). Got 0 instead.",
        ),
        ({"max_pixels": 1.5e6}, "The 'max_pixels' parameter of load_image must be an int in [1, inf) or None"),
        (
            {"draft_size": (256,)},
            "The 'draft_size' parameter of load_image must be None or (width, height) positive "
            "ints. Got (256,) instead.",
        ),
        ({"draft_size": 256}, "The 'draft_size' parameter of load_image must be None"),
    ],
)
def test_bad_parameters_are_named(tmp_path: Path, kwargs: dict, message: str) -> None:
    from headstart._validation import ParameterError

    path = save(Image.new("RGB", (8, 8), RED), tmp_path / "x.png")
    with pytest.raises(ParameterError) as info:
        load_image(path, **kwargs)
    assert str(info.value).startswith(message) and info.value.parameter == next(iter(kwargs))


# --- draft decoding and threads -----------------------------------------------------------------------------------


def test_draft_decodes_large_jpeg_smaller(tmp_path: Path) -> None:
    grad = np.linspace(0, 255, 2000, dtype=np.uint8)[None, :, None].repeat(1500, 0).repeat(3, 2)
    path = save(Image.fromarray(grad), tmp_path / "big.jpg", quality=85)
    full = load_image(path)
    assert_rgb(full, (2000, 1500))
    small = load_image(path, draft_size=(256, 256))
    w, h = small.size
    assert w < 2000 and h < 1500, f"draft gave {small.size}, expected smaller than (2000, 1500)"
    assert w >= 256 and h >= 256, f"draft gave {small.size}, expected at least (256, 256)"
    assert small.mode == "RGB", f"mode is {small.mode!r}, expected 'RGB'"


def test_draft_is_measured_upright(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 1600×400, viewed 400×1600
    path = save(Image.new("RGB", (1600, 400), RED), tmp_path / "tall.jpg", exif=exif)
    w, h = load_image(path, draft_size=(200, 800)).size
    assert (w, h) == (200, 800), f"draft gave {(w, h)}, expected (200, 800): scale 1/2 of the upright 400×1600"


def test_load_image_from_many_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # some images are above Pillow's limit, some below
    sizes = {tmp_path / f"{i}.png": (10 + i, 10 + i) for i in range(0, 60, 3)}
    paths = [save(Image.new("RGB", size, RED), path) for path, size in sizes.items()]
    results: dict[Path, tuple[int, int]] = {}
    errors: list[BaseException] = []

    def work(path: Path) -> None:
        try:
            for _ in range(5):
                results[path] = load_image(path, max_pixels=None).size
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, f"threads raised {errors!r}"
    wrong = {p.name: (s, sizes[p]) for p, s in results.items() if s != sizes[p]}
    assert len(results) == len(paths) and not wrong, f"(actual, expected) sizes: {wrong}"
    assert Image.MAX_IMAGE_PIXELS == 1000, f"Pillow's limit left at {Image.MAX_IMAGE_PIXELS}, expected 1000"


# --- file listing -------------------------------------------------------------------------------------------------


def test_is_image_file() -> None:
    yes = ["a.jpg", "b.JPEG", "c.Png", "dir/d.tiff", "e.webp", "f.gif", "g.bmp", "h.pgm"]
    no = [".DS_Store", "._a.jpg", ".hidden.png", "README.txt", "x.heic", "noext", "archive.jpg.zip"]
    assert [p for p in yes if not is_image_file(p)] == [], "image names rejected"
    assert [p for p in no if is_image_file(p)] == [], "non-image names accepted"
    required = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
    assert required <= IMAGE_EXTENSIONS, f"missing extensions: {sorted(required - IMAGE_EXTENSIONS)}"


def test_list_image_files_recursive_sorted_skips_hidden(tmp_path: Path) -> None:
    for rel in ["b/2.jpg", "b/1.PNG", "a.jpg", "notes.txt", ".DS_Store", "._a.jpg", ".git/x.jpg", "b/.cache/y.png"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    images, ignored = list_image_files(tmp_path)
    assert images == [tmp_path / "a.jpg", tmp_path / "b/1.PNG", tmp_path / "b/2.jpg"], f"images {images}"
    assert ignored == [tmp_path / "notes.txt"], f"ignored {ignored}"


def test_default_max_pixels_is_pillows() -> None:
    assert DEFAULT_MAX_PIXELS == 89_478_485, f"DEFAULT_MAX_PIXELS {DEFAULT_MAX_PIXELS}, expected Pillow's 89,478,485"


def test_every_public_name_of_the_data_package_is_importable_from_it() -> None:
    import importlib
    import subprocess
    import sys

    import headstart.data as data

    for module, names in data._MODULES.items():
        assert set(names) == set(importlib.import_module(f"headstart.data.{module}").__all__), module
        for name in names:
            assert getattr(data, name) is getattr(importlib.import_module(f"headstart.data.{module}"), name)
    code = "import sys, headstart.data; print(*(m in sys.modules for m in ('numpy', 'PIL')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"], "importing the package imports none of its modules"


# --- the one guard: every format, every frame, every thread -------------------------------------------------------


def test_pillows_own_check_still_guards_other_code(tmp_path: Path) -> None:
    """headstart's limit is installed on its own decoding threads only: plain Pillow in the same process keeps
    Pillow's check (and its global limit is never changed, not even for a moment)."""
    path = save(Image.new("1", (3000, 3000)), tmp_path / "big.png")
    assert_rgb(load_image(path, max_pixels=None), (3000, 3000))
    saved = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = 1_000_000
        with pytest.raises(Image.DecompressionBombError):
            Image.open(path)  # 9 Mpx is above 2 × 1 Mpx: Pillow refuses, as it would without headstart
        assert_rgb(load_image(path, max_pixels=10_000_000), (3000, 3000))
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def test_each_thread_decodes_under_its_own_limit(tmp_path: Path) -> None:
    big = save(Image.new("RGB", (400, 400), RED), tmp_path / "big.png")
    verdicts: dict[str, object] = {}

    def decode(name: str, limit: int | None) -> None:
        for _ in range(20):
            try:
                verdicts[name] = load_image(big, max_pixels=limit).size
            except UnusableImageError as exc:
                verdicts[name] = exc.reason

    threads = [threading.Thread(target=decode, args=(f"{limit}", limit)) for limit in (None, 1000, 10**6, 1000)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert verdicts["None"] == (400, 400) and verdicts["1000000"] == (400, 400), verdicts
    assert "above the limit of 1,000 pixels" in str(verdicts["1000"]), verdicts


def test_a_frame_inside_the_file_is_held_to_the_limit(tmp_path: Path) -> None:
    """An ICO decodes its embedded PNG while Pillow reads the header: the limit applies there too."""
    inner = io.BytesIO()
    Image.new("RGB", (200, 200), RED).save(inner, "PNG")
    data = inner.getvalue()
    icon = b"\0\0\1\0\1\0" + bytes([200, 200, 0, 0]) + (1).to_bytes(2, "little") + (32).to_bytes(2, "little")
    icon += len(data).to_bytes(4, "little") + (22).to_bytes(4, "little") + data
    path = tmp_path / "icon.jpg"
    path.write_bytes(icon)
    assert "200×200" in reason_of(path, max_pixels=30_000)
    assert_rgb(load_image(path, max_pixels=100_000), (200, 200))


def test_formats_headstart_does_not_read_are_named(tmp_path: Path) -> None:
    path = save(Image.new("RGB", (20, 20), RED), tmp_path / "scan.jpg", format="PCX")
    reason = reason_of(path)
    assert reason.startswith("not a photo format headstart reads: it is PCX data") and "convert it" in reason, reason


def test_decoding_needing_more_memory_than_the_limit_allows_is_refused(tmp_path: Path) -> None:
    """Pillow's WebP decoder holds four copies of the canvas: 16 bytes a pixel where the limit allows 8."""
    path = save(Image.new("RGB", (99, 99), BLUE), tmp_path / "x.webp", lossless=True)
    reason = reason_of(path, max_pixels=10_000)
    assert "takes about" in reason and "more than the 0 MB the pixel limit allows (8 bytes for each of 10,000" in reason
    assert_rgb(load_image(path, max_pixels=20_000), (99, 99))


@pytest.mark.parametrize(
    ("fmt", "mode", "size"),
    [
        ("PNG", "1", (4000, 4000)),
        ("PNG", "RGBA", (2000, 2000)),
        ("JPEG", "L", (3000, 3000)),
        ("GIF", "P", (2000, 2000)),
        ("TIFF", "RGB", (1000, 1000)),
    ],
)
def test_the_most_compressed_real_files_are_not_taken_for_forgeries(tmp_path: Path, fmt: str, mode: str, size) -> None:
    """Files of one flat colour are as compressed as real files get; the bound on pixels per byte (deflate 1032:1,
    JPEG one bit per block, ...) must let every one of them through."""
    params = {"quality": 1} if fmt == "JPEG" else {"optimize": True} if fmt == "PNG" else {}
    if fmt == "TIFF":
        params = {"compression": "tiff_adobe_deflate"}
    path = save(Image.new(mode, size, 0), tmp_path / f"flat.{fmt.lower()}", format=fmt, **params)
    assert check_image(path) is None, check_image(path)
    pixels_per_byte = size[0] * size[1] / path.stat().st_size
    assert pixels_per_byte > 10, f"test setup: {pixels_per_byte:.0f} pixels a byte is not much compressed"


def test_large_non_jpeg_photos_are_reduced_like_jpeg_drafts(tmp_path: Path) -> None:
    """PNG, TIFF and WebP photos much larger than needed are box-reduced (integer factor, at most 8) right after
    decoding, staying at least the draft size upright; rotation still applies."""
    grad = np.linspace(0, 255, 1000, dtype=np.uint8)[None, :, None].repeat(800, 0).repeat(3, 2)
    png = save(Image.fromarray(grad), tmp_path / "big.png")
    assert load_image(png, draft_size=(224, 224)).size == (334, 267)  # factor 3: 800 // 224
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = save(Image.fromarray(grad), tmp_path / "rotated.png", exif=exif)
    assert load_image(rotated).size == (800, 1000), "test setup: the PNG's EXIF turns it upright"
    w, h = load_image(rotated, draft_size=(200, 250)).size  # measured upright: factor 4 (stored: factor 3)
    assert (w, h) == (200, 250), f"draft (200, 250) of the upright 800×1000 gave {(w, h)}, expected factor 4"
    palette = save(Image.fromarray(grad).convert("P"), tmp_path / "palette.png")
    out = load_image(palette, draft_size=(224, 224))
    assert out.size == (334, 267) and out.mode == "RGB"


def test_tiny_photos_are_used_with_a_warning_naming_them(tmp_path: Path) -> None:
    from headstart.data.images import MIN_SIDE, SmallImageWarning

    assert MIN_SIDE == 16
    tiny = save(Image.new("RGB", (1, 1), RED), tmp_path / "pixel.jpg")
    thin = save(Image.new("RGB", (200, 15), RED), tmp_path / "strip.png")
    fine = save(Image.new("RGB", (16, 16), RED), tmp_path / "ok.png")
    for path, size in ((tiny, (1, 1)), (thin, (200, 15))):
        with pytest.warns(SmallImageWarning, match=re.escape(f"{path}: only {size[0]}×{size[1]} pixels")):
            assert load_image(path).size == size
        with pytest.warns(SmallImageWarning, match=re.escape(str(path))):
            assert check_image(path) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error", SmallImageWarning)
        load_image(fine)


def test_decodes_in_flight_stay_within_the_memory_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a 1 MB budget, six 300×300 RGBA decodes (about 0.4-0.7 MB booked each) on eight threads never book more
    than the budget together; one larger than the budget runs alone."""
    from headstart.data import _limits
    from headstart.data.scanning import scan

    budget = _limits._Budget(1 << 20)
    monkeypatch.setattr(_limits, "BUDGET", budget)
    peak = {"in_use": 0, "alone_over": 0}
    acquire = budget.acquire

    def tracked(nbytes: int) -> None:
        acquire(nbytes)
        with budget._cond:
            peak["in_use"] = max(peak["in_use"], budget.in_use)
            if budget.in_use > budget.limit:
                peak["alone_over"] += budget.in_use != nbytes

    monkeypatch.setattr(budget, "acquire", tracked)
    for i in range(6):
        save(Image.new("RGBA", (300, 300), (i, 0, 0, 128)), tmp_path / f"{i}.png")
    save(Image.new("RGBA", (700, 700)), tmp_path / "big.png")  # 1.96 MB booked: more than the budget
    for _ in range(3):
        assert scan(tmp_path, workers=8).unusable == []
        assert [load_image(tmp_path / f"{i}.png").size for i in range(6)] == [(300, 300)] * 6
    assert 0 < peak["in_use"], "nothing was booked"
    assert peak["alone_over"] == 0, "a decode over the budget ran beside others"
    assert budget.in_use == 0, f"{budget.in_use} bytes still booked after every decode ended"


@pytest.mark.slow
def test_a_tiny_photo_is_classified_with_its_warning(tmp_path: Path, sample: Path, lite0, cache) -> None:
    """Through the real pipeline: extraction decodes on threads; the warning still reaches the caller, naming the
    file, and the photo is used (its features are computed like any other's)."""
    from headstart.data.images import SmallImageWarning
    from headstart.features import extract_features

    tiny = save(Image.new("RGB", (1, 1), RED), tmp_path / "pixel.jpg")
    photo = next(sample.glob("test/*/*.jpg"))
    with pytest.warns(SmallImageWarning, match=re.escape(f"{tiny}: only 1×1 pixels")) as caught:
        feats = extract_features([tiny, photo], lite0, cache=cache, flip_average=False)
    assert feats.unusable == [] and len(feats.indices) == 2
    assert all(str(photo) not in str(w.message) for w in caught), "a photo of normal size was warned about"
