"""download_dataset on real (tiny) archives served from file:// URLs: verify, extract safely, never twice."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import io
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from headstart.data.datasets import load_dataset
from headstart.data.download import DATASETS, download_dataset
from headstart.errors import HeadstartError


def _jpeg_bytes(colour: tuple[int, int, int] = (10, 120, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, "JPEG")
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def mirror(tmp_path: Path) -> Path:
    """A folder holding small stand-ins for the official archives, with the official file names."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    with tarfile.open(folder / "images.tar.gz", "w:gz") as tar:
        for name in ["Abyssinian_1", "Abyssinian_2", "beagle_1", "beagle_2"]:
            _add(tar, f"images/{name}.jpg", _jpeg_bytes())
        _add(tar, "images/Abyssinian_101.mat", b"MATLAB 5.0")
    with tarfile.open(folder / "annotations.tar.gz", "w:gz") as tar:
        _add(tar, "annotations/trainval.txt", b"#Image CLASS-ID SPECIES BREED ID\nAbyssinian_1 1 1 1\nbeagle_1 2 2 1\n")
        _add(tar, "annotations/test.txt", b"Abyssinian_2 1 1 1\nbeagle_2 2 2 1\n")
    with zipfile.ZipFile(folder / "kagglecatsanddogs_5340.zip", "w") as zipped:
        zipped.writestr("readme[1].txt", "Kaggle cats and dogs")
        zipped.writestr("PetImages/Cat/1.jpg", _jpeg_bytes())
        zipped.writestr("PetImages/Dog/1.jpg", _jpeg_bytes((200, 10, 10)))
        zipped.writestr("PetImages/Dog/Thumbs.db", b"thumbs")
    return folder


