"""load_dataset recognises every layout (and explains the ones it refuses); train_val_split never leaks."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from PIL import Image

from headstart.data.datasets import Dataset, Sample, load_dataset, train_val_split
from headstart.errors import DataError

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _jpeg(path: Path, colour: tuple[int, int, int] = (200, 100, 50)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path, "JPEG")
    return path


def _folder(root: Path, counts: dict[str, int]) -> Path:
    for label, count in counts.items():
        for i in range(count):
            _jpeg(root / label / f"{i}.jpg")
    return root


def _oxford(root: Path) -> Path:
    """A tiny Oxford-IIIT Pet root: 3 breeds, a .mat file, split files with comments, one listed photo missing."""
    names = ["Abyssinian_1", "Abyssinian_2", "Abyssinian_3", "american_bulldog_10", "american_bulldog_11",
             "yorkshire_terrier_5", "yorkshire_terrier_6"]  # fmt: skip
    for name in names:
        _jpeg(root / "images" / f"{name}.jpg")
    (root / "images" / "Abyssinian_100.mat").write_bytes(b"MATLAB")
    annotations = root / "annotations"
    annotations.mkdir()
    header = "#Image CLASS-ID SPECIES BREED ID\n#ID: 1:37 Class ids\n"
    (annotations / "trainval.txt").write_text(
        header + "Abyssinian_1 1 1 1\namerican_bulldog_10 2 2 1\nyorkshire_terrier_5 37 2 25\n"
        "Abyssinian_2 1 1 1\nAbyssinian_99 1 1 1\n"
    )
    (annotations / "test.txt").write_text(
        header + "Abyssinian_3 1 1 1\namerican_bulldog_11 2 2 1\nyorkshire_terrier_6 37 2 25\n"
    )
    return root


# --- folder layout ---------------------------------------------------------------------------------------------


def test_class_folders(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data", {"cat": 3, "dog": 2})
    _jpeg(root / "dog" / "nested" / "deep.jpg")
    (root / "dog" / "notes.txt").write_text("not a photo")
    (root / "cat" / "empty.jpg").write_bytes(b"")  # unusable, but it is a photo file: reported later
    (root / "README.md").write_text("hello")
    (root / ".DS_Store").write_bytes(b"x")

    data = load_dataset(root)

    assert data.kind == "folder"
    assert data.classes == ["cat", "dog"]
    assert data.root == root
    assert len(data) == 7
    assert data.labels.count("cat") == 4 and data.labels.count("dog") == 3
    assert root / "cat" / "empty.jpg" in data.paths
    assert root / "dog" / "nested" / "deep.jpg" in data.paths
    assert data.ignored == [root / "README.md", root / "dog" / "notes.txt"]
    assert data.paths == sorted(data.paths)


def test_relative_source_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _folder(tmp_path / "data", {"a": 1, "b": 1})
    monkeypatch.chdir(tmp_path)
    data = load_dataset("data")
    assert all(path.is_absolute() for path in data.paths)


def test_loose_photos_next_to_class_folders_are_refused(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data", {"cat": 1, "dog": 1})
    _jpeg(root / "stray.jpg")
    with pytest.raises(DataError, match=r"stray\.jpg.*DATA/<class>/<image>"):
        load_dataset(root)


def test_loose_photos_without_class_folders_are_refused(tmp_path: Path) -> None:
    _jpeg(tmp_path / "data" / "photo1.jpg")
    _jpeg(tmp_path / "data" / "photo2.jpg")
    with pytest.raises(DataError, match=r"2 photos directly inside it .*and no class folder.*one subfolder per class"):
        load_dataset(tmp_path / "data")


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"does not exist.*one subfolder per class"):
        load_dataset(tmp_path / "nope")


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError, match=r"has nothing.*DATA/cat/1\.jpg"):
        load_dataset(tmp_path / "data")


def test_folders_without_photos(tmp_path: Path) -> None:
    (tmp_path / "data" / "cat").mkdir(parents=True)
    (tmp_path / "data" / "dog").mkdir()
    (tmp_path / "data" / "dog" / "list.txt").write_text("x")
    with pytest.raises(DataError, match=r"2 folders but no image file"):
        load_dataset(tmp_path / "data")


def test_single_class(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data", {"cat": 3})
    with pytest.raises(DataError, match=r"only the class 'cat' \(3 photos\).*at least two classes"):
        load_dataset(root)


def test_split_on_a_layout_without_official_split(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data", {"cat": 1, "dog": 1})
    with pytest.raises(DataError, match=r"no official split.*Oxford-IIIT Pet.*train.*test"):
        load_dataset(root, split="train")


def test_unknown_split_value(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"The 'split' parameter of load_dataset must be .* Got 'val' instead"):
        load_dataset(tmp_path, split="val")


def test_other_file_types_are_refused(tmp_path: Path) -> None:
    (tmp_path / "data.json").write_text("{}")
    with pytest.raises(DataError, match=r"not a \.csv"):
        load_dataset(tmp_path / "data.json")


# --- Oxford-IIIT Pet --------------------------------------------------------------------------------------------


def test_oxford_all(tmp_path: Path) -> None:
    root = _oxford(tmp_path / "oxford-iiit-pet")
    data = load_dataset(root)
    assert data.kind == "oxford-pets"
    assert data.root == root
    assert data.classes == ["Abyssinian", "american_bulldog", "yorkshire_terrier"]
    assert len(data) == 7
    assert data.ignored == [root / "images" / "Abyssinian_100.mat"]


def test_oxford_official_splits(tmp_path: Path) -> None:
    root = _oxford(tmp_path / "oxford-iiit-pet")
    train = load_dataset(root, split="train")
    test = load_dataset(root, split="test")
    # A listed photo whose file is missing stays a sample, to be reported as unusable rather than lost.
    assert root / "images" / "Abyssinian_99.jpg" in train.paths
    assert len(train) == 5 and train.labels.count("Abyssinian") == 3
    assert sorted(p.name for p in test.paths) == ["Abyssinian_3.jpg", "american_bulldog_11.jpg",
                                                  "yorkshire_terrier_6.jpg"]  # fmt: skip
    assert not set(train.paths) & set(test.paths)
    assert test.classes == ["Abyssinian", "american_bulldog", "yorkshire_terrier"]


def test_oxford_parent_folder_is_accepted(tmp_path: Path) -> None:
    root = _oxford(tmp_path / "downloads" / "oxford-iiit-pet")
    (tmp_path / "downloads" / "other").mkdir()
    data = load_dataset(tmp_path / "downloads", split="test")
    assert data.root == root and len(data) == 3


def test_two_oxford_roots_are_ambiguous(tmp_path: Path) -> None:
    _oxford(tmp_path / "a")
    _oxford(tmp_path / "b")
    with pytest.raises(DataError, match=r"2 Oxford-IIIT Pet roots \(a, b\)"):
        load_dataset(tmp_path)


def test_oxford_images_folder_alone(tmp_path: Path) -> None:
    root = _oxford(tmp_path / "pets")
    data = load_dataset(root / "images")
    assert data.kind == "oxford-pets" and len(data) == 7 and len(data.classes) == 3
    with pytest.raises(DataError, match=r"no official split"):
        load_dataset(root / "images", split="train")


def test_oxford_missing_split_file(tmp_path: Path) -> None:
    root = _oxford(tmp_path / "pets")
    (root / "annotations" / "test.txt").unlink()
    with pytest.raises(DataError, match=r"test\.txt is missing.*annotations\.tar\.gz"):
        load_dataset(root, split="test")


# --- Microsoft PetImages ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("given", ["parent", "itself"])
def test_petimages(tmp_path: Path, given: str) -> None:
    pet_images = _folder(tmp_path / "PetImages", {"Cat": 2, "Dog": 2})
    (pet_images / "Cat" / "Thumbs.db").write_bytes(b"x")
    (pet_images / "Dog" / "666.jpg").write_bytes(b"")  # the famous broken file: kept, reported later
    (tmp_path / "readme[1].txt").write_text("licence")

    data = load_dataset(tmp_path if given == "parent" else pet_images)

    assert data.kind == "petimages"
    assert data.root == pet_images
    assert data.classes == ["Cat", "Dog"]
    assert len(data) == 5
    assert data.ignored == [pet_images / "Cat" / "Thumbs.db"]


# --- CSV --------------------------------------------------------------------------------------------------------


def test_csv_with_header(tmp_path: Path) -> None:
    _jpeg(tmp_path / "img" / "a.jpg")
    _jpeg(tmp_path / "img" / "b.jpg")
    absolute = _jpeg(tmp_path / "elsewhere" / "c.jpg")
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text(f"Path,Label\nimg/a.jpg,cat\nimg/b.jpg, dog\n\n{absolute},dog\nimg/gone.jpg,cat\n")

    data = load_dataset(csv_file)

    assert data.kind == "csv" and data.root == csv_file
    assert data.classes == ["cat", "dog"]
    assert len(data) == 4
    # A missing file stays a sample; the extraction step reports it as unusable.
    assert tmp_path / "img" / "gone.jpg" in data.paths
    assert Sample(tmp_path / "img" / "b.jpg", "dog") in data.samples


def test_csv_without_header_and_extra_columns_with_header(tmp_path: Path) -> None:
    _jpeg(tmp_path / "a.jpg")
    _jpeg(tmp_path / "b.jpg")
    (tmp_path / "plain.csv").write_text("a.jpg,cat\nb.jpg,dog\n")
    (tmp_path / "pandas.csv").write_text(",label,path\n0,cat,a.jpg\n1,dog,b.jpg\n")
    assert load_dataset(tmp_path / "plain.csv").labels == ["cat", "dog"]
    assert load_dataset(tmp_path / "pandas.csv").labels == ["cat", "dog"]


def test_csv_wrong_header(tmp_path: Path) -> None:
    _jpeg(tmp_path / "a.jpg")
    (tmp_path / "labels.csv").write_text("file,class\na.jpg,cat\n")
    with pytest.raises(DataError, match=r"line 1: the header 'file,class' has no 'path' and 'label'"):
        load_dataset(tmp_path / "labels.csv")


def test_csv_empty_label_names_the_line(tmp_path: Path) -> None:
    _jpeg(tmp_path / "a.jpg")
    _jpeg(tmp_path / "b.jpg")
    (tmp_path / "labels.csv").write_text("path,label\na.jpg,cat\nb.jpg,\n")
    with pytest.raises(DataError, match=r"labels\.csv, line 3: the label of 'b\.jpg' is empty"):
        load_dataset(tmp_path / "labels.csv")


def test_csv_wrong_column_count(tmp_path: Path) -> None:
    _jpeg(tmp_path / "a.jpg")
    (tmp_path / "labels.csv").write_text("a.jpg,cat\na.jpg,cat,extra\n")
    with pytest.raises(DataError, match=r"line 2: expected the columns path,label, got 3"):
        load_dataset(tmp_path / "labels.csv")


def test_csv_mostly_missing_files(tmp_path: Path) -> None:
    _jpeg(tmp_path / "a.jpg")
    (tmp_path / "sub").mkdir()
    csv_file = tmp_path / "sub" / "labels.csv"
    csv_file.write_text("path,label\na.jpg,cat\nb.jpg,dog\n../a.jpg,cat\nc.jpg,dog\n")
    expected = r"3 of 4 listed files do not exist.*a\.jpg.*resolved against the CSV's folder"
    with pytest.raises(DataError, match=expected) as info:
        load_dataset(csv_file)
    assert str(tmp_path / "sub") in str(info.value)


def test_csv_empty_and_split(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("\n")
    with pytest.raises(DataError, match=r"is empty"):
        load_dataset(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("path,label\n")
    with pytest.raises(DataError, match=r"has a header but no rows"):
        load_dataset(tmp_path / "header.csv")
    with pytest.raises(DataError, match=r"no official split"):
        load_dataset(tmp_path / "header.csv", split="test")


# --- the shared real photos --------------------------------------------------------------------------------------


def test_pets_dev() -> None:
    root = SHARED_DATA / "pets-dev"
    if not root.is_dir():
        pytest.skip(f"{root} is absent (it is only there in the development checkout)")
    data = load_dataset(root)
    assert data.kind == "folder"
    assert len(data.classes) == 37
    assert len(data) == 259
    assert root / "MANIFEST.tsv" in data.ignored


# --- train_val_split --------------------------------------------------------------------------------------------


def _synthetic(counts: dict[str, int]) -> Dataset:
    samples = [Sample(Path(f"/data/{label}/{i:03d}.jpg"), label) for label, n in counts.items() for i in range(n)]
    return Dataset(samples=samples, classes=sorted(counts), root=Path("/data"), kind="folder")


def _names(part: Dataset) -> set[Path]:
    return set(part.paths)


def test_split_is_a_partition_and_stratified() -> None:
    data = _synthetic({"a": 20, "b": 10, "c": 2, "d": 1})
    train, val = train_val_split(data, val_fraction=0.25, seed=0)
    assert not _names(train) & _names(val)
    assert _names(train) | _names(val) == set(data.paths)
    assert len(train) + len(val) == len(data)
    assert set(val.labels) == {"a", "b", "c"}  # every class with two samples or more
    assert "d" in train.labels  # a single sample goes to training
    assert val.labels.count("c") == 1 and train.labels.count("c") == 1
    assert len(val) == 8  # ceil(0.25 * 32): the 32 samples of classes that can be split
    assert val.labels.count("a") == 5 and val.labels.count("b") == 2
    assert train.classes == val.classes == data.classes
    assert train.paths == [p for p in data.paths if p in _names(train)]  # keeps the data set's order


def test_split_reproducible_and_seed_dependent() -> None:
    data = _synthetic({"a": 30, "b": 30})
    first = train_val_split(data, seed=3)[1].paths
    assert train_val_split(data, seed=3)[1].paths == first
    assert train_val_split(data, seed=4)[1].paths != first


def test_split_does_not_depend_on_listing_order() -> None:
    data = _synthetic({"a": 15, "b": 12, "c": 7})
    shuffled = list(data.samples)
    random.Random(1).shuffle(shuffled)
    other = Dataset(samples=shuffled, classes=data.classes, root=data.root, kind=data.kind)
    assert _names(train_val_split(data, seed=7)[1]) == _names(train_val_split(other, seed=7)[1])


def test_split_golden() -> None:
    """The same seed gives the same split on every machine: numpy's legacy RandomState is frozen."""
    data = _synthetic({"a": 5, "b": 5})
    val = train_val_split(data, val_fraction=0.4, seed=0)[1]
    assert ["/".join(p.parts[-2:]) for p in val.paths] == ["a/000.jpg", "a/002.jpg", "b/000.jpg", "b/002.jpg"]


