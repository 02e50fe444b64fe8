"""Results that show themselves in a notebook: the HTML is produced, escaped and says what the object holds; the
pictures are real PNGs; progress bars draw in a real Jupyter kernel."""

from __future__ import annotations

import html
import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import headstart as hs
from headstart import _display as show

HOSTILE = '<img src=x onerror="alert(1)">&'


def _text(markup: str) -> str:
    """What a reader sees: the tags dropped, the entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", " ", markup))


def _pngs(markup: str) -> list[Image.Image]:
    import base64

    return [
        Image.open(io.BytesIO(base64.b64decode(data)))
        for data in re.findall(r'src="data:image/png;base64,([^"]+)"', markup)
    ]


def _assert_escaped(markup: str) -> None:
    assert HOSTILE not in markup and "<img src=x" not in markup
    assert html.escape(HOSTILE) in markup or html.escape(HOSTILE, quote=False) in markup


# ------------------------------------------------------------------------------------------------ the pieces
def test_every_value_is_escaped_once():
    card = show.card("x", HOSTILE, show.fields([(HOSTILE, HOSTILE)]), show.table([HOSTILE], [[HOSTILE]]))
    _assert_escaped(card)
    assert "&amp;amp;" not in card  # (not twice)
    assert _text(card).count(HOSTILE) == 5  # title, field name and value, header, cell
    assert show.fields([("left out", ...), ("kept", None)]).count("<tr>") == 1


def test_a_long_table_says_how_many_rows_it_left_out():
    rows = [[i] for i in range(show.MAX_ROWS + 7)]
    assert "… and 7 more" in show.table(["n"], rows) and show.table(["n"], rows).count("<tr>") == show.MAX_ROWS + 1


# -------------------------------------------------------------------------------------------- the estimator
def test_an_unfitted_estimator_shows_its_settings():
    card = hs.ImageClassifier(backbone="tf_efficientnet_lite0")._repr_html_()
    assert "not fitted" in card and "tf_efficientnet_lite0" in card and ".fit(" in card


@pytest.mark.slow
def test_the_model_card_of_a_fitted_estimator(sample_model: Path):
    clf = hs.load(sample_model)
    card = clf._repr_html_()
    seen = _text(card)
    assert 'data-headstart="model-card"' in card
    assert "tf_efficientnet_lite0" in seen and "224×224, bicubic, crop 0.875" in seen
    assert all(name in seen for name in clf.classes_)
    assert f"{100 * clf.report_['val_accuracy']:.1f}%" in seen
    assert f"{clf.report_['n_train']} training, {clf.report_['n_val']} validation" in seen


@pytest.mark.slow
def test_class_names_from_folders_are_escaped_in_the_model_card(sample: Path, tmp_path: Path):
    for name, breed in ((HOSTILE, "Bengal"), ("dog", "pug")):
        (tmp_path / name).mkdir()
        for photo in sorted((sample / "train" / breed).glob("*.jpg"))[:4]:
            shutil.copy(photo, tmp_path / name / photo.name)
    clf = hs.ImageClassifier(backbone="tf_efficientnet_lite0").fit(tmp_path)
    _assert_escaped(clf._repr_html_())


# --------------------------------------------------------------------------------------------- evaluation
@pytest.mark.slow
def test_an_evaluation_shows_its_scores_classes_and_pictures(sample_model: Path, sample: Path, tmp_path: Path):
    (tmp_path / "data.csv").write_text(
        "path,label\n"
        + "".join(f"{p},{p.parent.name}\n" for p in sorted((sample / "test").glob("*/*.jpg")))
        + f"{next((sample / 'test').glob('*/*.jpg'))},{HOSTILE}\n"
    )
    report = hs.evaluate(sample_model, tmp_path / "data.csv")
    card = report._repr_html_()
    seen = _text(card)
    assert f"{100 * report.accuracy:.1f}%" in seen and f"ECE {report.calibration['ece']:.3f}" in seen
    assert all(name in seen for name in report.details["classes"])
    _assert_escaped(card)  # the label the model does not know, shown as data
    pictures = _pngs(card)
    assert len(pictures) == 2 and all(p.size[0] > 200 for p in pictures)  # confusion matrix, reliability diagram
    assert set(report.figures()) == {"confusion_matrix", "reliability"}


# ------------------------------------------------------------------------------------------ looking inside
@pytest.mark.slow
def test_feature_maps_and_dreams_draw_themselves(sample: Path):
    photo = sorted((sample / "test" / "Siamese").glob("*.jpg"))[0]
    maps = hs.feature_maps("tf_efficientnet_lite0", photo)
    picture = Image.open(io.BytesIO(maps._repr_png_()))
    assert picture.format == "PNG" and picture.size[0] > 400
    assert maps.figure(n_channels=4).axes  # a matplotlib figure the API returns

    dream = hs.dream("tf_efficientnet_lite0", "Siamese cat", steps=2)
    image = np.asarray(Image.open(io.BytesIO(dream._repr_png_())).convert("RGB"))
    assert np.array_equal(image, dream.image)  # the very pixels that were measured
    card = dream._repr_html_()
    assert f"{dream.probability:.3f}" in _text(card) and len(_pngs(card)) == 1

    explanation = hs.explain("tf_efficientnet_lite0", photo)
    assert Image.open(io.BytesIO(explanation._repr_png_())).format == "PNG"


# ---------------------------------------------------------------------------------------------- attacks
@pytest.mark.slow
def test_an_attack_shows_its_verdicts_budget_and_pictures(sample: Path):
    dog = sorted((sample / "test" / "pug").glob("*.jpg"))[0]
    result = hs.attack("tf_efficientnet_lite0", dog, target="Siamese cat", eps=2 / 255, steps=2)
    hs.transfer(result, ["tf_efficientnet_lite1"])
    card = result._repr_html_()
    seen = _text(card)
    assert "linf eps 2/255" in seen and result.before.label in seen and result.after.label in seen
    assert ("yes" if result.success else "no") in seen and "tf_efficientnet_lite1" in seen
    assert len(_pngs(card)) == 1 and result.figure().axes


def test_a_robustness_curve_shows_a_row_per_budget():
    from headstart.attacks.robustness_curve import Robustness

    curve = Robustness(HOSTILE, "pgd", "linf", 5, [0, 2 / 255, 4 / 255], [0.9, 0.5, 0.25], 20, 0.9, [None, 0.4, 0.7])
    card = curve._repr_html_()
    _assert_escaped(card)
    seen = _text(card)
    assert "2/255" in seen and "50.0%" in seen and "70.0%" in seen and len(_pngs(card)) == 1


# ------------------------------------------------------------------------------------------------- audit
def test_an_audit_shows_its_counts_and_findings(tmp_path: Path):
    from headstart.audit.core import AuditReport

    report = AuditReport(
        data=str(tmp_path),
        test=None,
        backbone="tf_efficientnet_lite0",
        n_images=3,
        n_usable=2,
        n_test_images=0,
        n_test_usable=0,
        cv_accuracy=0.5,
        duplicates=[],
        label_issues=[{"path": f"{tmp_path}/{HOSTILE}.jpg", "given": "cat", "suggested": "dog", "score": 0.9}],
        outliers=[],
        classes=[{"n_usable": 1}, {"n_usable": 1}],
        confused_pairs=[],
        learning_curve=None,
        unusable=[{"path": "broken.jpg", "reason": "not an image"}],
    )
    card = report._repr_html_()
    _assert_escaped(card)
    seen = _text(card)
    assert "2 usable of 3" in seen and "50.0%" in seen and "broken.jpg" in seen and "not an image" in seen


# ------------------------------------------------------------------------------------ progress in Jupyter
PROGRESS_CELL = """
import sys
{hide}
from headstart._console import progress, say, wants_progress
print("shown by default:", wants_progress(None))
say("converting the backbone once")
with progress(True, 3, "extracting") as advance:
    for _ in range(3):
        advance(1)
