"""train / evaluate / Classifier on the bundled photos: the model file, the run folder, broken files, class names.

Real backbone (offline lite0 weights), real photos. The run folder and model file are those of the session's
sample model (``conftest.sample_model``, written by ``train``); tests about fitting itself use the estimator.
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import shared_data
from PIL import Image, ImageDraw

from headstart._validation import ParameterError
from headstart.data import scan
from headstart.errors import DataError
from headstart.features import FeatureCache, extract_features
from headstart.models.classifier import Classifier
from headstart.models.estimator import ImageClassifier, load
from headstart.workflows.evaluation import evaluate
from headstart.workflows.training import SkippedFilesWarning, default_run_dir, write_run_folder

BOMB_LIMIT = 50_000_000  # the 12000×12000 PNG below has 144,000,000 pixels
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def photos(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.jpg"))


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert min(img.size) >= 100, img.size


# ------------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def trained(sample_model: Path):
    """The session's probe on sample/train (60 photos, 12 breeds), as ``train`` left it: model file and run folder."""
    run_dir = default_run_dir(sample_model)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return SimpleNamespace(
        model_path=sample_model, run_dir=run_dir, metrics=metrics, model=Classifier.load(sample_model)
    )


@pytest.fixture(scope="module")
def baseline(trained, sample: Path):
    """The trained model's evaluation on the untouched sample/test."""
    return evaluate(trained.model_path, sample / "test")


def add_broken_files(folder: Path, sources: list[Path]) -> tuple[set[Path], set[Path]]:
    """Put the usual surprises into one class folder; returns (unusable, usable) added files."""
    zero = folder / "zero_bytes.jpg"
    zero.write_bytes(b"")
    truncated = folder / "half_copied.jpg"
    data = sources[0].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    text = folder / "notes.jpg"
    text.write_text("this is a text file, not a photo\n")
    bomb = folder / "bomb.png"
    Image.new("1", (12000, 12000)).save(bomb, "PNG")  # tiny on disk, 144 Mpx when decoded

    png_as_jpg = folder / "really_a_png.jpg"
    with Image.open(sources[-1]) as img:
        img.convert("RGB").resize((200, 160)).save(png_as_jpg, "PNG")
    cmyk = folder / "print_shop_cmyk.jpg"
    with Image.open(sources[-1]) as img:
        img.convert("CMYK").save(cmyk, "JPEG", quality=90)
    with Image.open(cmyk) as check:
        assert check.mode == "CMYK"
    return {zero, truncated, text, bomb}, {png_as_jpg, cmyk}


@pytest.fixture(scope="module")
def broken(sample: Path, tmp_path_factory: pytest.TempPathFactory):
    """Copies of sample/train and sample/test whose beagle folders hold 4 unusable and 2 odd-but-usable files."""
    root = tmp_path_factory.mktemp("broken")
    out = {}
    for part in ("train", "test"):
        shutil.copytree(sample / part, root / part)
        folder = root / part / "beagle"
        unusable, usable = add_broken_files(folder, photos(folder))
        out[part] = (root / part, unusable, usable)
    return out


# --------------------------------------------------------------------------------------------------- training
@pytest.mark.slow
def test_training_writes_the_model_file_and_a_run_folder(trained) -> None:
    assert trained.model_path.is_file()
    assert trained.run_dir.is_dir()
    assert trained.run_dir == trained.model_path.with_name("pets-run")

    config = json.loads((trained.run_dir / "config.json").read_text())
    assert config["backbone"] == config["backbone_chosen"] == "tf_efficientnet_lite0"
    assert config["method"] == "probe"
    assert Path(config["out"]) == trained.model_path

    metrics = json.loads((trained.run_dir / "metrics.json").read_text())
    for key in ("val_accuracy", "val_top5_accuracy", "n_images", "n_usable", "n_val", "n_classes", "skipped"):
        assert key in metrics, key
    assert metrics["n_images"] == metrics["n_usable"] == 60
    assert metrics["n_classes"] == 12
    assert metrics["skipped"] == []
    assert 0.0 <= metrics["val_accuracy"] <= metrics["val_top5_accuracy"] <= 1.0
    assert metrics["n_train"] + metrics["n_val"] == 60 and metrics["n_val"] >= 12
    assert metrics["val_accuracy"] == trained.metrics["val_accuracy"]

    assert_png(trained.run_dir / "confusion_matrix.png")
    assert_png(trained.run_dir / "misclassified.png")
    assert_png(trained.run_dir / "reliability.png")
    assert 0 <= metrics["val_ece"] <= 1 and metrics["calibration"]["bins"] == 15 and metrics["val_nll"] > 0
    assert metrics["refit_on_all"] and config["refit"] == {
        "on_all_photos": True,
        "photos": 60,
        "what": "the probe, fitted again on all 60 photos (C and the temperature from its cross-validation)",
    }
    newest = max(p.stat().st_mtime_ns for p in trained.run_dir.iterdir())
    assert trained.model_path.stat().st_mtime_ns >= newest, "the model file is written last"
    assert not [p for p in trained.model_path.parent.iterdir() if p.name.endswith(".tmp")], "no temporaries left"


