"""``backbone="auto"``: candidates scored by the probe's cross-validation on the training part (the scoring
``compare`` uses), the rule that picks one, and the choice recorded in the report, the run folder and the model
file. Real weights (two offline backbones), real photos (3 breeds × 5)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from headstart._validation import ParameterError
from headstart.models.selection import OFFLINE_CANDIDATES, parse_auto, select_backbone

PAIR = "auto:lite0,tf_efficientnet_lite1"


@pytest.fixture(scope="module")
def fifteen(sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fifteen")
    for breed in ("Persian", "pug", "samoyed"):
        shutil.copytree(sample / "train" / breed, root / breed)
    return root


def test_auto_names_its_candidates() -> None:
    assert parse_auto("auto") == list(OFFLINE_CANDIDATES)
    assert parse_auto("auto:resnet50, lite1,lite1") == ["resnet50", "tf_efficientnet_lite1"]
    assert parse_auto("tf_efficientnet_lite0") is None and parse_auto("automobile_net") is None
    with pytest.raises(ParameterError, match="'backbone' parameter"):
        parse_auto("auto:")


@pytest.mark.slow
def test_the_rule_keeps_the_first_backbone_unless_a_later_one_wins_photo_by_photo(fifteen: Path, cache) -> None:
    from headstart.data import load_dataset

    data = load_dataset(fifteen)
    labels = [["a", "b", "c"][i % 3] for i in range(15)]  # labels unrelated to the photos: nothing is easy here
    sel = select_backbone(data.paths, labels, parse_auto(PAIR), cache=cache)
    assert [r["backbone"] for r in sel.rows] == ["tf_efficientnet_lite0", "tf_efficientnet_lite1"]
    assert all(r["n_images"] == 15 and r["folds"] == 5 and 0 <= r["cv_accuracy"] <= 1 for r in sel.rows)
    assert sum(r["chosen"] for r in sel.rows) == 1 and sel.n_photos == 15
    second = sel.rows[1]
    assert {"paired_gain", "paired_se"} <= set(second), "the later candidate is compared photo by photo"
    wins = second["paired_gain"] > max(2 * second["paired_se"], 1.5 / 15)
    assert sel.chosen == ("tf_efficientnet_lite1" if wins else "tf_efficientnet_lite0")
    assert "paired standard errors" in sel.rule and "1.5 photos' worth (0.1000)" in sel.rule
    again = select_backbone(data.paths, labels, parse_auto(PAIR), cache=cache, budget_s=0)
    assert again.rows[1] == {
        "backbone": "tf_efficientnet_lite1",
        "cv_accuracy": None,
        "skipped": "time budget",
        "chosen": False,
    }, "a spent budget skips the rest and says so"


def _sample_features(sample: Path):
    from headstart.data import load_dataset
    from headstart.features import FeatureCache, extract_features

    data = load_dataset(sample / "train")
    feats = extract_features(data.paths, "tf_efficientnet_lite0", cache=FeatureCache())
    return feats.features, np.asarray(data.labels)[feats.indices]


@pytest.mark.slow
def test_the_paired_rule_does_not_follow_noise_at_five_photos_a_class(sample: Path) -> None:
    """A later candidate that knows less (the same features with noise added) is never preferred, whatever the
    seed: its photo-by-photo gain never clears the paired standard error."""
    from headstart.models.probe_fit import fit_probe
    from headstart.models.selection import PairedChoice

    X, y = _sample_features(sample)  # 12 breeds x 5 photos
    rng = np.random.default_rng(0)
    scale = float(X.std())
    for seed in range(5):
        noisy = X + rng.normal(0.0, 0.6 * scale, X.shape).astype(np.float32)
        first, second = fit_probe(X, y, random_state=seed), fit_probe(noisy, y, random_state=seed)
        rule = PairedChoice(y, seed=seed)
        rule.offer("first", X, C=first.C_)
        verdict = rule.offer("second", noisy, C=second.C_)
        assert rule.best == "first" and not verdict["chosen"], (seed, verdict)


@pytest.mark.slow
def test_the_paired_rule_switches_when_the_evidence_is_strong(sample: Path) -> None:
    from headstart.models.probe_fit import fit_probe
    from headstart.models.selection import PairedChoice

    X, y = _sample_features(sample)
    useless = X[np.random.default_rng(1).permutation(len(X))]  # real features of other photos: they know nothing
    rule = PairedChoice(y, seed=0)
    assert rule.offer("useless", useless, C=fit_probe(useless, y).C_)["chosen"]
    verdict = rule.offer("real", X, C=fit_probe(X, y).C_)
    assert verdict["chosen"] and rule.best == "real"
    assert verdict["paired_gain"] > 0.5 and verdict["paired_gain"] > 2 * verdict["paired_se"]


@pytest.mark.slow
def test_a_candidate_that_cannot_win_is_not_even_extracted(fifteen: Path, cache) -> None:
    from headstart.data import load_dataset

    data = load_dataset(fifteen)  # three breeds far apart: the cheapest backbone is right on every photo
    sel = select_backbone(data.paths, data.labels, parse_auto(PAIR), cache=cache)
    assert sel.rows[0]["cv_accuracy"] == 1.0 and sel.chosen == "tf_efficientnet_lite0"
    assert sel.rows[1]["skipped"] == "could not gain more than the margin"
    assert cache.count() == 15, "only the first backbone's features (one view) were computed"


@pytest.mark.slow
def test_auto_is_recorded_in_the_report_run_folder_and_model_file(fifteen: Path, tmp_path: Path) -> None:
    from headstart.models.classifier import Classifier
    from headstart.workflows.training import train

    result = train(fifteen, backbone=PAIR, out=tmp_path / "auto.safetensors", cache=tmp_path / "cache")
    clf = result.estimator
    chosen = clf.report_["backbone_selection"]["chosen"]
    assert clf.spec_.name == chosen == clf.report_["backbone"] and clf.backbone == PAIR, "params stay as given"
    table = json.loads((result.run_dir / "backbone_selection.json").read_text())
    assert [r["backbone"] for r in table["candidates"]] == ["tf_efficientnet_lite0", "tf_efficientnet_lite1"]
    assert table["n_photos"] == clf.report_["n_train"], "scored on the training part only"
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["backbone"] == PAIR and config["backbone_chosen"] == chosen
    saved = Classifier.load(result.model_path)
    assert saved.spec.name == chosen and saved.metadata["metrics"]["backbone_selection"]["chosen"] == chosen
    assert saved.metadata["estimator"]["backbone"] == PAIR
    proba = clf.predict_proba(sorted(fifteen.rglob("*.jpg"))[:2])
    np.testing.assert_allclose(proba.sum(axis=1), 1, atol=1e-5)


@pytest.mark.slow
def test_auto_refuses_a_weights_file(tmp_path: Path) -> None:
    import headstart as hs

    with pytest.raises(ParameterError, match="'weights' parameter"):
        hs.ImageClassifier(backbone="auto", weights=tmp_path / "w.safetensors").fit((["a.jpg"], ["x"]))


def test_the_choice_is_described_with_its_evidence() -> None:
    from headstart.models.selection import describe_selection

    selection = {
        "chosen": "tf_efficientnet_lite1",
        "n_photos": 207,
        "candidates": [
            {"backbone": "tf_efficientnet_lite1", "cv_accuracy": 0.816, "chosen": True},
            {"backbone": "tf_efficientnet_lite2", "cv_accuracy": 0.845, "paired_gain": 0.029, "paired_se": 0.019},
            {"backbone": "tf_efficientnet_lite0", "cv_accuracy": None, "skipped": "time budget"},
        ],
    }
    assert describe_selection(selection) == (
        "probe CV accuracy of 207 photos: tf_efficientnet_lite1 0.816, tf_efficientnet_lite2 0.845 (+0.029 ± 0.019 "
        "photo by photo), tf_efficientnet_lite0 (time budget); not enough evidence to leave the default"
    )
    selection["candidates"][0]["chosen"] = False
    assert not describe_selection(selection).endswith("default")


def test_the_figures_described_are_those_compared_so_a_gain_is_their_difference() -> None:
    """Each candidate's own CV (its own folds and C search) differs from the shared folds the rule compares on: the
    line shows the shared folds' accuracies, so a later candidate's gain is its figure minus the best's before it."""
    import numpy as np

    from headstart.models.selection import PairedChoice, describe_selection

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 15)
    centres = rng.normal(size=(4, 8))
    rule = PairedChoice(y, seed=0)
    rows = []
    for name, noise in (("a", 1.6), ("b", 0.6), ("c", 2.5)):
        X = centres[y] + rng.normal(scale=noise, size=(len(y), 8))
        rows.append({"backbone": name, "cv_accuracy": 0.5, **rule.offer(name, X, C=1.0)})
    text = describe_selection({"n_photos": len(y), "candidates": rows})
    assert text.startswith("probe accuracy on the same cross-validation folds of 60 photos: ")
    shown = {r["backbone"]: r["paired_accuracy"] for r in rows}
    assert f"a {shown['a']:.3f}" in text and "0.500" not in text
    assert abs(rows[1]["paired_gain"] - (shown["b"] - shown["a"])) < 1e-3
    best_before_c = "b" if rows[1]["chosen"] else "a"
    assert abs(rows[2]["paired_gain"] - (shown["c"] - shown[best_before_c])) < 1e-3


