"""classification_metrics (plain numpy) against scikit-learn's definitions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, top_k_accuracy_score

from headstart.reports.metrics import classification_metrics


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
        assert m["per_class"][name] == {"precision": round(float(precision[i]), 4),
                                        "recall": round(float(recall[i]), 4), "support": int(support[i])}
    assert m["n_images"] == 200 and m["predicted"] == [classes[i] for i in pred]
