"""``headstart.ImageClassifier``: the issue's snippet on the bundled sample, in a fresh working folder.

fit writes nothing there (only the session's feature cache, elsewhere); predict, predict_proba, score and
save/load agree; scikit-learn's clone/get_params/set_params/check_is_fitted work; photos given as a folder, a
Dataset or (paths, labels); unusable photos; a Finetune as the method. Real weights, real photos.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

import headstart as hs
from headstart._validation import ParameterError

OLD = Path(__file__).parent / "data" / "old-format-v1.safetensors"


def photos(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.jpg"))


def contents(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory):
    """A fresh, empty working folder, made the current one for this module's tests."""
    folder = tmp_path_factory.mktemp("work")
    before = os.getcwd()
    os.chdir(folder)
    yield folder
    os.chdir(before)


@pytest.fixture(scope="module")
def fitted(sample: Path, workdir: Path):
    clf = hs.ImageClassifier(backbone="tf_efficientnet_lite0", method="probe")  # hyper-parameters only
    assert clf.fit(sample / "train") is clf
    assert contents(workdir) == [], "fit writes only the feature cache, never in the working folder"
    return clf


@pytest.fixture(scope="module")
def three_breeds(sample: Path) -> tuple[list[Path], list[str]]:
    """(paths, labels) of 3 breeds × 5 photos of sample/train."""
    paths = [p for breed in ("Persian", "pug", "samoyed") for p in photos(sample / "train" / breed)]
    return paths, [p.parent.name for p in paths]


# ------------------------------------------------------------------------------------------- the snippet
@pytest.mark.slow
def test_the_snippet_fits_predicts_scores_saves_and_loads(fitted, sample: Path, workdir: Path) -> None:
    clf = fitted
    test = photos(sample / "test")
    labels = np.array([p.parent.name for p in test])
    assert list(clf.classes_) == sorted(p.name for p in (sample / "train").iterdir())
    assert clf.spec_.name == "tf_efficientnet_lite0" and clf.unusable_ == []
    assert clf.report_["n_usable"] == 60 and 0 <= clf.report_["val_accuracy"] <= 1

    two = clf.predict([test[0], test[5]])
    assert isinstance(two, np.ndarray) and two.shape == (2,) and set(two) <= set(clf.classes_)
    proba = clf.predict_proba(test)
    assert proba.shape == (24, 12)
    np.testing.assert_allclose(proba.sum(axis=1), 1, atol=1e-5)
    predicted = clf.predict(test)
    assert list(predicted) == list(clf.classes_[proba.argmax(axis=1)]), "columns follow classes_"
    np.testing.assert_array_equal(predicted[[0, 5]], two)
    score = clf.score(sample / "test")
    assert score == np.mean(predicted == labels)
    assert score >= 0.75, score
    assert (
        clf.score(test, labels)
        == score
        == clf.score((test, list(labels)))
        == clf.score(hs.load_dataset(sample / "test"))
    )
    assert contents(workdir) == [], "predicting writes nothing either"

    path = clf.save("pets.safetensors")
    assert contents(workdir) == ["pets.safetensors"]
    loaded = hs.load(path)
    assert isinstance(loaded, hs.ImageClassifier)
    np.testing.assert_array_equal(loaded.classes_, clf.classes_)
    np.testing.assert_array_equal(loaded.predict(test), predicted)
    np.testing.assert_allclose(loaded.predict_proba(test), proba, rtol=1e-5, atol=1e-6)
    assert loaded.score(sample / "test") == score
    assert loaded.get_params() == clf.get_params()
    assert loaded.report_["val_accuracy"] == clf.report_["val_accuracy"] and loaded.validation_ is None
    assert isinstance(loaded.model_, hs.Classifier) and loaded.spec_.fingerprint == clf.spec_.fingerprint


@pytest.mark.slow
def test_validation_part_is_kept_and_scored_by_a_probe_that_did_not_see_it(fitted) -> None:
    v = fitted.validation_
    assert len(v["paths"]) == len(v["labels"]) == len(v["hashes"]) == fitted.report_["n_val"] == len(v["proba"])
    assert fitted.report_["n_train"] + fitted.report_["n_val"] == 60
    accuracy = np.mean(fitted.classes_[v["proba"].argmax(axis=1)] == v["labels"])
    assert accuracy == fitted.report_["val_accuracy"]
    assert fitted.report_["validation"]["confusion_matrix"] and fitted.model_.metadata["metrics"]["C"] > 0