@pytest.mark.slow
def test_held_out_photos_are_mostly_right(baseline) -> None:
    assert baseline.n_images == 24
    assert baseline.skipped == []
    assert baseline.unknown_labels == {}
    assert baseline.accuracy >= 0.75, baseline.accuracy
    assert baseline.top5_accuracy >= 0.95, baseline.top5_accuracy


@pytest.mark.slow
def test_evaluate_writes_its_report_and_pictures(trained, sample: Path, tmp_path: Path, baseline) -> None:
    report = evaluate(trained.model_path, sample / "test", out_dir=tmp_path / "eval")
    assert json.loads((tmp_path / "eval" / "evaluation.json").read_text())["accuracy"] == baseline.accuracy
    assert sorted(Path(p).name for p in report.pictures) == [
        "confusion_matrix.png",
        "misclassified.png",
        "reliability.png",
    ]
    for picture in report.pictures:
        assert_png(Path(picture))
    saved = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert 0 <= saved["ece"] <= 1 and saved["nll"] > 0 and 0 <= saved["brier"] <= 2
    assert saved["calibration"]["bins"] == 15 and sum(b["count"] for b in saved["calibration"]["reliability"]) == 24
    assert report.calibration["accuracy"] == pytest.approx(report.accuracy)


@pytest.mark.slow
def test_refitting_on_the_same_photos_computes_nothing_and_gives_the_same_head(trained, sample: Path) -> None:
    again = ImageClassifier(backbone="tf_efficientnet_lite0").fit(sample / "train")  # (as `trained` was)
    assert again.report_["features"]["computed"] == 0
    assert again.report_["features"]["cached"] == 60
    assert again.model_.classes == trained.model.classes
    np.testing.assert_array_equal(again.model_.head_weight, trained.model.head_weight)
    np.testing.assert_array_equal(again.model_.head_bias, trained.model.head_bias)
    assert again.report_["val_accuracy"] == trained.metrics["val_accuracy"]
    assert again.report_["validation"] == trained.metrics["validation"], "train's metrics.json is the fit's report"


@pytest.mark.slow
def test_the_run_folder_needs_a_fit_of_this_session(trained, tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="fitted in this session"):
        write_run_folder(load(trained.model_path), tmp_path / "run")


# ------------------------------------------------------------------------------------------------ the model file
@pytest.mark.slow
def test_model_file_is_plain_safetensors_with_its_description(trained) -> None:
    from safetensors import safe_open

    with safe_open(str(trained.model_path), framework="numpy") as handle:
        names = set(handle.keys())
        document = json.loads(handle.metadata()["headstart"])
        head = handle.get_tensor("head.weight")
    assert {"head.weight", "head.bias"} <= names
    assert any(n.startswith("backbone.") for n in names)
    assert head.shape == (12, 1280)
    assert document["backbone"]["name"] == "tf_efficientnet_lite0"
    assert document["backbone"]["num_features"] == 1280
    assert document["classes"] == trained.model.classes
    assert document["metrics"]["val_accuracy"] == trained.metrics["val_accuracy"]
    assert isinstance(document["headstart_version"], str) and document["headstart_version"]


