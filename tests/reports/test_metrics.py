"""classification_metrics (plain numpy) against scikit-learn's definitions; score_photos, the one scoring of
labelled photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, top_k_accuracy_score

from headstart.data.datasets import Dataset, Sample
from headstart.data.scanning import UnusableFile
from headstart.errors import DataError
from headstart.reports.metrics import classification_metrics, match_labels, score_photos


@pytest.mark.parametrize("n_classes", [2, 5, 37])
def test_metrics_match_scikit_learn(n_classes: int) -> None:
    rng = np.random.default_rng(n_classes)
    classes = [f"class {i}" for i in range(n_classes)]
    y = rng.integers(0, n_classes, size=200)
    y[:3] = 0  # every run has a class that is present but (below) never predicted, and vice versa
    proba = rng.dirichlet(np.ones(n_classes), size=200)
    proba[:, 0] = 0.0
    proba /= proba.sum(axis=1, keepdims=True)
    m = classification_metrics([classes[i] for i in y], proba, classes)

    pred = proba.argmax(axis=1)
    labels = list(range(n_classes))
    precision, recall, _, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    assert m["accuracy"] == pytest.approx(np.mean(pred == y))
    k = min(5, n_classes)
    expected_topk = top_k_accuracy_score(y, proba, k=k, labels=labels) if n_classes > 5 else 1.0
    assert m["top5_accuracy"] == pytest.approx(expected_topk)
    assert m["confusion_matrix"] == confusion_matrix(y, pred, labels=labels).tolist()
    for i, name in enumerate(classes):
        assert m["per_class"][name] == {
            "precision": round(float(precision[i]), 4),
            "recall": round(float(recall[i]), 4),
            "support": int(support[i]),
        }
    assert m["n_images"] == 200 and m["predicted"] == [classes[i] for i in pred]


def test_labels_match_classes_by_name_ignoring_case_spaces_and_separators() -> None:
    mapping = match_labels(
        ["Basset Hound", "basset_hound", "Bengal", "beagle", "cheetah"], ["basset_hound", "Bengal", "Beagle"]
    )
    assert mapping == {
        "Basset Hound": "basset_hound",
        "basset_hound": "basset_hound",
        "Bengal": "Bengal",
        "beagle": "Beagle",
        "cheetah": None,
    }


def _data(labels: list[str]) -> Dataset:
    samples = [Sample(Path(f"/photos/{i}.jpg"), label) for i, label in enumerate(labels)]
    return Dataset(samples, sorted(set(labels)), Path("/photos"), "folder")


def test_score_photos_scores_only_known_usable_photos_and_says_what_it_left_out() -> None:
    data = _data(["cat", "dog", "Cat", "fox", "dog", "fox", "dog"])
    asked: list[list[Path]] = []

    def probabilities(paths: list[Path]):
        asked.append(paths)
        # the second photo asked about is unusable; the others get a confident guess: "cat" for all
        kept = [i for i in range(len(paths)) if i != 1]
        proba = np.tile([0.9, 0.1], (len(kept), 1))
        return proba, np.asarray(kept), [UnusableFile(paths[1], "empty file")]

    scored = score_photos(data, ["cat", "dog"], probabilities)
    assert asked == [
        [
            Path("/photos/0.jpg"),
            Path("/photos/1.jpg"),
            Path("/photos/2.jpg"),
            Path("/photos/4.jpg"),
            Path("/photos/6.jpg"),
        ]
    ], "photos of unknown labels are not even computed"
    assert scored.unknown_labels == {"fox": 2}
    assert [u.path for u in scored.skipped] == [Path("/photos/1.jpg")]
    assert scored.paths == [Path("/photos/0.jpg"), Path("/photos/2.jpg"), Path("/photos/4.jpg"), Path("/photos/6.jpg")]
    assert scored.metrics["true"] == ["cat", "cat", "dog", "dog"], "'Cat' is scored as the class 'cat'"
    assert scored.accuracy == 0.5 and scored.n_images == 4
    assert scored.metrics["per_class"]["dog"] == {"precision": 0.0, "recall": 0.0, "support": 2}


def test_score_photos_refuses_data_the_model_knows_nothing_of() -> None:
    with pytest.raises(
        DataError, match=r"None of the data's labels \(fox\) is a class of the model \(cat, dog\): is this"
    ):
        score_photos(_data(["fox", "fox"]), ["cat", "dog"], lambda paths: pytest.fail("nothing to compute"))


def test_the_refusal_shows_an_ellipsis_only_when_names_are_left_out() -> None:
    # `evaluate cats-dogs.safetensors pet_photos` said "... of the model (cat, dog, …)": a 2-class model
    labels = ["a", "b", "c", "d", "e", "f"]
    with pytest.raises(DataError, match=r"labels \(a, b, c, d, e, …\) is a class of the model \(x, y\)"):
        score_photos(_data(labels), ["x", "y"], lambda paths: pytest.fail("nothing to compute"))


def test_every_public_name_of_the_reports_package_is_importable_from_it() -> None:
    import importlib

    import headstart.reports as reports

    for module, names in reports._MODULES.items():
        assert set(names) == set(importlib.import_module(f"headstart.reports.{module}").__all__), module
        for name in names:
            assert getattr(reports, name) is getattr(importlib.import_module(f"headstart.reports.{module}"), name)


def test_the_accuracy_interval_is_wilsons() -> None:
    """Against scipy's own Wilson interval, at the edges too (0 and n right)."""
    from scipy.stats import binomtest

    from headstart.reports.metrics import accuracy_interval, format_accuracy

    for hits, n in ((46, 52), (0, 10), (10, 10), (1, 2), (990, 1000), (3, 111)):
        ci = binomtest(hits, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert accuracy_interval(hits, n) == pytest.approx((ci.low, ci.high), abs=6e-5)
    assert format_accuracy(46 / 52, accuracy_interval(46, 52), 52) == "0.885 [0.77–0.95] on 52 photos"
    narrow, wide = accuracy_interval(900, 1000), accuracy_interval(9, 10)
    assert narrow[1] - narrow[0] < (wide[1] - wide[0]) / 5, "more photos, a narrower interval"


def test_classification_metrics_carry_the_interval() -> None:
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    m = classification_metrics(["a", "b", "b", "b"], proba, ["a", "b"])
    assert m["accuracy"] == 0.75 and m["accuracy_ci"][0] < 0.75 < m["accuracy_ci"][1]
