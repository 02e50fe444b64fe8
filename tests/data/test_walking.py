"""Folders walked lazily give the listings they stand in for, in the same order."""

from __future__ import annotations

import os
from pathlib import Path

from headstart.data.datasets import labelled_photos, load_dataset
from headstart.data.images import list_image_files
from headstart.data.walking import walk_files, walk_images


def _awkward(root: Path) -> Path:
    """Names whose order as text and as paths differ (``a.jpg``/``a/``, ``cat``/``cat-2``), hidden entries, other
    files, a non-ASCII name, a symlinked folder and a linked file."""
    for name in (
        "cat/y.jpg",
        "cat/a.jpg",
        "cat/a/b.jpg",
        "cat/é.jpg",
        "cat/notes.txt",
        "cat/.h.jpg",
        "cat-2/x.JPG",
        "cat-2/sub/k.png",
        "dog/1.jpg",
        ".hidden/q.jpg",
        "elsewhere/t.jpg",
    ):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    os.symlink(root / "elsewhere", root / "dog" / "linked")
    os.symlink(root / "cat" / "y.jpg", root / "dog" / "y-link.jpg")
    return root


def test_walking_gives_list_image_files_in_either_order(tmp_path: Path) -> None:
    root = _awkward(tmp_path)
    images, ignored = list_image_files(root)
    assert list(walk_images(root, text_order=False)) == images
    assert list(walk_images(root)) == sorted(images, key=str)
    assert [p for p, image in walk_files(root, text_order=False) if not image] == ignored
    assert list(walk_images(tmp_path / "missing")) == []


def test_labelled_photos_are_load_datasets_samples_in_its_order(tmp_path: Path) -> None:
    root = _awkward(tmp_path)
    (root / "elsewhere" / "t.jpg").unlink()
    photos = labelled_photos(root)
    dataset = load_dataset(root)
    assert photos.labels == dataset.classes
    assert list(photos) == [(s.path, s.label) for s in dataset.samples]
    assert list(labelled_photos(dataset)) == list(photos)
