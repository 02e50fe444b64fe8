"""The lesson's notebooks (examples/*.py, jupytext percent format) run top to bottom in a real Jupyter kernel.

Each is converted by jupytext and executed by nbclient in a fresh ipykernel of this interpreter, in a temporary
folder, on the bundled sample; the test session's private cache is shared, so the features one notebook extracted
are not computed again by the next. A cell that raises fails the test with the cell and its traceback.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
from notebook_kernel import execute_notebook

jupytext = pytest.importorskip("jupytext", reason="the test extra's jupytext is not installed")
nbclient = pytest.importorskip("nbclient", reason="the test extra's nbclient is not installed")
pytest.importorskip("ipykernel", reason="the test extra's ipykernel is not installed")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("[0-9][0-9]_*.py"))


def outputs(notebook, mime: str) -> list[str]:
    """Every output of ``mime`` type in the executed notebook, in cell order."""
    found = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if mime in data:
                found.append(data[mime])
            if mime == "stream" and output.get("output_type") == "stream":
                found.append(output["text"])
    return found


def test_there_is_a_notebook_for_every_part_of_the_lesson():
    names = [p.stem for p in NOTEBOOKS]
    for part in ("cats_vs_dogs", "pet_breeds", "feature_maps", "ideal_cat", "adversarial", "audit", "different"):
        assert any(part in n for n in names), f"no notebook for {part} in {names}"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path: Path, tmp_path: Path):
    notebook = execute_notebook(jupytext.read(path), tmp_path)
    errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    shown = outputs(notebook, "text/html") + outputs(notebook, "image/png")
    assert shown, f"{path.name} displayed no HTML card and no picture"
    for card in outputs(notebook, "text/html"):
        assert "Traceback" not in html.unescape(re.sub(r"<[^>]+>", "", card))


def test_notebooks_are_kept_without_outputs():
    """The .py files hold no outputs by construction; an .ipynb that someone adds must hold none either."""
    import nbformat

    for path in EXAMPLES.glob("*.ipynb"):
        notebook = nbformat.read(path, as_version=4)
        kept = [c for c in notebook.cells if c.get("outputs") or c.get("execution_count")]
        assert not kept, f"{path.name} holds outputs: run `jupytext --to py:percent {path.name}` and keep the .py"
    for path in NOTEBOOKS:
        assert jupytext.read(path).cells, path