def test_the_paired_folds_are_stratified_and_cover_every_photo_once() -> None:
    from headstart.models.probe_fit import stratified_folds as _stratified_folds

    y = np.array(["a"] * 7 + ["b"] * 5 + ["c"] * 3)
    folds = _stratified_folds(y, 3, seed=4)
    assert sorted(np.concatenate(folds).tolist()) == list(range(15))
    for fold in folds:
        counts = {c: int((y[fold] == c).sum()) for c in "abc"}
        assert counts["a"] in (2, 3) and counts["b"] in (1, 2) and counts["c"] == 1
    assert [f.tolist() for f in _stratified_folds(y, 3, seed=4)] == [f.tolist() for f in folds], "seeded"


def test_the_paired_standard_error_is_corrected_for_the_folds_overlap() -> None:
    """Cross-validated scores are not independent tests (the folds' training parts overlap): the rule's standard
    error is Nadeau and Bengio's corrected one, 1.5 times the naive per-photo one for 5 folds, so a gain of about
    two naive standard errors (the noise of one split) no longer switches the backbone."""
    import numpy as np

    from headstart.models.selection import PairedChoice, cv_correction

    assert cv_correction(5) == 1.5 and cv_correction(2) == np.sqrt(3) and cv_correction(1) == 1.0
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 20)
    centres = rng.normal(size=(3, 6))
    a = centres[y] + rng.normal(scale=1.5, size=(60, 6))
    b = centres[y] + rng.normal(scale=1.2, size=(60, 6))
    rule = PairedChoice(y, seed=0)
    rule.offer("a", a, C=1.0)
    verdict = rule.offer("b", b, C=1.0)

    def correct(X):
        fresh = PairedChoice(y, seed=0)
        return fresh._correct(fresh._out_of_fold_logits(X, 1.0))

    difference = correct(b) - correct(a)
    naive = float(difference.std(ddof=1) / np.sqrt(60))
    assert naive > 0 and verdict["paired_se"] == round(naive * 1.5, 4)
    assert verdict["chosen"] == (verdict["paired_gain"] > max(2 * naive * 1.5, 1.5 / 60))
