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


def test_validation_part_is_kept_and_scored_by_a_probe_that_did_not_see_it(fitted) -> None:
    v = fitted.validation_
    assert len(v["paths"]) == len(v["labels"]) == len(v["hashes"]) == fitted.report_["n_val"] == len(v["proba"])
    assert fitted.report_["n_train"] + fitted.report_["n_val"] == 60
    accuracy = np.mean(fitted.classes_[v["proba"].argmax(axis=1)] == v["labels"])
    assert accuracy == fitted.report_["val_accuracy"]
    assert fitted.report_["validation"]["confusion_matrix"] and fitted.model_.metadata["metrics"]["C"] > 0


# ------------------------------------------------------------------------------------ scikit-learn's conventions
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
    finetuning = hs.ImageClassifier(method=hs.Finetune(epochs=5, lr=1e-4))
    twin = clone(finetuning)
    assert twin.method == finetuning.method and twin.method is not finetuning.method
    assert repr(finetuning) == f"ImageClassifier(method={finetuning.method!r})", "only what differs from the defaults"


def test_hyper_parameters_are_checked_when_fit_runs(three_breeds) -> None:
    clf = hs.ImageClassifier(method="nope", val_fraction=2.0)  # the constructor only stores them
    assert clf.method == "nope"
    with pytest.raises(
        ParameterError,
        match=r"The 'method' parameter of ImageClassifier must be one of 'probe', "
        r"'finetune', 'scratch' or a Finetune\. Got 'nope' instead\.",
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
    with pytest.raises(ParameterError, match="'checkpoint_dir' parameter"):
        hs.ImageClassifier(method="finetune", resume=True).fit(three_breeds)


# ----------------------------------------------------------------------------------------------- other inputs
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
    message = str(next(w.message for w in caught if issubclass(w.category, hs.SkippedFilesWarning)))
    assert "notes.jpg" in message and "gone.jpg" in message and paths[0].name not in message

    with pytest.raises(hs.DataError, match="notes.jpg") as refused:
        clf.predict([paths[0], text])
    assert "model_.predict" in str(refused.value), "says how to predict the rest"
    kept = clf.model_.predict([paths[0], text], top_k=1)
    assert [p.path for p in kept.predictions] == [paths[0]] and [u.path for u in kept.unusable] == [text]


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
def test_a_finetune_as_the_method_fine_tunes_and_writes_nothing(three_breeds, tmp_path: Path) -> None:
    paths, labels = three_breeds
    folder = tmp_path / "empty"
    folder.mkdir()
    before = os.getcwd()
    os.chdir(folder)
    try:
        ft = hs.ImageClassifier(method=hs.Finetune(epochs=1, batch_size=4, patience=0)).fit((paths, labels))
    finally:
        os.chdir(before)
    assert contents(folder) == [], "no checkpoint without a checkpoint_dir"
    assert ft.finetune_.epochs == 1 and ft.finetune_.augment == "light", "the rest chosen by the data size"
    assert [r["epoch"] for r in ft.report_["history"]] == [0, 1] and ft.report_["epochs_run"] == 1
    assert ft.model_.metadata["method"] == "finetune"
    # validation kept a trained epoch: the refit trunk, with its own identity; kept epoch 0: the probe, on the
    # pretrained trunk (its cached features)
    assert ft.spec_.weights_id.startswith("trunk-sha256:") == (ft.report_["best_epoch"] > 0)
    assert ft.report_["refit"]["epochs"] == ft.report_["best_epoch"] and ft.report_["refit"]["photos"] == 15
    assert ft.report_["best_epoch"] in (0, 1) and 0 <= ft.report_["probe_val_accuracy"] <= 1
    proba = ft.predict_proba(paths[:3])
    assert proba.shape == (3, 3) and list(ft.predict(paths[:3])) == list(ft.classes_[proba.argmax(axis=1)])

    saved = ft.save(tmp_path / "ft.safetensors")
    again = hs.load(saved)
    assert again.get_params()["method"] == "finetune" and again.get_params()["finetune"] == {
        "epochs": 1,
        "batch_size": 4,
        "patience": 0,
    }
    np.testing.assert_allclose(again.predict_proba(paths[:3]), proba, rtol=1e-4, atol=1e-5)


def test_sklearn_sees_the_photos_as_strings_and_the_labels_as_optional() -> None:
    from sklearn.utils import get_tags

    tags = get_tags(hs.ImageClassifier())
    assert tags.estimator_type == "classifier" and tags.target_tags.required is False
    assert tags.input_tags.two_d_array is False and tags.input_tags.string is True


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