# ------------------------------------------------------------------------------------ scikit-learn's conventions
@pytest.mark.slow
def test_clone_get_params_set_params_and_not_fitted(fitted, sample: Path) -> None:
    from sklearn.base import clone, is_classifier
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    params = fitted.get_params()
    assert params["backbone"] == "tf_efficientnet_lite0" and params["method"] == "probe" and params["seed"] == 0
    copy = clone(fitted)
    assert type(copy) is hs.ImageClassifier and copy.get_params() == params
    assert not hasattr(copy, "model_") and not hasattr(copy, "classes_")
    assert is_classifier(copy)
    check_is_fitted(fitted)
    with pytest.raises(NotFittedError, match="not fitted yet"):
        check_is_fitted(copy)
    for call in (
        lambda: copy.predict([sample / "test"]),
        lambda: copy.predict_proba([sample / "test"]),
        lambda: copy.save("never.safetensors"),
    ):
        with pytest.raises(NotFittedError, match="This ImageClassifier instance is not fitted yet"):
            call()
    assert copy.set_params(seed=3, refit=False) is copy and copy.get_params()["seed"] == 3
    assert fitted.get_params()["seed"] == 0, "the clone is independent"
    with pytest.raises(ValueError, match="Invalid parameter 'sed'"):
        copy.set_params(sed=1)
    finetuning = hs.ImageClassifier(method="finetune", finetune=hs.Finetune(epochs=5, lr=1e-4))
    twin = clone(finetuning)
    assert twin.finetune == finetuning.finetune and twin.finetune is not finetuning.finetune
    assert repr(finetuning) == f"ImageClassifier(method='finetune', finetune={finetuning.finetune!r})", (
        "only what differs from the defaults"
    )


@pytest.mark.slow
def test_hyper_parameters_are_checked_when_fit_runs(three_breeds) -> None:
    clf = hs.ImageClassifier(method="nope", val_fraction=2.0)  # the constructor only stores them
    assert clf.method == "nope"
    with pytest.raises(
        ParameterError,
        match=r"The 'method' parameter of ImageClassifier must be one of 'probe', "
        r"'finetune', 'scratch'\. Got 'nope' instead\.",
    ):
        clf.fit(three_breeds)
    with pytest.raises(
        ParameterError,
        match=r"The 'val_fraction' parameter of ImageClassifier must be a float in "
        r"\(0, 1\)\. Got 2\.0 instead\.",
    ):
        clf.set_params(method="probe").fit(three_breeds)
    with pytest.raises(ParameterError, match="'finetune' parameter"):
        hs.ImageClassifier(finetune={"epochs": 2}).fit(three_breeds)  # options for a probe: a mistake
    with pytest.raises(ValueError, match="Unknown fine-tuning option"):
        hs.ImageClassifier(method="finetune", finetune={"dropout": 0.5}).fit(three_breeds)
    with pytest.raises(ParameterError, match="'checkpoint_dir' parameter of ImageClassifier.fit"):
        hs.ImageClassifier(method="finetune").fit(three_breeds, resume=True)
    with pytest.raises(ParameterError, match="'batch_size' parameter of ImageClassifier.fit must be an int"):
        hs.ImageClassifier().fit(three_breeds, batch_size=0)


# ----------------------------------------------------------------------------------------------- other inputs
@pytest.mark.slow
def test_paths_and_labels_as_a_pair_or_as_x_and_y(three_breeds, workdir: Path) -> None:
    paths, labels = three_breeds
    pair = hs.ImageClassifier().fit((paths, labels))
    assert list(pair.classes_) == ["Persian", "pug", "samoyed"] and pair.report_["n_usable"] == 15
    separate = hs.ImageClassifier().fit([str(p) for p in paths], np.array(labels))
    np.testing.assert_array_equal(separate.model_.head_weight, pair.model_.head_weight)
    assert pair.score((paths, labels)) == np.mean(pair.predict(paths) == np.array(labels))
    with pytest.raises(ValueError, match="inconsistent numbers of samples: 15 paths and 14 labels"):
        hs.ImageClassifier().fit(paths, labels[:-1])
    with pytest.raises(ValueError, match="needs labelled photos"):
        hs.ImageClassifier().fit(paths)
    with pytest.raises(hs.DataError, match="at least 2 classes"):
        hs.ImageClassifier().fit(paths[:5], labels[:5])
    assert contents(workdir) in ([], ["pets.safetensors"])