@pytest.mark.slow
def test_model_file_predicts_the_same_without_cache_package_or_network(
    trained, sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    test_photos = photos(sample / "test")
    # "before": features from the installed weights package, in the session's cache
    extract_features(test_photos, "tf_efficientnet_lite0")
    before = Classifier.load(trained.model_path).predict(test_photos, top_k=3)

    # "after": an empty cache, the weights package gone, no network: only the model file is left
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    monkeypatch.setenv("HEADSTART_CACHE_DIR", str(empty))
    monkeypatch.setattr("headstart.features.backbones.OFFLINE_PACKAGES", {})

    def no_network(*args, **kwargs):
        raise AssertionError(f"a model file must load without a network (tried {args})")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)

    after = Classifier.load(trained.model_path).predict(test_photos, top_k=3)
    views = 2 if Classifier.load(trained.model_path).spec.flip_average else 1  # (+ single-view rows, same pass)
    assert FeatureCache(empty / "features.sqlite").count() == 24 * views  # computed again, from the file's weights
    assert [p.path for p in after.predictions] == [p.path for p in before.predictions] == test_photos
    assert [p.labels[0] for p in after.predictions] == [p.labels[0] for p in before.predictions]
    np.testing.assert_allclose(
        [p.probabilities for p in after.predictions], [p.probabilities for p in before.predictions], atol=2e-3
    )


# --------------------------------------------------------------------------------------------------- broken files
def test_scan_names_exactly_the_unusable_files(broken) -> None:
    for folder, unusable, _usable in broken.values():
        report = scan(folder, max_pixels=BOMB_LIMIT)
        assert {u.path.resolve() for u in report.unusable} == {p.resolve() for p in unusable}
        assert report.n_files == len(photos(folder)) + 1  # the .jpg files plus bomb.png
        assert all(u.reason for u in report.unusable)


def reasons_by_name(skipped: list[dict[str, str]]) -> dict[str, str]:
    return {Path(s["path"]).name: s["reason"] for s in skipped}


def assert_reasons_make_sense(reasons: dict[str, str]) -> None:
    assert "empty" in reasons["zero_bytes.jpg"]
    assert "truncated" in reasons["half_copied.jpg"]
    assert "not an image" in reasons["notes.jpg"]
    assert "decompression bomb" in reasons["bomb.png"] and "144,000,000" in reasons["bomb.png"]