"""


@pytest.mark.slow
@pytest.mark.parametrize("widgets", [True, False], ids=["ipywidgets", "no-ipywidgets"])
def test_progress_bars_draw_in_a_real_jupyter_kernel(widgets: bool, tmp_path: Path):
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    if widgets:
        pytest.importorskip("ipywidgets")
    from notebook_kernel import execute_notebook

    hide = "" if widgets else "sys.modules['ipywidgets'] = None  # as if it were not installed"
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(PROGRESS_CELL.format(hide=hide))])
    outputs = execute_notebook(notebook, tmp_path)["cells"][0]["outputs"]
    streams = "".join(o.get("text", "") for o in outputs if o["output_type"] == "stream")
    assert 'install "ipywidgets"' not in streams and not [o for o in outputs if o["output_type"] == "error"]
    assert "shown by default: True" in streams  # as in a terminal, unlike a pipe or a log file
    said = [o for o in outputs if o["output_type"] == "stream" and "converting the backbone once" in o["text"]]
    assert said and said[0]["name"] == "stderr"  # a line on the progress channel, not a result
    if widgets:  # rich's live bar, drawn in an ipywidgets Output
        assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
    else:  # a text bar rewritten in place
        errors = "".join(o["text"] for o in outputs if o["output_type"] == "stream" and o["name"] == "stderr")
        assert "\rextracting" in errors and errors.rstrip().endswith("3/3")