@pytest.mark.slow
def test_unusable_photos_are_skipped_in_fit_and_refused_by_predict(three_breeds, tmp_path: Path) -> None:
    paths, labels = three_breeds
    text = tmp_path / "notes.jpg"
    text.write_text("this is a text file, not a photo\n")
    missing = tmp_path / "gone.jpg"
    with pytest.warns(hs.SkippedFilesWarning) as caught:
        clf = hs.ImageClassifier().fit([*paths, text, missing], [*labels, "pug", "pug"])
    assert [u.path for u in clf.unusable_] == [text, missing]
    assert "not an image" in clf.unusable_[0].reason
    assert [s["path"] for s in clf.report_["skipped"]] == [str(text), str(missing)]
    assert clf.report_["n_images"] == 17 and clf.report_["n_usable"] == 15
    skipped = next(w for w in caught if issubclass(w.category, hs.SkippedFilesWarning))
    assert skipped.filename == __file__, "the warning points at the line that called fit"
    message = str(skipped.message)
    assert "notes.jpg" in message and "gone.jpg" in message and paths[0].name not in message

    with pytest.raises(hs.DataError, match="notes.jpg") as refused:
        clf.predict([paths[0], text])
    assert "model_.predict" in str(refused.value), "says how to predict the rest"
    kept = clf.model_.predict([paths[0], text], top_k=1)
    assert [p.path for p in kept.predictions] == [paths[0]] and [u.path for u in kept.unusable] == [text]


@pytest.mark.slow
def test_a_model_file_from_before_the_estimator_loads_as_one(sample: Path) -> None:
    import json

    expected = json.loads(OLD.with_suffix(".json").read_text())
    clf = hs.load(OLD)
    assert list(clf.classes_) == expected["classes"] and clf.get_params()["backbone"] == "test_efficientnet"
    paths = [sample / p["path"] for p in expected["predictions"]]
    predicted = clf.set_params(precision="fp32").predict(paths)
    assert list(predicted) == [p["predictions"][0]["label"] for p in expected["predictions"]]
    top = clf.predict_proba(paths).max(axis=1)
    np.testing.assert_allclose(top, [p["predictions"][0]["probability"] for p in expected["predictions"]], atol=1e-4)