@pytest.mark.slow
def test_fitting_skips_unusable_files_names_them_and_uses_the_rest(broken, tmp_path: Path) -> None:
    folder, unusable, usable = broken["train"]
    with pytest.warns(SkippedFilesWarning) as caught:
        clf = ImageClassifier().fit(folder, max_pixels=BOMB_LIMIT)

    m = clf.report_
    assert {u.path.resolve() for u in clf.unusable_} == {p.resolve() for p in unusable}
    assert {Path(s["path"]).resolve() for s in m["skipped"]} == {p.resolve() for p in unusable}
    assert_reasons_make_sense(reasons_by_name(m["skipped"]))
    assert m["n_images"] == 60 + 6
    assert m["n_usable"] == 60 + 2  # the PNG named .jpg and the CMYK JPEG are photos like the others
    written = write_run_folder(clf, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["skipped"] == m["skipped"]
    assert sorted(p.name for p in written) == [
        "backbone_selection.json",
        "config.json",
        "confusion_matrix.png",
        "metrics.json",
        "misclassified.png",
        "reliability.png",
    ]

    messages = [str(w.message) for w in caught if issubclass(w.category, SkippedFilesWarning)]
    assert len(messages) == 1
    for path in unusable:
        assert path.name in messages[0]
    for path in usable:
        assert path.name not in messages[0]


@pytest.mark.slow
def test_evaluate_skips_unusable_files_and_counts_only_usable_ones(trained, broken) -> None:
    folder, unusable, _usable = broken["test"]
    report = evaluate(trained.model_path, folder, max_pixels=BOMB_LIMIT)
    assert {Path(s["path"]).resolve() for s in report.skipped} == {p.resolve() for p in unusable}
    assert_reasons_make_sense(reasons_by_name(report.skipped))
    assert report.n_images == 24 + 2
    assert report.details["per_class"]["beagle"]["support"] == 2 + 2
    assert report.unknown_labels == {}


# --------------------------------------------------------------------------------------------- class names
@pytest.mark.slow
def test_evaluate_matches_classes_by_name_and_leaves_unknown_ones_out(
    trained, sample: Path, tmp_path: Path, baseline
) -> None:
    data = tmp_path / "renamed"
    shutil.copytree(sample / "test", data)
    (data / "saint_bernard").rename(data / "Saint Bernard")
    (data / "samoyed").rename(data / "Samoyed")
    (data / "Bengal").rename(data / "bengal")
    (data / "boxer").rename(data / "BOXER")
    hamsters = data / "hamster"
    hamsters.mkdir()
    for i, photo in enumerate(photos(sample / "train" / "pug")[:3]):
        shutil.copy(photo, hamsters / f"hamster_{i}.jpg")

    report = evaluate(trained.model_path, data)
    assert report.unknown_labels == {"hamster": 3}
    assert report.n_images == 24
    assert report.accuracy == baseline.accuracy
    assert report.details["confusion_matrix"] == baseline.details["confusion_matrix"]
    assert report.details["per_class"]["saint_bernard"]["support"] == 2
    assert report.details["per_class"]["Bengal"]["support"] == 2


@pytest.mark.slow
def test_evaluate_refuses_data_without_any_class_of_the_model(trained, sample: Path, tmp_path: Path) -> None:
    data = tmp_path / "other"
    for label, source in (("hamster", "pug"), ("goldfish", "boxer")):
        (data / label).mkdir(parents=True)
        shutil.copy(photos(sample / "test" / source)[0], data / label / "a.jpg")
    with pytest.raises(DataError, match="None of the data's labels"):
        evaluate(trained.model_path, data)


# ---------------------------------------------------------------------------------------------------- predict
@pytest.mark.slow
def test_predict_a_folder_and_single_files(trained, sample: Path, baseline) -> None:
    model = Classifier.load(trained.model_path)
    everything = model.predict([sample / "test"], top_k=3)
    assert [p.path for p in everything.predictions] == photos(sample / "test")
    assert everything.unusable == []
    for p in everything.predictions:
        assert len(p.labels) == 3 and len(set(p.labels)) == 3
        assert set(p.labels) <= set(model.classes)
        assert p.probabilities == sorted(p.probabilities, reverse=True)
        assert 0.0 < sum(p.probabilities) <= 1.0 + 1e-6
    right = [p.labels[0] == p.path.parent.name for p in everything.predictions]
    assert np.mean(right) == pytest.approx(baseline.accuracy)  # predict and evaluate agree

    two = [photos(sample / "test" / "pug")[1], photos(sample / "test" / "Abyssinian")[0]]
    single = model.predict(two, top_k=3)
    assert [p.path for p in single.predictions] == two  # in the order given
    by_path = {p.path: p for p in everything.predictions}
    for p in single.predictions:
        assert p.labels == by_path[p.path].labels
        np.testing.assert_allclose(p.probabilities, by_path[p.path].probabilities, rtol=1e-6)
    assert single.to_list()[0]["path"] == str(two[0])


@pytest.mark.slow
def test_top_k_bounds(trained, sample: Path) -> None:
    model = Classifier.load(trained.model_path)
    photo = photos(sample / "test")[:1]
    (one,) = model.predict(photo, top_k=1).predictions
    assert len(one.labels) == 1
    (every,) = model.predict(photo, top_k=100).predictions  # more than there are classes: all of them
    assert sorted(every.labels) == sorted(model.classes)
    assert sum(every.probabilities) == pytest.approx(1.0, abs=1e-5)
    assert every.labels[0] == one.labels[0]
    for bad in (0, -1):
        with pytest.raises(ValueError, match="top_k"):
            model.predict(photo, top_k=bad)


@pytest.mark.slow
def test_predict_reports_an_unusable_file_and_predicts_the_rest(trained, sample: Path, tmp_path: Path) -> None:
    text = tmp_path / "not_a_photo.jpg"
    text.write_text("hello\n")
    good = photos(sample / "test")[:2]
    result = Classifier.load(trained.model_path).predict([good[0], text, good[1]], top_k=2)
    assert [p.path for p in result.predictions] == good
    assert [u.path for u in result.unusable] == [text]
    assert "not an image" in result.unusable[0].reason


# ------------------------------------------------------------------------------------------- the real data set
@pytest.mark.slow
def test_probe_on_pets_dev(tmp_path: Path) -> None:
    data = shared_data("pets-dev")
    m = ImageClassifier().fit(data).report_
    assert m["n_classes"] == 37
    assert m["n_usable"] == 259 and m["skipped"] == []
    assert m["val_accuracy"] >= 0.7, f"{m['val_accuracy']:.3f} on {m['n_val']} photos"


@pytest.mark.slow
def test_saved_model_averages_over_the_mirror_image_unless_told_not_to(sample: Path, tmp_path: Path) -> None:
    """Default models see a photo and its mirror image alike; --no-flip-average models are single-view."""
    photo = sorted((sample / "test" / "beagle").glob("*.jpg"))[0]
    mirrored = tmp_path / "mirrored.png"
    with Image.open(photo) as img:
        img.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored)
    original_copy = tmp_path / "original.png"
    with Image.open(photo) as img:
        img.convert("RGB").save(original_copy)
    cache = FeatureCache(tmp_path / "c.sqlite")
    model = ImageClassifier(flip_average=True).fit(sample / "train", cache=cache).model_
    assert model.spec.flip_average

    def cosine(m: Classifier) -> float:  # (not exactly 1: an odd crop margin shifts the mirrored crop by a pixel)
        a, b = m.features([original_copy, mirrored], cache=cache, precision="fp32").features
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    single_model = ImageClassifier(flip_average=False).fit(sample / "train", cache=cache).model_
    assert not single_model.spec.flip_average and single_model.spec.fingerprint != model.spec.fingerprint
    assert cosine(model) > 0.985 and cosine(model) > cosine(single_model) + 0.01


