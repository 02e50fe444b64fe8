"""Names from files and model files, made safe wherever headstart shows them: one function for each place.

Class names are folder names, CSV cells or strings in a model file someone sent; file names are whatever the disk
holds. Shown as they are, they can act: an ESC sequence retitles or clears the terminal, a carriage return hides
the start of a line, matplotlib reads ``$\\frac$`` as maths (and fails the whole run at its end) and draws
``cost $5 or $6`` as "cost 5or6", a spreadsheet runs a cell starting ``=HYPERLINK(``. So:

- :func:`printable` for the terminal: control characters (C0, DEL, C1) and the invisible bidirectional overrides
  become visible escapes (``\\x1b``, ``\\u202e``); everything else, accents and scripts included, stays. The CLI's
  consoles apply it to every piece of text they print (:class:`PrintableText`), so no command can forget it;
- :func:`literal_figure` for pictures: every text of a figure is drawn literally (no maths) and printable;
  ``_io.save_figure`` applies it to every figure headstart saves;
- :func:`csv_cell` / :func:`csv_value` for CSVs a person opens in a spreadsheet: a cell that a spreadsheet would
  run as a formula (starting ``=``, ``+``, ``-``, ``@``, a tab or a carriage return) gets a leading ``'``, which
  spreadsheets show as text and :func:`csv_value` removes again when headstart reads the file back.

Example:
    >>> printable("cat\\x1b]0;pwned\\x07")
    'cat\\\\x1b]0;pwned\\\\x07'
    >>> csv_cell("=HYPERLINK(\\"http://x\\")"), csv_value("'=1+1")
    ('\\'=HYPERLINK("http://x")', '=1+1')
"""

from __future__ import annotations

import re
from typing import Any

_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_CONTROL_WITH_LINES = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: Any, *, keep_newlines: bool = False) -> str:
    """``text`` with every control character made a visible escape (``\\x1b``); newlines too unless kept.

    Example:
        >>> printable("a\\rb\\u202ec")
        'a\\\\x0db\\\\u202ec'
    """
    return (_CONTROL if keep_newlines else _CONTROL_WITH_LINES).sub(_escape, str(text))


def literal_figure(fig: Any) -> Any:
    """Make every text of a matplotlib figure draw literally: no maths (``$\\frac$``, ``$5 or $6`` as written) and
    no control characters. Returns ``fig``. Texts made while the figure is drawn (ticks) need
    ``matplotlib.rc_context({"text.parse_math": False})`` around the drawing, as ``_io.save_figure`` does; so the
    tick labels of a log axis, which matplotlib writes as maths (``$\\mathdefault{10^{-3}}$``), get a formatter
    that writes them as plain numbers (``1e-03``) instead of as that markup.
    """
    from matplotlib.axes import Axes
    from matplotlib.text import Text
    from matplotlib.ticker import LogFormatter, LogFormatterMathtext

    for ax in fig.findobj(Axes):
        for axis in (ax.xaxis, ax.yaxis):
            if isinstance(axis.get_major_formatter(), LogFormatterMathtext):
                axis.set_major_formatter(LogFormatter(axis.get_major_formatter()._base))
            if isinstance(axis.get_minor_formatter(), LogFormatterMathtext):
                axis.set_minor_formatter(LogFormatter(axis.get_minor_formatter()._base, labelOnlyBase=True))
    for text in fig.findobj(Text):
        text.set_parse_math(False)
        content = text.get_text()
        if _CONTROL.search(content):
            text.set_text(printable(content, keep_newlines=True))
    return fig


def csv_cell(value: Any) -> str:
    """A CSV cell that a spreadsheet shows as text: one starting like a formula gets a leading ``'``.

    Example:
        >>> [csv_cell(v) for v in ("cat", "-1 dog", "@SUM(A1)", 0.5)]
        ['cat', "'-1 dog", "'@SUM(A1)", '0.5']
    """
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) or (text.startswith("'") and _is_escaped(text)) else text


def csv_value(cell: str) -> str:
    """What :func:`csv_cell` was given: the leading ``'`` it added removed (cells without one are as they are)."""
    return cell[1:] if _is_escaped(cell) else cell


def _is_escaped(cell: str) -> bool:
    return cell.startswith("'") and cell[1:].startswith((*_FORMULA_START, "'"))


class PrintableText:
    """A rich render hook that passes every piece of text a console prints through :func:`printable` (styles and
    rich's own control codes untouched). ``console.push_render_hook(PrintableText())``."""

    def process_renderables(self, renderables: list[Any]) -> list[Any]:
        return [_Printable(r) for r in renderables]


class _Printable:
    def __init__(self, renderable: Any) -> None:
        self.renderable = renderable

    def __rich_console__(self, console: Any, options: Any) -> Any:
        from rich.segment import Segment

        for segment in console.render(self.renderable, options):
            if segment.control or not _CONTROL.search(segment.text):
                yield segment
            else:
                yield Segment(printable(segment.text, keep_newlines=True), segment.style, segment.control)
