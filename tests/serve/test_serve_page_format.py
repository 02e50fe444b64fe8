"""How the page writes numbers (serve/static/format.js), run under Node: one rule for every probability."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

STATIC = Path(__file__).resolve().parents[2] / "src" / "headstart" / "serve" / "static"
NODE = shutil.which("node") or shutil.which("nodejs")


def formatted(function: str, values: list[float]) -> list[str]:
    if NODE is None:
        pytest.skip("no Node.js to run the page's script (the browser tests cover the page itself)")
    script = (
        f"require({json.dumps(str(STATIC / 'format.js'))});"
        f"console.log(JSON.stringify({json.dumps(values)}.map(globalThis.headstartFormat.{function})));"
    )
    out = subprocess.run([NODE, "-e", script], capture_output=True, text=True, timeout=60, check=True).stdout
    return json.loads(out)


def test_probabilities_share_one_rule_so_neighbours_compare() -> None:
    """The page showed `0%` beside `<0.1%` (and `100%` beside `99.4%`): every probability now has one decimal, and
    the ends are `<0.1%` and `>99.9%` — a softmax is never 0 or 1, whatever rounding to 6 decimals made it."""
    values = [0.0, 1e-7, 0.0004, 0.0005, 0.0123, 0.5, 0.994, 0.9994, 0.9995, 0.99999, 1.0]
    assert formatted("probability", values) == [
        "<0.1%",
        "<0.1%",
        "<0.1%",
        "0.1%",
        "1.2%",
        "50.0%",
        "99.4%",
        "99.9%",
        ">99.9%",
        ">99.9%",
        ">99.9%",
    ]
    rng_values = [i / 997 for i in range(998)] + [10.0**-k for k in range(1, 12)]
    for text in formatted("probability", rng_values):
        assert re.fullmatch(r"<0\.1%|>99\.9%|\d{1,2}\.\d%", text), text


def test_an_accuracy_is_exact_at_its_ends() -> None:
    assert formatted("accuracy", [0.0, 1.0, 0.9583, 0.0004]) == ["0%", "100%", "95.8%", "<0.1%"]


def test_the_page_formats_with_it() -> None:
    app = (STATIC / "app.js").read_text()
    html = (STATIC / "index.html").read_text()
    assert "format.probability(p.probability)" in app and "function percent" not in app
    assert html.index("/static/format.js") < html.index("/static/app.js")