@pytest.mark.slow
def test_mirror_averaging_is_chosen_off_where_the_mirror_image_is_another_class(tmp_path: Path) -> None:
    """Arrows pointing left against arrows pointing right: averaging with the mirror image makes them identical."""
    rng = np.random.default_rng(0)
    for direction in ("left", "right"):
        (tmp_path / "data" / direction).mkdir(parents=True)
        for i in range(20):
            img = Image.new("RGB", (160, 160), tuple(int(v) for v in rng.integers(150, 256, 3)))
            draw = ImageDraw.Draw(img)
            cx, y, size = int(rng.integers(50, 111)), int(rng.integers(40, 121)), int(rng.integers(16, 25))
            sign = -1 if direction == "left" else 1  # the two classes are exact mirror images of each other
            tip, base, tail = cx + sign * 3 * size // 2, cx + sign * size // 2, cx - sign * 3 * size // 2
            head = [(tip, y), (base, y - size), (base, y + size)]
            shaft = [(min(base, tail), y - size // 3), (max(base, tail), y + size // 3)]
            colour = tuple(int(v) for v in rng.integers(0, 100, 3))
            draw.polygon(head, fill=colour)
            draw.rectangle(shaft, fill=colour)
            img.save(tmp_path / "data" / direction / f"{i}.png")
    clf = ImageClassifier(backbone="tf_efficientnet_lite0", flip_average="auto").fit(  # CV decides the mirror
        tmp_path / "data", cache=tmp_path / "c.sqlite"
    )
    cv = clf.report_["flip_average_cv"]
    assert clf.report_["flip_average"] is False, cv
    assert cv["off"] > cv["on"] + 2 / 40, (
        cv
    )  # by more than two of the 40 photos (torch: 0.77 vs 0.59; OpenVINO 0.71 vs 0.62)
    assert not clf.spec_.flip_average and not clf.model_.spec.flip_average
    assert clf.report_["features"]["computed"] == 40  # one pass gave both feature sets
    written = {p.name for p in tmp_path.iterdir()} - {"data"}
    assert {"c.sqlite", "memo"} <= written and all(n.startswith(("c.sqlite", "memo")) for n in written), written