# ---------------------------------------------------------------------------------------------------- networks
@pytest.mark.slow
def test_fine_tuning_options_fine_tune_and_write_nothing(three_breeds, tmp_path: Path) -> None:
    paths, labels = three_breeds
    folder = tmp_path / "empty"
    folder.mkdir()
    before = os.getcwd()
    os.chdir(folder)
    try:
        options = hs.Finetune(epochs=1, batch_size=4, patience=0, skip_unjudged=False)
        ft = hs.ImageClassifier(method="finetune", finetune=options).fit((paths, labels))
    finally:
        os.chdir(before)
    assert contents(folder) == [], "no checkpoint without a checkpoint_dir"
    assert ft.finetune_.epochs == 1 and ft.finetune_.augment == "light", "the rest chosen by the data size"
    assert [r["epoch"] for r in ft.report_["history"]] == [0, 1] and ft.report_["epochs_run"] == 1
    assert ft.model_.metadata["method"] == "finetune"
    # validation kept a trained epoch: the refit trunk, with its own identity; kept epoch 0: the probe, on the
    # pretrained trunk (its cached features)
    assert ft.spec_.weights_id.startswith("trunk-sha256:") == (ft.report_["best_epoch"] > 0)
    trained = ft.report_["epochs_run"] if ft.report_["best_epoch"] > 0 else 0  # (as long as validation trained)
    assert ft.report_["refit"]["epochs"] == trained and ft.report_["refit"]["photos"] == 15
    assert ft.report_["best_epoch"] in (0, 1) and 0 <= ft.report_["probe_val_accuracy"] <= 1
    proba = ft.predict_proba(paths[:3])
    assert proba.shape == (3, 3) and list(ft.predict(paths[:3])) == list(ft.classes_[proba.argmax(axis=1)])

    saved = ft.save(tmp_path / "ft.safetensors")
    again = hs.load(saved)
    assert again.get_params()["method"] == "finetune" and again.get_params()["finetune"] == {
        "epochs": 1,
        "batch_size": 4,
        "patience": 0,
        "skip_unjudged": False,
    }
    np.testing.assert_allclose(again.predict_proba(paths[:3]), proba, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_sklearn_sees_the_photos_as_strings_and_the_labels_as_optional() -> None:
    from sklearn.utils import get_tags

    tags = get_tags(hs.ImageClassifier())
    assert tags.estimator_type == "classifier" and tags.target_tags.required is False
    assert tags.input_tags.two_d_array is False and tags.input_tags.string is True


@pytest.mark.slow
def test_copies_of_sample_folders_are_data_sets_too(sample: Path, tmp_path: Path, fitted) -> None:
    """A folder given to predict is every image inside it, sorted; a Dataset gives its own paths."""
    folder = tmp_path / "two"
    for breed in ("pug", "Bengal"):
        shutil.copytree(sample / "test" / breed, folder / breed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        by_folder = fitted.predict(folder)
    np.testing.assert_array_equal(by_folder, fitted.predict(photos(folder)))
    np.testing.assert_array_equal(
        fitted.predict(hs.load_dataset(folder)), fitted.predict(hs.load_dataset(folder).paths)
    )


# ------------------------------------------------------------------------- what the API takes, and where it went
@pytest.mark.slow
def test_predict_takes_pil_images_and_uint8_arrays_through_the_same_preprocessing(fitted, sample: Path) -> None:
    import glob
    import tempfile

    from PIL import Image

    test = photos(sample / "test")[:4]
    by_path = fitted.predict_proba(test)
    leftovers = set(glob.glob(f"{tempfile.gettempdir()}/headstart-images-*"))
    images = [Image.open(p) for p in test]
    np.testing.assert_allclose(fitted.predict_proba(images), by_path, atol=1e-6)
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in test]
    np.testing.assert_allclose(fitted.predict_proba(arrays[0]), by_path[:1], atol=1e-6)  # one (H, W, 3) photo
    mixed = fitted.predict([test[0], images[1], arrays[2], str(test[3])])
    assert list(mixed) == list(fitted.classes_[by_path.argmax(axis=1)])
    same_size = np.stack([arrays[0], arrays[0][:, ::-1]])  # (N, H, W, 3): N photos
    assert fitted.predict_proba(same_size).shape == (2, len(fitted.classes_))
    with pytest.raises(ValueError, match=r"uint8 arrays of shape \(height, width, 3\).*float32.*\* 255"):
        fitted.predict(arrays[0].astype(np.float32) / 255)
    with pytest.raises(hs.DataError, match=r"X\[1\] \(a 120x90 PIL image\)"):  # named as given, not as a temp file
        fitted.predict([test[0], images[1].crop((0, 0, 120, 90))], max_pixels=1000)  # (new pixels: not cached)
    assert set(glob.glob(f"{tempfile.gettempdir()}/headstart-images-*")) == leftovers, "temporary files removed"


@pytest.mark.slow
def test_how_to_run_is_not_a_hyper_parameter(three_breeds, tmp_path: Path) -> None:
    from sklearn.base import clone

    assert sorted(hs.ImageClassifier().get_params()) == [
        "backbone",
        "finetune",
        "flip_average",
        "method",
        "precision",
        "refit",
        "seed",
        "val_fraction",
        "weights",
    ]
    new = hs.ImageClassifier(backbone="tf_efficientnet_lite0").fit(three_breeds, cache=tmp_path / "c", progress=False)
    assert new.run_options_.cache == tmp_path / "c" and (tmp_path / "c" / "features.sqlite").is_file()
    assert new.report_["features"]["computed"] == 15
    with pytest.warns(FutureWarning, match=r"Pass it to fit\(\).*clf.fit\(X, cache=\.\.\.\)"):
        old = hs.ImageClassifier(backbone="tf_efficientnet_lite0", cache=tmp_path / "c")  # the 0.1 spelling
    assert "cache" not in old.get_params() and not hasattr(clone(old), "_legacy_run")
    old.fit(three_breeds)  # still uses it: every feature found in that cache
    assert old.run_options_.cache == tmp_path / "c" and old.report_["features"]["computed"] == 0
    np.testing.assert_array_equal(old.model_.head_weight, new.model_.head_weight)
    with pytest.raises(TypeError, match=r"'chache'.*hyper-parameters are backbone, .*goes to fit\(\)"):
        hs.ImageClassifier(chache=tmp_path)


@pytest.mark.slow
def test_fine_tuning_options_have_one_place_and_the_older_spellings_warn(three_breeds, tmp_path: Path) -> None:
    with pytest.warns(FutureWarning, match=r"Pass method='finetune', finetune=Finetune\(\.\.\.\) instead") as said:
        with pytest.raises(ValueError, match="needs labelled photos"):  # (warned before the data are read)
            hs.ImageClassifier(method=hs.Finetune(epochs=1)).fit([tmp_path / "a.jpg"])
    assert said[0].filename == __file__, "the warning points at the caller's line"
    with pytest.warns(FutureWarning, match=r"pass finetune=\.\.\."):
        with pytest.raises(hs.DataError):
            hs.train(tmp_path / "missing", method="finetune", finetune_options={"epochs": 1})
    with pytest.raises(TypeError, match="set them on the classifier"):
        hs.train(tmp_path / "missing", hs.ImageClassifier(), seed=3)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) 'epochs'"):
        hs.train(tmp_path / "missing", epochs=3)
    as_dict = hs.ImageClassifier(method="finetune", finetune={"epochs": 1})
    as_object = hs.ImageClassifier(method="finetune", finetune=hs.Finetune(epochs=1))
    assert as_dict._validated()[:2] == as_object._validated()[:2] == ("finetune", {"epochs": 1})


