"""Each benchmark owns one section of docs/BENCHMARKS.md, replaced in place on every run."""

from __future__ import annotations

import re
from pathlib import Path

REPORT = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"
HEADER = "# Benchmarks\n\nProduced by the scripts in `benchmarks/`; numbers are from the machine each section names, not assumed.\n"


def write_section(name: str, body: str, report: Path = REPORT) -> Path:
    """Replace (or append) the section between ``<!-- name -->`` markers."""
    text = report.read_text() if report.is_file() else HEADER
    block = f"<!-- {name} -->\n{body.strip()}\n<!-- /{name} -->"
    pattern = re.compile(rf"<!-- {re.escape(name)} -->.*?<!-- /{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(text)
    return report