def test_split_groups_never_leak() -> None:
    data = _synthetic({"a": 12, "b": 12})
    # Every pair of consecutive files in a class is the same photo (e.g. the same content hash).
    groups = [f"{sample.label}-{int(sample.path.stem) // 2}" for sample in data.samples]
    for seed in range(5):
        train, val = train_val_split(data, val_fraction=0.3, seed=seed, groups=groups)
        group_of = dict(zip(data.paths, groups))
        assert not {group_of[p] for p in train.paths} & {group_of[p] for p in val.paths}
        assert set(val.labels) == {"a", "b"}
        assert len(train) + len(val) == len(data)


def test_split_group_across_labels_follows_its_first_sample() -> None:
    data = _synthetic({"a": 4, "b": 4})
    groups = [str(i) for i in range(len(data))]
    groups[-1] = groups[0]  # the same photo filed under a and under b
    train, _val = train_val_split(data, val_fraction=0.5, seed=0, groups=groups)
    assert (data.paths[0] in train.paths) == (data.paths[-1] in train.paths)


def test_split_too_small_for_every_class_in_val() -> None:
    data = _synthetic({c: 2 for c in "abcdefghij"})
    _train, val = train_val_split(data, val_fraction=0.1, seed=0)
    assert len(val) == 2  # ceil(0.1 * 20): fewer places than classes, so two classes are picked at random
    assert len(set(val.labels)) == 2


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, True, "0.2"])
def test_split_rejects_bad_fraction(bad: object) -> None:
    expected = r"The 'val_fraction' parameter of train_val_split must be a float in \(0, 1\)\. Got"
    with pytest.raises(ValueError, match=expected):
        train_val_split(_synthetic({"a": 3, "b": 3}), val_fraction=bad)  # type: ignore[arg-type]


