"""Recognise a data set on disk, list its labelled photos, and split it without leaks.

Four layouts are understood, tried in this order: a CSV of ``path,label``; an Oxford-IIIT Pet root
(``images/`` + ``annotations/``); Microsoft's ``PetImages`` (``Cat/``, ``Dog/``); a folder with one
subfolder per class. Files are listed, never opened: a damaged ``.jpg`` stays a sample so that the
extraction step can report it, and files that are not images go to ``Dataset.ignored`` so that nothing
is lost without a word.

Example::

    from headstart.data.datasets import load_dataset, train_val_split

    data = load_dataset("oxford-iiit-pet", split="train")
    train, val = train_val_split(data, val_fraction=0.2, seed=0)
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from headstart._validation import check_choice, fail
from headstart.data._names import OXFORD_NAME as _OXFORD_NAME
from headstart.data._names import LabelsFromFilenamesWarning, flat_folder_error, is_oxford_images, labels_from_names
from headstart.data._split import train_val_split
from headstart.errors import DataError

__all__ = [
    "Dataset",
    "LabelledPhotos",
    "LabelsFromFilenamesWarning",
    "Sample",
    "labelled_photos",
    "load_dataset",
    "train_val_split",
]

_SPLITS = ("all", "train", "test")
_OXFORD_SPLIT_FILES = {"train": "trainval.txt", "test": "test.txt"}
# Folders that tools and operating systems leave behind; never a class.
_NOT_CLASS_FOLDERS = {"__MACOSX", "__pycache__"}
_EXPECTED_LAYOUTS = (
    "DATA must be a folder with one subfolder per class (DATA/cat/1.jpg, DATA/dog/2.jpg), "
    "an Oxford-IIIT Pet root (images/ and annotations/), Microsoft's PetImages folder (Cat/, Dog/) "
    "or a CSV file of path,label"
)


@dataclass(frozen=True, slots=True)
class Sample:
    """One labelled photo; the file may still turn out to be unusable when it is opened. (Slots: a data set of
    300,000 photos holds 300,000 of them, and a dict each would be 40 bytes more a photo.)"""

    path: Path
    label: str


@dataclass
class Dataset:
    """Labelled photos found in one source, plus the files that were found and not used."""

    samples: list[Sample]
    classes: list[str]
    root: Path
    kind: str
    ignored: list[Path] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[str]:
        """The label of every sample, in sample order."""
        return [sample.label for sample in self.samples]

    @property
    def paths(self) -> list[Path]:
        """The file of every sample, in sample order."""
        return [sample.path for sample in self.samples]

    def subset(self, indices: Sequence[int]) -> Dataset:
        """The samples at ``indices``.

        ``classes`` stays the parent's list, so that train and validation parts map labels to the same
        indices even when a rare class is missing from one of them. ``ignored`` is left empty: those files
        belong to the source and are reported once, with the parent.
        """
        return Dataset(
            samples=[self.samples[i] for i in indices],
            classes=list(self.classes),
            root=self.root,
            kind=self.kind,
        )


def load_dataset(source: str | Path, *, split: str = "all", labels_from_filenames: bool = False) -> Dataset:
    """Recognise the layout of `source` and list its labelled photos.

    Labels come from class folders, a CSV or the Oxford-IIIT Pet names, never from other file names unasked: a
    flat folder of camera photos (``IMG_0001.jpg``, ``DSC_0006.jpg``) is refused with how to lay it out.

    Args:
        source: a CSV file of ``path,label``, an Oxford-IIIT Pet root (or its parent, or its ``images/``
            folder), Microsoft's ``PetImages`` folder (or the folder holding it), or a folder with one
            subfolder per class.
        split: ``"all"``, or the official ``"train"`` (trainval.txt) / ``"test"`` part of an Oxford-IIIT
            Pet root; the other layouts have no official split.
        labels_from_filenames: `source` is a flat folder of ``<label><number>`` photos (``cat_001.jpg``,
            ``dog-2.png``): each photo's label is its name without the number. A
            :class:`LabelsFromFilenamesWarning` lists the labels found.

    Returns:
        A `Dataset` whose samples are sorted by path; ``ignored`` lists the non-image files found.

    Raises:
        DataError: `source` is missing, empty, has one class only, or has no layout headstart knows.

    Example:
        >>> load_dataset("photos/").classes  # doctest: +SKIP
        ['cat', 'dog']
        >>> load_dataset("camera/", labels_from_filenames=True).classes  # doctest: +SKIP
        ['cat', 'dog']
    """
    check_choice(split, "split", "load_dataset", _SPLITS)
    if not isinstance(labels_from_filenames, bool):
        fail("labels_from_filenames", "load_dataset", "a bool", labels_from_filenames)
    path = Path(source).expanduser().absolute()
    if not path.exists():
        raise DataError(f"{path} does not exist. {_EXPECTED_LAYOUTS}; check the path for typos.")

    if labels_from_filenames and (path.is_file() or _find_oxford_root(path) is None):
        _require_no_split(split, path, "a flat folder labelled by its file names")
        dataset = _load_from_filenames(path)
    elif path.is_file():
        if path.suffix.lower() != ".csv":
            raise DataError(f"{path} is a file but not a .csv. {_EXPECTED_LAYOUTS}.")
        _require_no_split(split, path, "a CSV file")
        dataset = _load_csv(path)
    else:
        oxford_root = _find_oxford_root(path)
        petimages_root = None if oxford_root is not None else _find_petimages_root(path)
        if oxford_root is not None:
            dataset = _load_oxford(oxford_root, split)
        elif petimages_root is not None:
            _require_no_split(split, path, "Microsoft's PetImages")
            dataset = _load_class_folders(petimages_root, kind="petimages")
        elif _is_oxford_images_folder(path):
            _require_no_split(
                split, path, "an Oxford-IIIT Pet images/ folder without annotations/ (it has no split files)"
            )
            dataset = _load_oxford_images(path, root=path)
        else:
            _require_no_split(split, path, "a folder with one subfolder per class")
            dataset = _load_class_folders(path, kind="folder")

    if len(dataset.classes) < 2:
        found = f"only the class {dataset.classes[0]!r}" if dataset.classes else "no class"
        raise DataError(
            f"{path} has {found} ({len(dataset)} photos); a classifier needs at least two classes. "
            f"{_EXPECTED_LAYOUTS}; add a folder (or CSV rows) for every other class."
        )
    return dataset


@dataclass
class LabelledPhotos:
    """A data set's photos as ``(path, label)`` pairs read as they are iterated, for commands that look at each
    photo once (``evaluate``): ``labels`` (the classes) are known at once, the photos are not listed.

    Iterating gives ``load_dataset``'s samples in its order; a folder of class folders is walked lazily
    (:func:`~headstart.data.walking.walk_images`), the other layouts come from their (small) listing.
    """

    labels: list[str]
    root: Path
    pairs: Callable[[], Iterator[tuple[Path, str]]]  # (a new walk each time the photos are iterated)

    def __iter__(self) -> Iterator[tuple[Path, str]]:
        return self.pairs()


def labelled_photos(source: str | Path | Dataset, *, split: str = "all") -> LabelledPhotos:
    """:func:`load_dataset`'s photos and labels without its listing, where the layout allows: the class folders of
    a folder (or of PetImages) are walked as they are read, so 300,000 photos are never held as 300,000 samples.
    The same checks and errors as :func:`load_dataset` (it is called to raise them).

    Example:
        >>> photos = labelled_photos("photos/")
        >>> photos.labels, next(iter(photos))  # doctest: +SKIP
        (['cat', 'dog'], (PosixPath('photos/cat/01.jpg'), 'cat'))
    """
    from headstart.data.images import IMAGE_EXTENSIONS
    from headstart.data.walking import walk_images

    if isinstance(source, Dataset):
        samples = source.samples
        return LabelledPhotos(sorted(set(source.labels)), source.root, lambda: ((s.path, s.label) for s in samples))
    check_choice(split, "split", "load_dataset", _SPLITS)
    path = Path(source).expanduser().absolute()
    root = None
    if split == "all" and path.is_dir() and _find_oxford_root(path) is None:
        root = _find_petimages_root(path) or (None if _is_oxford_images_folder(path) else path)
    classes = []
    if root is not None:
        loose = any(
            child.is_file() and not child.name.startswith(".") and child.suffix.lower() in IMAGE_EXTENSIONS
            for child in root.iterdir()
        )
        classes = [] if loose else [d for d in _visible_dirs(root) if next(walk_images(d), None) is not None]
        classes.sort(key=lambda d: d.name + "/")  # (where load_dataset's sort of the paths as text puts them)
    if len(classes) < 2:  # another layout, or one load_dataset refuses (with its message)
        return labelled_photos(load_dataset(path, split=split))

    def pairs() -> Iterator[tuple[Path, str]]:
        for folder in classes:  # (each walked in text order: as load_dataset sorts its paths)
            yield from ((photo, folder.name) for photo in walk_images(folder))

    return LabelledPhotos(sorted(d.name for d in classes), root, pairs)


def _require_no_split(split: str, path: Path, layout: str) -> None:
    if split != "all":
        raise DataError(
            f"split={split!r} was asked of {path}, which is {layout}: it has no official split. "
            "Only an Oxford-IIIT Pet root (images/ and annotations/) has one (train: trainval.txt, test: "
            "test.txt). Use split='all' and let train_val_split make a validation set."
        )


def _visible_dirs(path: Path) -> list[Path]:
    return sorted(
        child
        for child in path.iterdir()
        if child.is_dir() and not child.name.startswith(".") and child.name not in _NOT_CLASS_FOLDERS
    )


def _is_oxford_root(path: Path) -> bool:
    return (path / "images").is_dir() and (path / "annotations").is_dir()


def _find_oxford_root(path: Path) -> Path | None:
    if _is_oxford_root(path):
        return path
    candidates = [child for child in _visible_dirs(path) if _is_oxford_root(child)]
    if len(candidates) > 1:
        names = ", ".join(child.name for child in candidates)
        raise DataError(
            f"{path} holds {len(candidates)} Oxford-IIIT Pet roots ({names}); pass the one to use, "
            f"e.g. {candidates[0]}."
        )
    return candidates[0] if candidates else None


def _find_petimages_root(path: Path) -> Path | None:
    inner = path / "PetImages"
    if inner.is_dir() and {child.name for child in _visible_dirs(inner)} == {"Cat", "Dog"}:
        return inner
    if {child.name for child in _visible_dirs(path)} == {"Cat", "Dog"}:
        return path
    return None


def _is_oxford_images_folder(path: Path) -> bool:
    """A bare Oxford ``images/`` folder: files named ``<Breed>_<n>`` (breeds of the data set) directly inside."""
    from headstart.data.images import IMAGE_EXTENSIONS

    if _visible_dirs(path):
        return False
    stems = [
        child.stem
        for child in path.iterdir()
        if child.is_file() and not child.name.startswith(".") and child.suffix.lower() in IMAGE_EXTENSIONS
    ]
    return is_oxford_images(stems)


def _load_from_filenames(root: Path) -> Dataset:
    from headstart.data.images import IMAGE_EXTENSIONS

    if root.is_file():
        raise DataError(
            f"{root} is a file; labels are taken from file names only in a folder of photos (the CSV's own labels "
            "are used without labels_from_filenames)."
        )
    class_dirs = [d for d in _visible_dirs(root) if any(f.suffix.lower() in IMAGE_EXTENSIONS for f in d.rglob("*"))]
    if class_dirs:
        raise DataError(
            f"{root} has folders of photos ({', '.join(d.name for d in class_dirs[:3])}): labels are taken from file "
            "names only in a flat folder. Drop labels_from_filenames (--labels-from-filenames) to use the folders "
            "as classes, or pass the folder that holds the photos themselves."
        )
    files = sorted(child for child in root.iterdir() if child.is_file() and not child.name.startswith("."))
    images = [child for child in files if child.suffix.lower() in IMAGE_EXTENSIONS]
    if not images:
        raise DataError(f"{root} holds no photos ({len(files)} other files) to take labels from.")
    labels = labels_from_names(root, images)
    samples = [Sample(path, label) for path, label in zip(images, labels)]
    return _make_dataset(samples, root, "filenames", [child for child in files if child not in set(images)])


def _oxford_label(path: Path) -> str:
    match = _OXFORD_NAME.match(path.stem)
    if match is None:
        raise DataError(
            f"{path}: an Oxford-IIIT Pet image name must be <Breed>_<number> (e.g. Abyssinian_100.jpg), "
            "the breed being the label. Rename the file or move it out of images/."
        )
    return match["label"]


def _make_dataset(samples: list[Sample], root: Path, kind: str, ignored: list[Path]) -> Dataset:
    samples = sorted(samples, key=lambda sample: (str(sample.path), sample.label))
    return Dataset(
        samples=samples,
        classes=sorted({sample.label for sample in samples}),
        root=root,
        kind=kind,
        ignored=sorted(ignored),
    )


def _load_oxford_images(images: Path, *, root: Path) -> Dataset:
    from headstart.data.images import list_image_files

    image_files, ignored = list_image_files(images)
    if not image_files:
        raise DataError(
            f"{images} holds no image files ({len(ignored)} other files); an Oxford-IIIT Pet images/ folder "
            "holds <Breed>_<n>.jpg files. Extract images.tar.gz again or run `headstart download pets DIR`."
        )
    samples = [Sample(path, _oxford_label(path)) for path in image_files]
    return _make_dataset(samples, root, "oxford-pets", list(ignored))


def _load_oxford(root: Path, split: str) -> Dataset:
    images = root / "images"
    if split == "all":
        return _load_oxford_images(images, root=root)

    from headstart.data.images import list_image_files

    list_file = root / "annotations" / _OXFORD_SPLIT_FILES[split]
    if not list_file.is_file():
        raise DataError(
            f"{list_file} is missing, so split={split!r} cannot be read from the Oxford-IIIT Pet root {root}. "
            "Extract annotations.tar.gz into it again (or run `headstart download pets DIR`), "
            "or use split='all'."
        )
    image_files, ignored = list_image_files(images)
    by_stem = {path.stem: path for path in image_files}
    samples: list[Sample] = []
    seen: set[str] = set()
    with list_file.open(encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name = line.split()[0]
            if name in seen:
                continue
            seen.add(name)
            # A listed photo that is missing stays a sample, so that it is reported as unusable, not lost.
            match = _OXFORD_NAME.match(name)
            if match is None:
                raise DataError(
                    f"{list_file}, line {line_number}: {name!r} is not an Oxford-IIIT Pet image name "
                    "(<Breed>_<number>). Restore the file from annotations.tar.gz."
                )
            samples.append(Sample(by_stem.get(name, images / f"{name}.jpg"), match["label"]))
    if not samples:
        raise DataError(f"{list_file} lists no images; restore it from annotations.tar.gz, or use split='all'.")
    # Non-image files of images/ (e.g. .mat) are reported whatever the split.
    return _make_dataset(samples, root, "oxford-pets", list(ignored))


def _load_class_folders(root: Path, *, kind: str) -> Dataset:
    from headstart.data.images import IMAGE_EXTENSIONS, list_image_files

    class_dirs = _visible_dirs(root)
    loose = sorted(child for child in root.iterdir() if child.is_file() and not child.name.startswith("."))
    loose_images = [child for child in loose if child.suffix.lower() in IMAGE_EXTENSIONS]
    if loose_images and class_dirs:
        shown = ", ".join(child.name for child in loose_images[:3])
        raise DataError(
            f"{root} has {len(loose_images)} photos directly inside it ({shown}"
            f"{', ...' if len(loose_images) > 3 else ''}) next to class folders; photos must sit in the "
            f"folder of their class: DATA/<class>/<image>, e.g. {root / class_dirs[0].name / loose_images[0].name}. "
            "Move them into their class folder (or out of DATA)."
        )
    samples: list[Sample] = []
    ignored = [child for child in loose]
    for class_dir in class_dirs:
        image_files, other_files = list_image_files(class_dir)
        samples.extend(Sample(path, class_dir.name) for path in image_files)
        ignored.extend(other_files)
    if not samples:
        if loose_images:
            raise flat_folder_error(root, loose_images)
        if class_dirs:
            found = f"{len(class_dirs)} folders but no image file in them"
        else:
            found = f"no photos ({len(loose)} other files)" if loose else "nothing"
        raise DataError(
            f"{root} has {found}. {_EXPECTED_LAYOUTS}: move each photo into DATA/<class>/, one folder per class."
        )
    return _make_dataset(samples, root, kind, ignored)


def _load_csv(csv_path: Path) -> Dataset:
    from headstart.data.images import IMAGE_EXTENSIONS

    base = csv_path.parent
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        rows = [(number, row) for number, row in enumerate(csv.reader(handle), start=1)]
    rows = [(number, [cell.strip() for cell in row]) for number, row in rows if any(cell.strip() for cell in row)]
    if not rows:
        raise DataError(f"{csv_path} is empty; it must have one path,label row per photo.")

    path_column, label_column, has_header = 0, 1, False
    first_number, first = rows[0]
    lowered = [cell.lower() for cell in first]
    if "path" in lowered and "label" in lowered:
        path_column, label_column, has_header = lowered.index("path"), lowered.index("label"), True
        rows = rows[1:]
    elif _looks_like_header(first, base, IMAGE_EXTENSIONS):
        raise DataError(
            f"{csv_path}, line {first_number}: the header {','.join(first)!r} has no 'path' and 'label' "
            "columns. Name the columns path,label (or remove the header row)."
        )

    samples: list[Sample] = []
    missing: list[Path] = []
    for number, row in rows:
        # With a header, extra columns are allowed (and ignored); without one, a row is exactly path,label.
        if (len(row) <= max(path_column, label_column)) if has_header else len(row) != 2:
            raise DataError(
                f"{csv_path}, line {number}: expected the columns path,label, got {len(row)} column(s) "
                f"({','.join(row)!r}). Quote paths that contain commas."
            )
        raw_path, label = row[path_column], row[label_column]
        if not raw_path:
            raise DataError(f"{csv_path}, line {number}: the path is empty. Give every row a file path.")
        if not label:
            raise DataError(
                f"{csv_path}, line {number}: the label of {raw_path!r} is empty. Give every row a label "
                "(or remove the row)."
            )
        path = Path(raw_path).expanduser()
        if not path.is_absolute():
            path = base / path
        if not path.is_file():
            missing.append(path)  # kept: the extraction step reports it as unusable
        samples.append(Sample(path, label))
    if not samples:
        raise DataError(f"{csv_path} has a header but no rows; add one path,label row per photo.")
    if len(missing) * 2 > len(samples):
        shown = ", ".join(str(path) for path in missing[:3])
        raise DataError(
            f"{csv_path}: {len(missing)} of {len(samples)} listed files do not exist (first: {shown}). "
            f"Relative paths are resolved against the CSV's folder {base}; write paths relative to it, "
            "or absolute paths."
        )
    return _make_dataset(samples, csv_path, "csv", [])


def _looks_like_header(row: list[str], base: Path, image_extensions: frozenset[str] | set[str]) -> bool:
    """A first row whose first cell is neither an image name nor an existing file is a header, not data."""
    first = row[0]
    if Path(first).suffix.lower() in image_extensions:
        return False
    candidate = Path(first).expanduser()
    return not (candidate if candidate.is_absolute() else base / candidate).exists()