@pytest.mark.slow
def test_flip_average_none_is_the_default_as_in_the_cli() -> None:
    from headstart.models.fit_report import params_from_file, stored_params
    from headstart.models.fit_steps import flip_mode

    assert hs.ImageClassifier().flip_average is None  # `headstart train` without --flip-average passes None
    assert flip_mode(None) == flip_mode("cached") == ("cached", False)
    assert flip_mode("auto") == ("auto", True)
    names = hs.ImageClassifier._get_param_names()
    stored = stored_params(hs.ImageClassifier().get_params())
    assert params_from_file({"estimator": stored}, "x", names, ("probe",))["flip_average"] is None
    # a file from before None meant the default kept None for "auto"; "cached" was its default
    older = {**stored, "flip_average": None}
    assert params_from_file({"estimator": older}, "x", names, ("probe",))["flip_average"] == "auto"


@pytest.mark.slow
def test_a_named_backbone_is_resolved_once_from_fit_to_the_model_file(three_breeds, monkeypatch) -> None:
    """The route of a backbone (docs/ARCHITECTURE.md): fit resolves the name once into a ResolvedBackbone, and
    extraction, the trunk for the model file and the report take that object."""
    import sys

    import headstart.features
    import headstart.features.backbones as backbones

    real, calls = backbones.resolve_backbone, []
    assert headstart.features.resolve_backbone is real  # (the package's lazy name bound now, so it is restored)

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    for module in [m for name, m in sys.modules.items() if name.startswith("headstart")]:
        if vars(module).get("resolve_backbone") is real:
            monkeypatch.setattr(module, "resolve_backbone", counting)
    clf = hs.ImageClassifier(backbone="tf_efficientnet_lite0").fit(three_breeds)
    assert calls == [("tf_efficientnet_lite0", None)]
    assert clf.spec_.name == "tf_efficientnet_lite0" and clf.model_.metadata["metrics"]["backbone"] == clf.spec_.name


def test_the_top_level_api_is_lean_and_moved_names_say_where_they_live() -> None:
    assert not [n for n in hs.__all__ if n.startswith("parse_")], "CLI parsers are not the library's API"
    assert not set(hs._MOVED) & set(hs.__all__), "a name that moved to its subpackage is not exported twice"
    with pytest.warns(FutureWarning, match=r"use `from headstart.cli.training import parse_settings`"):
        assert hs.parse_settings(["head-dropout=0,0.5"]) == {"head_dropout": [0, 0.5]}
    with pytest.warns(FutureWarning, match="headstart.features import BackboneSpec"):
        from headstart.features import BackboneSpec

        assert hs.BackboneSpec is BackboneSpec
    with pytest.raises(AttributeError):
        hs.no_such_name  # noqa: B018


def test_progress_shows_in_a_terminal_by_default(tmp_path: Path) -> None:
    """``progress=None`` (the run options' default) means: bars when stderr is a terminal; a real pty here."""
    import os
    import sys

    from headstart._console import wants_progress

    assert wants_progress(None) is False, "pytest captures stderr: not a terminal"
    assert wants_progress(True) is True and wants_progress(False) is False
    leader, follower = os.openpty()
    saved = sys.stderr
    try:
        with open(follower, "w") as terminal:
            sys.stderr = terminal
            assert wants_progress(None) is True
            assert wants_progress(False) is False
    finally:
        sys.stderr = saved
        os.close(leader)