def test_split_fraction_message_is_sklearn_style() -> None:
    with pytest.raises(ValueError) as info:
        train_val_split(_synthetic({"a": 3, "b": 3}), val_fraction=1.5)
    assert str(info.value) == (
        "The 'val_fraction' parameter of train_val_split must be a float in (0, 1). Got 1.5 instead."
    )


def test_split_rejects_wrong_group_count_and_all_singletons() -> None:
    with pytest.raises(ValueError, match=r"3 groups for 6 samples"):
        train_val_split(_synthetic({"a": 3, "b": 3}), groups=["x", "y", "z"])
    with pytest.raises(DataError, match=r"every class has a single photo"):
        train_val_split(_synthetic({"a": 1, "b": 1}))


def test_split_of_loaded_folder(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data", {"cat": 5, "dog": 5})
    data = load_dataset(root)
    train, val = train_val_split(data, val_fraction=0.2)
    assert sorted(val.labels) == ["cat", "dog"] and len(train) == 8
    assert data.subset([0, 1]).samples == data.samples[:2]


# --- labels never come from file names unasked (issue 11) --------------------------------------------------------


def _camera_folder(root: Path) -> Path:
    """What a phone or camera leaves: a flat folder of IMG_nnnn.jpg and DSC_nnnn.jpg."""
    for i in range(1, 7):
        _jpeg(root / f"IMG_{i:04d}.jpg")
        _jpeg(root / f"DSC_{i + 100:04d}.jpg", (10, 20, 30))
    return root


def test_a_flat_folder_of_camera_photos_is_refused_with_how_to_lay_it_out(tmp_path: Path) -> None:
    """It once trained an 'IMG vs DSC' classifier without a word."""
    root = _camera_folder(tmp_path / "camera")
    with pytest.raises(DataError) as info:
        load_dataset(root)
    message = str(info.value)
    for part in (
        "12 photos directly inside it",
        "no class folder",
        "one subfolder per class",
        "CSV",
        "path,label",
        "labels_from_filenames=True",
        "--labels-from-filenames",
        "'DSC'",
    ):
        assert part in message, f"{part!r} missing from: {message}"


def test_names_that_look_like_oxford_ones_are_not_breeds(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    for name in ("cat_1", "cat_2", "dog_1", "dog_2"):
        _jpeg(root / f"{name}.jpg")
    with pytest.raises(DataError, match="no class folder"):
        load_dataset(root)
    for name in ("Bengal_1", "Bengal_2", "pug_1", "pug_2"):  # breeds of the data set: an Oxford images/ folder
        _jpeg(tmp_path / "pets" / f"{name}.jpg")
    data = load_dataset(tmp_path / "pets")
    assert data.kind == "oxford-pets" and data.classes == ["Bengal", "pug"]


def test_labels_from_filenames_when_asked_says_which_it_found(tmp_path: Path) -> None:
    from headstart.data import LabelsFromFilenamesWarning

    root = _camera_folder(tmp_path / "camera")
    (root / "notes.txt").write_text("not a photo")
    with pytest.warns(LabelsFromFilenamesWarning) as caught:
        data = load_dataset(root, labels_from_filenames=True)
    assert data.kind == "filenames" and data.classes == ["DSC", "IMG"] and len(data) == 12
    assert data.ignored == [root / "notes.txt"]
    message = str(caught[0].message)
    assert "'DSC' (6 photos, e.g. DSC_0101.jpg), 'IMG' (6 photos, e.g. IMG_0001.jpg)" in message, message
    assert caught[0].filename == __file__, "the warning should point at the caller of load_dataset"


@pytest.mark.parametrize(
    ("names", "labels"),
    [
        (["cat_001", "cat_002", "dog-1", "dog-7"], ["cat", "dog"]),
        (["owl12", "owl 3", "bird.7", "bird (2)"], ["bird", "owl"]),
        (["american_bulldog_10", "Abyssinian_3"], ["Abyssinian", "american_bulldog"]),
    ],
)
def test_labels_from_filenames_reads_the_name_without_its_number(tmp_path: Path, names, labels) -> None:
    for name in names:
        _jpeg(tmp_path / "flat" / f"{name}.jpg")
    with pytest.warns(UserWarning):
        assert load_dataset(tmp_path / "flat", labels_from_filenames=True).classes == labels


def test_labels_from_filenames_refusals(tmp_path: Path) -> None:
    for name in ("cat_1", "holiday", "2024"):
        _jpeg(tmp_path / "flat" / f"{name}.jpg")
    with pytest.raises(DataError, match=r"cannot read a label from 2 file name\(s\) \(2024\.jpg, holiday\.jpg\)"):
        load_dataset(tmp_path / "flat", labels_from_filenames=True)
    folders = _folder(tmp_path / "folders", {"cat": 2, "dog": 2})
    with pytest.raises(DataError, match=r"has folders of photos \(cat, dog\).*only in a flat folder"):
        load_dataset(folders, labels_from_filenames=True)
    csv = tmp_path / "labels.csv"
    csv.write_text(f"{folders / 'cat' / '0.jpg'},cat\n{folders / 'dog' / '0.jpg'},dog\n")
    with pytest.raises(DataError, match=r"is a file"):
        load_dataset(csv, labels_from_filenames=True)
    with pytest.raises(DataError, match=r"only the class 'cat'"), pytest.warns(UserWarning, match=r"'cat' \(3 photos"):
        load_dataset(_one_label(tmp_path / "one"), labels_from_filenames=True)
    oxford = _oxford(tmp_path / "oxford")  # an Oxford root keeps its own labels (they are its file names)
    assert load_dataset(oxford, labels_from_filenames=True).kind == "oxford-pets"


def _one_label(root: Path) -> Path:
    for i in range(3):
        _jpeg(root / f"cat_{i}.jpg")
    return root


@pytest.mark.slow
def test_train_refuses_a_flat_folder_and_the_flag_reaches_the_library(tmp_path: Path) -> None:
    """``headstart train`` on a flat folder: one line saying how to lay it out, exit 2, before any model is built;
    ``--labels-from-filenames`` is passed on (here to a folder whose names carry no label: the library's refusal)."""
    import subprocess
    import sys

    root = _camera_folder(tmp_path / "camera")
    env = {**__import__("os").environ, "HEADSTART_CACHE_DIR": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "headstart", "train", str(root), "--out", str(tmp_path / "m.safetensors")]
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 2 and "no class folder" in run.stderr and "--labels-from-filenames" in run.stderr, run
    assert "Traceback" not in run.stderr and not (tmp_path / "m.safetensors").exists()
    _jpeg(tmp_path / "unnamed" / "holiday.jpg")
    _jpeg(tmp_path / "unnamed" / "beach.jpg")
    for command in (["train", "--out", str(tmp_path / "m.safetensors")], ["extract"]):
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "headstart",
                command[0],
                str(tmp_path / "unnamed"),
                "--labels-from-filenames",
                *command[1:],
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert run.returncode == 2 and "cannot read a label from 2 file name(s)" in run.stderr, (command, run)
