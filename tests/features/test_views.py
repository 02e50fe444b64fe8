"""Views computed once and shared by every command: one view by default, the mirror view only when asked (or when
it is already cached), mirror-averaged features as the mean of the two stored views."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from headstart.features.cache import FeatureCache
from headstart.features.extract import extract_features, preprocessor

pytestmark = pytest.mark.slow  # every test here runs a real backbone


def test_a_command_that_needs_the_mirror_view_computes_only_that(lite0, cache, sample: Path) -> None:
    photos = sorted((sample / "test").glob("*/*.jpg"))[:5]
    one = extract_features(photos, lite0, cache=cache, precision="fp32", engine="torch")  # e.g. predict
    assert not one.spec.flip_average and (one.n_computed, one.n_views_computed) == (5, 5)
    assert cache.count(view="mirror") == 0, "one view unless asked"
    both = extract_features(photos, lite0, cache=cache, precision="fp32", engine="torch", flip_average=True)
    assert (both.n_computed, both.n_views_computed, both.n_cached) == (5, 5, 0), "only the mirror views"
    again = extract_features(photos, lite0, cache=cache, precision="fp32", engine="torch", flip_average=True)
    assert (again.n_computed, again.n_cached) == (0, 5)
    x = torch.stack([preprocessor(lite0)(p) for p in photos])
    with torch.no_grad():
        averaged = lite0.with_flip_average(True).features(x).numpy()  # the network's own averaging, one pass
    np.testing.assert_array_equal(both.features, averaged)
    np.testing.assert_array_equal(again.features, averaged)
    np.testing.assert_array_equal(
        one.features, extract_features(photos, lite0, cache=cache, precision="fp32", engine="torch").features
    )


@pytest.mark.slow
def test_train_computes_one_view_unless_asked_and_lets_cv_decide_when_the_mirror_views_are_cached(
    sample: Path, tmp_path: Path
) -> None:
    from headstart.data import load_dataset
    from headstart.models.estimator import ImageClassifier

    data = sample / "train"
    cache = FeatureCache(tmp_path / "c.sqlite")
    default = ImageClassifier().fit(data, cache=cache)
    assert default.report_["flip_average"] is False and default.report_["flip_average_cv"] == {}
    assert default.report_["features"]["computed"] == 60 and cache.count(view="mirror") == 0
    assert not default.model_.spec.flip_average

    mirrors = extract_features(
        load_dataset(data).paths,
        default.spec_.name,
        cache=cache,  # `extract --flip-average`
        flip_average=True,
    )
    assert mirrors.n_views_computed == 60, "the photos' own views were cached by train"
    decided = ImageClassifier().fit(data, cache=cache)  # now mirror averaging costs nothing: CV decides
    assert set(decided.report_["flip_average_cv"]) == {"on", "off"}
    assert decided.report_["features"]["computed"] == 0
    for asked in (None, "cached", "auto"):  # the default, its other name, and CV at any cost (here: none left)
        clf = ImageClassifier(flip_average=asked).fit(data, cache=cache)
        assert clf.report_["flip_average_cv"] == decided.report_["flip_average_cv"]
    with pytest.raises(
        ValueError, match="'flip_average' parameter of ImageClassifier must be a bool, None, 'auto' or 'cached'"
    ):
        ImageClassifier(flip_average="sometimes").fit(data, cache=cache)
