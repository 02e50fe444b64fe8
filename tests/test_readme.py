"""The README's Python snippet runs as written, in a fresh working folder, and prints what the README says.

Numbers may differ in the last digits on another CPU (bf16 or fp32 features), so the output is compared as text
with its numbers within 0.02; everything else (names, shapes, labels) must be exactly as printed.
"""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
NUMBER = re.compile(r"-?\d+\.\d*(?:e-?\d+)?|-?\d+")


def python_snippet() -> str:
    """The one ```python block of the README's "Python API" section."""
    text = README.read_text()
    section = text[text.index("## Python API") :]
    section = section[: section.index("\n## ", 4)]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the Python API section has one ```python block"
    return blocks[0]


class _NumbersWithin(doctest.OutputChecker):
    """Exact text; numbers within 0.02 of those printed."""

    def check_output(self, want: str, got: str, optionflags: int) -> bool:
        if super().check_output(want, got, optionflags):
            return True
        if NUMBER.sub("#", "".join(want.split())) != NUMBER.sub("#", "".join(got.split())):
            return False
        pairs = zip(NUMBER.findall(want), NUMBER.findall(got))
        return all(abs(float(a) - float(b)) <= 0.02 for a, b in pairs)


def test_the_checker_rejects_other_words_and_far_numbers() -> None:
    checker = _NumbersWithin()
    assert checker.check_output("array([0.98, 0.  ])\n", "array([0.97, 0.01])\n", 0)
    assert not checker.check_output("array([0.98, 0.  ])\n", "array([0.90, 0.01])\n", 0)
    assert not checker.check_output("'pug'\n", "'boxer'\n", 0)


@pytest.mark.slow
def test_the_readme_python_snippet_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    test = doctest.DocTestParser().get_doctest(python_snippet(), {}, "README.md", str(README), 0)
    assert len(test.examples) > 10
    runner = doctest.DocTestRunner(checker=_NumbersWithin(), optionflags=doctest.NORMALIZE_WHITESPACE)
    failures = []
    runner.run(test, out=failures.append)
    assert runner.failures == 0, "".join(failures)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pets.safetensors"], "it writes only what it saves"