@pytest.fixture()
def checksums(mirror: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point DATASETS at the test archives' own checksums (sizes unknown), as for the real ones."""
    for name, archives in list(DATASETS.items()):
        patched = [
            dataclasses.replace(
                a,
                md5=_md5(mirror / a.filename) if a.md5 else None,
                sha256=_sha256(mirror / a.filename) if a.sha256 else None,
                size=None,
            )
            for a in archives
        ]
        monkeypatch.setitem(DATASETS, name, patched)


def test_registry_holds_the_official_archives() -> None:
    pets = {archive.filename: archive for archive in DATASETS["pets"]}
    assert pets["images.tar.gz"].md5 == "5c4f3ee8e5d25df40f4fd59a7f44e54c"
    assert pets["annotations.tar.gz"].md5 == "95a8c909bbe2e81eed6a22bccdf3f68f"
    assert pets["images.tar.gz"].sha256 == "67195c5e1c01f1ab5f9b6a5d22b8c27a580d896ece458917e61d459337fa318d"
    assert pets["annotations.tar.gz"].sha256 == "52425fb6de5c424942b7626b428656fcbd798db970a937df61750c0f1d358e91"
    assert all(archive.url.startswith("https://www.robots.ox.ac.uk/~vgg/data/pets/data/") for archive in pets.values())
    (catsdogs,) = DATASETS["catsdogs"]
    assert catsdogs.url.endswith("/kagglecatsanddogs_5340.zip") and catsdogs.md5 is None and catsdogs.sha256 is None


@pytest.mark.usefixtures("checksums")
def test_pets(mirror: Path, tmp_path: Path) -> None:
    dest = tmp_path / "pets"
    root = download_dataset("pets", dest, base_url=mirror.as_uri() + "/", progress=False)
    assert root == dest.absolute()
    assert (dest / "images" / "beagle_2.jpg").is_file()
    assert not list(dest.glob("*.part"))

    train = load_dataset(root, split="train")
    test = load_dataset(root, split="test")
    assert train.kind == "oxford-pets" and train.classes == ["Abyssinian", "beagle"]
    assert [p.name for p in train.paths] == ["Abyssinian_1.jpg", "beagle_1.jpg"]
    assert [p.name for p in test.paths] == ["Abyssinian_2.jpg", "beagle_2.jpg"]
    assert load_dataset(root).ignored == [dest / "images" / "Abyssinian_101.mat"]


@pytest.mark.usefixtures("checksums")
def test_catsdogs_with_env_var_and_plain_folder(mirror: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADSTART_DOWNLOAD_BASE_URL", str(mirror))  # a plain folder works as well as file://
    root = download_dataset("catsdogs", tmp_path / "cd", progress=False)
    assert root == (tmp_path / "cd" / "PetImages").absolute()
    data = load_dataset(root)
    assert data.kind == "petimages" and data.classes == ["Cat", "Dog"] and len(data) == 2
    assert data.ignored == [root / "Dog" / "Thumbs.db"]


@pytest.mark.usefixtures("checksums")
def test_second_call_downloads_and_extracts_nothing(mirror: Path, tmp_path: Path) -> None:
    dest = tmp_path / "pets"
    download_dataset("pets", dest, base_url=mirror.as_uri(), progress=False)
    archive, photo = dest / "images.tar.gz", dest / "images" / "beagle_1.jpg"
    stamps = (archive.stat().st_mtime_ns, photo.stat().st_mtime_ns)
    (mirror / "images.tar.gz").unlink()  # a second download would now fail

    assert download_dataset("pets", dest, base_url=mirror.as_uri(), progress=False) == dest
    assert (archive.stat().st_mtime_ns, photo.stat().st_mtime_ns) == stamps


@pytest.mark.usefixtures("checksums")
def test_archive_already_there_is_not_fetched_again(mirror: Path, tmp_path: Path) -> None:
    dest = tmp_path / "pets"
    dest.mkdir()
    for name in ("images.tar.gz", "annotations.tar.gz"):
        (dest / name).write_bytes((mirror / name).read_bytes())
    # No server at all: the archives present (and matching their md5) are extracted, nothing is fetched.
    root = download_dataset("pets", dest, base_url="http://127.0.0.1:9/", progress=False)
    assert len(load_dataset(root)) == 4


def test_wrong_sha256_is_refused_and_leaves_no_file(
    mirror: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = [dataclasses.replace(a, sha256="0" * 64, size=None) for a in DATASETS["pets"]]
    monkeypatch.setitem(DATASETS, "pets", wrong)
    dest = tmp_path / "pets"
    with pytest.raises(HeadstartError) as info:
        download_dataset("pets", dest, base_url=mirror.as_uri(), progress=False)
    message = str(info.value)
    assert "images.tar.gz" in message and "0" * 64 in message and _sha256(mirror / "images.tar.gz") in message
    assert "run again" in message
    assert sorted(p.name for p in dest.iterdir()) == []  # neither the archive nor a .part is left


@pytest.mark.usefixtures("checksums")
def test_damaged_archive_already_there(mirror: Path, tmp_path: Path) -> None:
    dest = tmp_path / "pets"
    dest.mkdir()
    (dest / "images.tar.gz").write_bytes(b"half a download")
    with pytest.raises(HeadstartError, match=r"images\.tar\.gz has SHA-256 .*, expected .*delete it and run again"):
        download_dataset("pets", dest, base_url=mirror.as_uri(), progress=False)


def test_size_mismatch(mirror: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    size = (mirror / "kagglecatsanddogs_5340.zip").stat().st_size
    (archive,) = DATASETS["catsdogs"]
    monkeypatch.setitem(DATASETS, "catsdogs", [dataclasses.replace(archive, size=size + 1)])
    with pytest.raises(HeadstartError, match=rf"has {size} bytes, expected {size + 1}"):
        download_dataset("catsdogs", tmp_path / "cd", base_url=mirror.as_uri(), progress=False)
    assert not (tmp_path / "cd" / "kagglecatsanddogs_5340.zip").exists()


def test_part_file_is_replaced_when_server_cannot_resume(
    mirror: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (archive,) = DATASETS["catsdogs"]
    monkeypatch.setitem(DATASETS, "catsdogs", [dataclasses.replace(archive, size=None)])
    dest = tmp_path / "cd"
    dest.mkdir()
    (dest / "kagglecatsanddogs_5340.zip.part").write_bytes(b"PK old bytes")  # file:// ignores Range
    download_dataset("catsdogs", dest, base_url=mirror.as_uri(), progress=False)
    assert (dest / "kagglecatsanddogs_5340.zip").read_bytes() == (mirror / "kagglecatsanddogs_5340.zip").read_bytes()


@pytest.mark.parametrize("evil", ["../evil.txt", "/tmp/headstart-evil.txt", "images/../../evil.txt"])
def test_tar_escaping_the_folder_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, evil: str) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with tarfile.open(mirror / "images.tar.gz", "w:gz") as tar:
        _add(tar, "images/Abyssinian_1.jpg", _jpeg_bytes())
        _add(tar, evil, b"gotcha")
    archives = [dataclasses.replace(a, md5=None, sha256=None, size=None) for a in DATASETS["pets"]]
    monkeypatch.setitem(DATASETS, "pets", archives)
    dest = tmp_path / "deep" / "pets"
    with pytest.raises(HeadstartError, match=r"would be written outside .*refusing"):
        download_dataset("pets", dest, base_url=mirror.as_uri(), progress=False)
    assert not (tmp_path / "deep" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not Path("/tmp/headstart-evil.txt").exists()
    assert not (dest / ".headstart-extracted-images.tar.gz").exists()


def test_tar_symlink_out_of_the_folder_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with tarfile.open(mirror / "images.tar.gz", "w:gz") as tar:
        link = tarfile.TarInfo("images/link")
        link.type, link.linkname = tarfile.SYMTYPE, "../../outside"
        tar.addfile(link)
    monkeypatch.setitem(
        DATASETS, "pets", [dataclasses.replace(a, md5=None, sha256=None, size=None) for a in DATASETS["pets"]]
    )
    with pytest.raises(HeadstartError, match=r"images/link.*refusing"):
        download_dataset("pets", tmp_path / "pets", base_url=mirror.as_uri(), progress=False)


def test_zip_slip_is_refused(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with zipfile.ZipFile(mirror / "kagglecatsanddogs_5340.zip", "w") as zipped:
        zipped.writestr("PetImages/Cat/1.jpg", _jpeg_bytes())
        zipped.writestr("../evil.txt", "gotcha")
    archive = dataclasses.replace(DATASETS["catsdogs"][0], size=None)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(DATASETS, "catsdogs", [archive])
        with pytest.raises(HeadstartError, match=r"'\.\./evil\.txt'.*refusing"):
            download_dataset("catsdogs", tmp_path / "cd", base_url=mirror.as_uri(), progress=False)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "cd" / "PetImages").exists()


def test_damaged_zip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "kagglecatsanddogs_5340.zip").write_bytes(b"this is not a zip")
    monkeypatch.setitem(DATASETS, "catsdogs", [dataclasses.replace(DATASETS["catsdogs"][0], size=None)])
    with pytest.raises(HeadstartError, match=r"damaged or not a complete archive: delete it and run again"):
        download_dataset("catsdogs", tmp_path / "cd", base_url=mirror.as_uri(), progress=False)


def test_unreachable_server_names_the_offline_alternatives(tmp_path: Path) -> None:
    with pytest.raises(HeadstartError) as info:
        download_dataset("pets", tmp_path / "pets", base_url="http://127.0.0.1:9/", progress=False)
    message = str(info.value)
    assert "http://127.0.0.1:9/images.tar.gz" in message
    assert "download the archives yourself and pass the extracted folder as DATA" in message
    assert "HEADSTART_DOWNLOAD_BASE_URL" in message and "images.tar.gz, annotations.tar.gz" in message


def test_missing_mirror_file(tmp_path: Path) -> None:
    with pytest.raises(HeadstartError, match=r"Could not download file://.*kagglecatsanddogs_5340\.zip.*yourself"):
        download_dataset("catsdogs", tmp_path / "cd", base_url=tmp_path.as_uri(), progress=False)


def test_unknown_name_and_file_destination(tmp_path: Path) -> None:
    expected = r"The 'name' parameter of download_dataset must be a str among \{'catsdogs', 'pets'\}\. Got 'dogs'"
    with pytest.raises(ValueError, match=expected):
        download_dataset("dogs", tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(HeadstartError, match=r"is a file; pass a folder"):
        download_dataset("pets", tmp_path / "file")


@pytest.mark.usefixtures("checksums")
def test_progress_bar_goes_to_stderr(mirror: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    download_dataset("catsdogs", tmp_path / "cd", base_url=mirror.as_uri(), progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "kagglecatsanddogs_5340.zip" in captured.err


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files and honours ``Range: bytes=N-`` (the standard handler ignores it), logging every request."""

    requests: list[str | None] = []

    def do_GET(self) -> None:
        self.requests.append(self.headers.get("Range"))
        data = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
        start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-")) if self.headers.get("Range") else 0
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.usefixtures("checksums")
def test_interrupted_download_resumes_over_http(mirror: Path, tmp_path: Path) -> None:
    handler = functools.partial(_RangeHandler, directory=str(mirror))
    _RangeHandler.requests = []
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            dest = tmp_path / "cd"
            dest.mkdir()
            whole = (mirror / "kagglecatsanddogs_5340.zip").read_bytes()
            (dest / "kagglecatsanddogs_5340.zip.part").write_bytes(whole[:100])
            root = download_dataset(
                "catsdogs", dest, base_url=f"http://127.0.0.1:{server.server_address[1]}/", progress=False
            )
        finally:
            server.shutdown()
    assert _RangeHandler.requests == ["bytes=100-"]
    assert (dest / "kagglecatsanddogs_5340.zip").read_bytes() == whole
    assert len(load_dataset(root)) == 2


# --- hostile archives: nothing replaced, nothing unpacked past the limits, nothing left behind --------------------


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        for name, data in members.items():
            zipped.writestr(name, data)
    return path


def _pin_catsdogs(monkeypatch: pytest.MonkeyPatch, archive_path: Path, **limits: int) -> None:
    """The crafted zip passes the size check, as the issue's attacker's did (same size as the official one)."""
    archive = dataclasses.replace(DATASETS["catsdogs"][0], size=archive_path.stat().st_size, **limits)
    monkeypatch.setitem(DATASETS, "catsdogs", [archive])


@pytest.mark.parametrize(
    "case",
    ["replaces a user's file", "zip bomb", "too many bytes", "too many files", "outside the layout", "under a file"],
)
def test_a_hostile_catsdogs_zip_is_refused_and_leaves_dest_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    dest = tmp_path / "dest"
    (dest / "PetImages" / "Cat").mkdir(parents=True)
    (dest / "PetImages" / "Cat" / "1.jpg").write_bytes(b"the user's own photo")
    (dest / "notes.txt").write_text("the user's notes")
    photos = {f"PetImages/Dog/{i}.jpg": _jpeg_bytes((i, 0, 0)) for i in range(3)}
    members, limits = {
        "replaces a user's file": ({**photos, "PetImages/Cat/1.jpg": b"the attacker's bytes"}, {}),
        "zip bomb": ({**photos, "PetImages/Cat/2.jpg": bytes(50 << 20)}, {}),
        "too many bytes": (photos, {"max_bytes": 100}),
        "too many files": (photos, {"max_files": 2}),
        "outside the layout": ({**photos, "notes/evil.txt": b"x"}, {}),
        "under a file": ({**photos, "notes.txt/evil.jpg": b"x"}, {}),
    }[case]
    mirror = _zip(tmp_path / "mirror" / "kagglecatsanddogs_5340.zip", members)
    _pin_catsdogs(monkeypatch, mirror, **limits)
    before = _listing(dest)
    with pytest.raises(HeadstartError, match="nothing was extracted|refusing"):
        download_dataset("catsdogs", dest, base_url=mirror.parent.as_uri(), progress=False)
    assert _listing(dest) == before, "DEST changed: a file was replaced, added or left behind"
    assert sorted(p.name for p in dest.iterdir()) == ["PetImages", "notes.txt"], "junk was left in DEST"


def test_a_tar_bomb_is_refused_before_it_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gzip stream of 256 MB of zeros (a quarter-MB file): refused from the member's header, nothing written."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with tarfile.open(mirror / "images.tar.gz", "w:gz", compresslevel=1) as tar:
        _add(tar, "images/Abyssinian_1.jpg", _jpeg_bytes())
        info = tarfile.TarInfo("images/Abyssinian_2.jpg")
        info.size = 256 << 20

        class Zeros(io.RawIOBase):
            left = 256 << 20

            def readable(self) -> bool:
                return True

            def readinto(self, buffer):  # type: ignore[override]
                n = min(len(buffer), self.left)
                buffer[:n] = bytes(n)
                self.left -= n
                return n

        tar.addfile(info, io.BufferedReader(Zeros(), 1 << 20))
    archives = [dataclasses.replace(a, md5=None, sha256=None, size=None, max_bytes=64 << 20) for a in DATASETS["pets"]]
    monkeypatch.setitem(DATASETS, "pets", archives)
    dest = tmp_path / "pets"
    with pytest.raises(HeadstartError, match="unpacks to more than 64 MB"):
        download_dataset("pets", dest, base_url=mirror.as_uri(), progress=False)
    assert [p.name for p in dest.iterdir()] == [], "an extracted file, the staging folder or the archive was left"


@pytest.mark.usefixtures("checksums")
def test_an_interrupted_extraction_is_finished_not_refused(mirror: Path, tmp_path: Path) -> None:
    """Files already in DEST with the archive's own bytes (an extraction cut short) are kept, the rest added."""
    dest = tmp_path / "cd"
    (dest / "PetImages" / "Cat").mkdir(parents=True)
    with zipfile.ZipFile(mirror / "kagglecatsanddogs_5340.zip") as zipped:
        (dest / "PetImages" / "Cat" / "1.jpg").write_bytes(zipped.read("PetImages/Cat/1.jpg"))
    root = download_dataset("catsdogs", dest, base_url=mirror.as_uri(), progress=False)
    assert len(load_dataset(root)) == 2
    assert "sha256 " in (dest / ".headstart-extracted-kagglecatsanddogs_5340.zip").read_text()
