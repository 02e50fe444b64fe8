"""How headstart's objects show themselves in a notebook: escaped HTML cards and tables, and PNGs of figures.

Jupyter calls an object's ``_repr_html_`` (or ``_repr_png_``) to display it. Every result that has one builds it
from these pieces, so every value is escaped in one place (a class name or a file name is data, never markup) and
every card looks the same. Nothing here imports matplotlib or numpy at module level.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable, Sequence
from typing import Any

#: The outer element of every card; ``data-headstart`` names the kind of object (tests and styles select on it).
_CARD = (
    '<div class="headstart-card" data-headstart="{kind}" style="font-family:sans-serif;font-size:13px;'
    'border:1px solid #ccc;border-radius:6px;padding:8px 12px;max-width:960px"><style>.headstart-card th,'
    ".headstart-card td{{text-align:left;padding:1px 10px 1px 0;vertical-align:top}}</style>{body}</div>"
)
_TABLE = '<table style="border-collapse:collapse;margin:4px 0">{rows}</table>'
#: Rows a table shows before it says how many it left out (a notebook is not the place for 10,000 rows).
MAX_ROWS = 20


def text(value: Any, digits: int = 4) -> str:
    """``value`` as escaped text: floats rounded to ``digits`` significant places, None as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return html.escape(f"{value:.{digits}g}")
    return html.escape(str(value))


def percent(value: float | None, digits: int = 1) -> str:
    """A share in [0, 1] as a percentage (None as an em dash), for `fields` or `table` to escape."""
    return "—" if value is None else f"{100 * value:.{digits}f}%"


def fields(pairs: Iterable[tuple[str, Any]]) -> str:
    """A two-column table of names and values (escaped); pairs whose value is ``...`` are left out."""
    rows = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{text(value)}</td></tr>" for name, value in pairs if value is not ...
    )
    return _TABLE.format(rows=rows)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, limit: int = MAX_ROWS) -> str:
    """A table with a header row (every cell escaped); past ``limit`` rows it says how many more there are."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{text(v)}</td>" for v in row) + "</tr>" for row in rows[:limit])
    more = f"<p>… and {len(rows) - limit} more</p>" if len(rows) > limit else ""
    return _TABLE.format(rows=f"<tr>{head}</tr>{body}") + more


def heading(title: str, level: int = 3) -> str:
    return f'<h{level} style="margin:6px 0">{html.escape(title)}</h{level}>'


def paragraph(line: str) -> str:
    return f"<p style='margin:4px 0'>{html.escape(line)}</p>"


def image(png: bytes, alt: str, *, width: int | None = None) -> str:
    """An ``<img>`` holding ``png`` inline (base64), so the notebook keeps it without a file beside it."""
    size = f' width="{int(width)}"' if width else ""
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt, quote=True)}"{size}>'


def card(kind: str, title: str, *parts: str) -> str:
    """One object's card: a title and its parts (each already built from the escaping helpers above)."""
    return _CARD.format(kind=html.escape(kind, quote=True), body=heading(title) + "".join(parts))


def figure_png(fig: Any, *, dpi: int = 90) -> bytes:
    """A matplotlib figure as PNG bytes, on white (what ``_repr_png_`` returns)."""
    import matplotlib

    from headstart._names import literal_figure

    buffer = io.BytesIO()
    with matplotlib.rc_context({"text.parse_math": False}):  # (names are data, never maths: as _io.save_figure)
        literal_figure(fig).savefig(buffer, format="png", dpi=dpi, facecolor="white")
    return buffer.getvalue()


def array_png(array: Any) -> bytes:
    """An ``(H, W, 3)`` uint8 (or float in [0, 1]) image as PNG bytes."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(array)
    if pixels.dtype != np.uint8:
        pixels = np.clip(np.round(pixels * 255), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()
