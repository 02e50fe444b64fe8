"""The words of a refused upload say what happened (issue 20: "carries 3000000 files than the 16")."""

from __future__ import annotations

import pytest

from headstart.serve.uploads import too_many_files

pytestmark = pytest.mark.slow  # every test here runs a real backbone


def test_too_many_files_reads_as_a_sentence_whether_the_count_is_known_or_not() -> None:
    known = too_many_files(3_000_000, 16)
    assert "carries 3,000,000 files, more than the 16 this server takes at once" in str(known.detail), known.detail
    unknown = too_many_files(None, 16)
    assert "carries more files than the 16 this server takes at once" in str(unknown.detail), unknown.detail
