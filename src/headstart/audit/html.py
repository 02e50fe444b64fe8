"""The audit as one self-contained HTML page: thumbnails embedded as base64 JPEG, no external resource at all.

The page opens offline, can be mailed or attached to a ticket, and reads top to bottom most suspicious first:
leaks, duplicates, likely wrong labels, outliers, then the classes, the confused pairs and the learning curve.
Sections show at most :data:`MAX_ITEMS` findings each (audit.json has all of them).

Example:
    >>> write_html(report, "audit/audit.html")                                      # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from headstart._io import write_text_atomic

__all__ = ["MAX_ITEMS", "THUMB_SIZE", "notebook_card", "thumbnail_data_uri", "write_html"]

MAX_ITEMS = 200
THUMB_SIZE = 150

_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1180px;padding:18px;
color:#1d2430;background:#fafbfc}
h1{font-size:22px;margin:4px 0}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d7dce3;padding-bottom:4px}
.meta{color:#5a6575}.summary{display:flex;flex-wrap:wrap;gap:10px;padding:0;list-style:none}
.summary li{background:#fff;border:1px solid #d7dce3;border-radius:6px;padding:8px 12px}
.summary b{font-size:18px;display:block}.bad b{color:#b3261e}.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #d7dce3;border-radius:6px;padding:8px;display:flex;gap:8px;flex-wrap:wrap}
.card.leak{border-color:#b3261e;box-shadow:0 0 0 1px #b3261e inset}.item{width:160px;font-size:12px;overflow-wrap:anywhere}
.item img,.ph{width:150px;height:150px;object-fit:contain;background:#eef1f4;display:block;border-radius:3px}
.ph{display:flex;align-items:center;justify-content:center;color:#7a8594}
.badge{display:inline-block;font-size:11px;border-radius:10px;padding:1px 8px;background:#e6eaf0;margin:0 4px 4px 0}
.badge.red{background:#fbe4e2;color:#8c1d18}.badge.amber{background:#fdf0d5;color:#7a4b00}
.info{width:100%;font-size:12px;color:#3c4656}table{border-collapse:collapse;background:#fff}
td,th{border:1px solid #d7dce3;padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}
.note{color:#5a6575;font-size:12px}nav a{margin-right:12px}
"""


def thumbnail_data_uri(path: str | os.PathLike[str], size: int = THUMB_SIZE) -> str | None:
    """A ``data:image/jpeg;base64,...`` thumbnail of the photo (longest side ``size``), or None if unreadable."""
    from PIL import Image

    from headstart.data.images import load_image
    from headstart.errors import UnusableImageError

    try:
        image = load_image(path, draft_size=(size * 2, size * 2))
    except (UnusableImageError, ValueError):
        return None
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=82)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class _Page:
    def __init__(self, roots: Sequence[Path], thumbnails: bool) -> None:
        self.roots = [Path(r) if Path(r).is_dir() else Path(r).parent for r in roots]
        self.thumbnails = thumbnails
        self._uris: dict[str, str | None] = {}

    def short(self, path: str) -> str:
        for root in self.roots:
            try:
                return Path(path).relative_to(root).as_posix()
            except ValueError:
                continue
        return path

    def image(self, path: str, caption: str) -> str:
        if path not in self._uris:
            self._uris[path] = thumbnail_data_uri(path) if self.thumbnails else None
        uri = self._uris[path]
        picture = (
            f'<img loading="lazy" src="{uri}" alt="">'
            if uri
            else f'<div class="ph">{"no preview" if self.thumbnails else ""}</div>'
        )
        title = html.escape(path, quote=True)
        return f'<div class="item" title="{title}">{picture}{caption}<br>{html.escape(self.short(path))}</div>'


def _badge(text: str, colour: str = "") -> str:
    return f'<span class="badge {colour}">{html.escape(text)}</span>'


def _more(total: int) -> str:
    return f'<p class="note">… and {total - MAX_ITEMS} more in audit.json.</p>' if total > MAX_ITEMS else ""


def _duplicates(page: _Page, rows: list[dict[str, Any]]) -> str:
    leaks = sum(r["crosses_split"] for r in rows)
    out = [f'<h2 id="duplicates">Duplicates: {len(rows)} group(s), {leaks} crossing DATA/TEST</h2>']
    if not rows:
        out.append('<p class="note">No duplicate photos found.</p>')
    out.append('<div class="cards">')
    for row in rows[:MAX_ITEMS]:
        badges = [_badge("leak: crosses DATA/TEST", "red")] if row["crosses_split"] else []
        badges.append(_badge(row["kind"], "amber" if row["kind"] == "near" else ""))
        badges.append(_badge(f"similarity {row['similarity']:.3f}"))
        if row.get("hamming") is not None:
            badges.append(_badge(f"pHash {row['hamming']} bits"))
        if row.get("labels_differ"):
            badges.append(_badge("labels differ", "red"))
        items = [
            page.image(p, f"<b>{html.escape(s)}</b> · {html.escape(label)}{' · kept' if p == row.get('keep') else ''}")
            for p, s, label in zip(row["paths"], row["splits"], row["labels"])
        ]
        out.append(
            f'<div class="card{" leak" if row["crosses_split"] else ""}"><div class="info">'
            f"{''.join(badges)}</div>{''.join(items)}</div>"
        )
    out.append("</div>" + _more(len(rows)))
    return "".join(out)


def _label_issues(page: _Page, rows: list[dict[str, Any]], examples: dict[str, str]) -> str:
    out = [
        f'<h2 id="labels">Likely wrong labels: {len(rows)}</h2>',
        '<p class="note">Confident learning on the probe\'s out-of-fold probabilities; score = 1 − p(given). '
        '"confident": the suggested class reaches its own threshold (the mean self-confidence of its photos).'
        '</p><div class="cards">',
    ]
    for row in rows[:MAX_ITEMS]:
        caption = (
            f"<b>{html.escape(row['given'])}</b> → <b>{html.escape(row['suggested'])}</b><br>"
            f"score {row['score']:.3f} · p {row['given_probability']:.2f} → {row['suggested_probability']:.2f}"
            f"{' · confident' if row.get('confident') else ''}"
        )
        example = examples.get(row["suggested"])
        beside = page.image(example, f"a typical <b>{html.escape(row['suggested'])}</b>") if example else ""
        out.append(f'<div class="card">{page.image(row["path"], caption)}{beside}</div>')
    out.append("</div>" + _more(len(rows)))
    return "".join(out)


def _outliers(page: _Page, rows: list[dict[str, Any]]) -> str:
    out = [
        f'<h2 id="outliers">Outliers: {len(rows)}</h2>',
        '<p class="note">Photos unlike the rest: score = how many typical deviations less similar to their 20 '
        'nearest photos than the median photo is.</p><div class="cards">',
    ]
    for row in rows[:MAX_ITEMS]:
        caption = f"in <b>{html.escape(row['label'])}</b><br>score {row['score']:.2f}"
        if "likeliest_class" in row:
            caption += f" · likeliest {html.escape(row['likeliest_class'])} ({row['max_probability']:.2f})"
        out.append(f'<div class="card">{page.image(row["path"], caption)}</div>')
    out.append("</div>" + _more(len(rows)))
    return "".join(out)


def _fmt(value: Any, percent: bool = False) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.0f}%" if percent else html.escape(str(value))


def _classes(report: Any) -> str:
    out = [
        '<h2 id="classes">Classes</h2><table><tr><th>class</th><th>photos</th><th>usable</th><th>CV accuracy</th>'
        "<th>precision</th><th>est. label noise</th><th>label issues</th><th>outliers</th><th>most confused with</th></tr>"
    ]
    for row in sorted(report.classes, key=lambda r: (r["cv_accuracy"] is None, r["cv_accuracy"] or 0, r["name"])):
        confused = row["most_confused_with"]
        out.append(
            f"<tr><td>{html.escape(row['name'])}</td><td>{row['n_images']}</td><td>{row['n_usable']}</td>"
            f"<td>{_fmt(row['cv_accuracy'], True)}</td><td>{_fmt(row['precision'], True)}</td>"
            f"<td>{_fmt(row['estimated_label_noise'], True)}</td><td>{row['n_label_issues']}</td>"
            f"<td>{row['n_outliers']}</td>"
            f"<td>{'' if confused is None else html.escape(confused['class']) + ' (' + str(confused['count']) + ')'}</td></tr>"
        )
    out.append("</table>")
    if report.confused_pairs:
        out.append(
            '<h2 id="confused">Most confused pairs</h2><table><tr><th>true</th><th>predicted</th>'
            "<th>photos</th><th>share of the class</th></tr>"
        )
        for pair in report.confused_pairs:
            out.append(
                f"<tr><td>{html.escape(pair['true'])}</td><td>{html.escape(pair['predicted'])}</td>"
                f"<td>{pair['count']}</td><td>{100 * pair['rate']:.0f}%</td></tr>"
            )
        out.append("</table>")
    return "".join(out)


def _curve(report: Any, curve_png: Path | None) -> str:
    curve = report.learning_curve
    if curve is None:
        return ""
    out = [f'<h2 id="curve">How many photos would help</h2><p><b>{html.escape(curve.headline)}</b></p>']
    if curve_png is not None and Path(curve_png).is_file():
        encoded = base64.b64encode(Path(curve_png).read_bytes()).decode("ascii")
        out.append(
            f'<img alt="learning curve" style="max-width:640px;width:100%" src="data:image/png;base64,{encoded}">'
        )
    out.append("<table><tr><th>fraction</th><th>photos per class</th><th>CV accuracy</th><th>sd (folds)</th></tr>")
    for p in curve.points:
        out.append(
            f"<tr><td>{p['fraction']:.2f}</td><td>{p['photos_per_class']:.1f}</td>"
            f"<td>{100 * p['accuracy']:.1f}%</td><td>{100 * p['accuracy_std']:.1f}</td></tr>"
        )
    out.append(
        '</table><p class="note">The law has no irreducible-error term: read projected gains as an upper '
        "bound, trustworthy for the next doubling.</p>"
    )
    return "".join(out)


def write_html(
    report: Any, path: str | os.PathLike[str], *, curve_png: Path | None = None, thumbnails: bool = True
) -> Path:
    """Write the report as one HTML file (atomically) and return its path.

    Args:
        report: an :class:`~headstart.audit.core.AuditReport`.
        curve_png: the learning-curve picture to embed.
        thumbnails: embed a thumbnail of every photo shown (off: grey boxes, a much smaller file).
    """
    roots = [Path(report.data)] + ([Path(report.test)] if report.test else [])
    page = _Page(roots, thumbnails)
    summary = report.summary()
    accuracy = "–" if report.cv_accuracy is None else f"{100 * report.cv_accuracy:.1f}%"
    cells = [
        ("leaks (DATA/TEST)", summary["leaks"], summary["leaks"] > 0),
        ("duplicate groups", summary["duplicate_groups"], summary["duplicate_groups"] > 0),
        ("likely wrong labels", summary["label_issues"], summary["label_issues"] > 0),
        ("outliers", summary["outliers"], summary["outliers"] > 0),
        ("unusable files", summary["unusable"], summary["unusable"] > 0),
        ("photos per class", f"{summary['photos_per_class']['min']}–{summary['photos_per_class']['max']}", False),
    ]
    parts = [
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        f"<title>headstart audit: {html.escape(report.data)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Audit of {html.escape(report.data)}</h1>",
        f'<p class="meta">{report.n_usable} usable of {report.n_images} photos in {len(report.classes)} classes'
        f"{f', test: {html.escape(report.test)} ({report.n_test_usable} photos)' if report.test else ''}"
        f" · cross-validated accuracy {accuracy} · {html.escape(report.backbone)} · {report.seconds:.1f} s</p>",
        '<ul class="summary">'
        + "".join(
            f'<li class="{"bad" if bad else ""}"><b>{html.escape(str(v))}</b>{html.escape(k)}</li>'
            for k, v, bad in cells
        )
        + "</ul>",
        '<nav><a href="#duplicates">duplicates</a><a href="#labels">labels</a><a href="#outliers">outliers</a>'
        '<a href="#classes">classes</a><a href="#curve">learning curve</a></nav>',
        "".join(f'<p class="note">{html.escape(n)}</p>' for n in report.notes),
        _duplicates(page, report.duplicates),
        _label_issues(page, report.label_issues, {c["name"]: c["example"] for c in report.classes if c.get("example")}),
        _outliers(page, report.outliers),
        _classes(report),
        _curve(report, curve_png),
    ]
    if report.unusable:
        parts.append(
            f'<h2 id="unusable">Unusable files: {len(report.unusable)}</h2><ul>'
            + "".join(f"<li>{html.escape(u['path'])}: {html.escape(u['reason'])}</li>" for u in report.unusable)
            + "</ul>"
        )
    parts.append("</body></html>\n")
    return write_text_atomic(path, "".join(parts))


def notebook_card(report: Any) -> str:
    """The audit as a notebook shows it (``AuditReport._repr_html_``): the counts, then the most suspicious
    findings of each kind (``save`` writes the whole page with thumbnails)."""
    import headstart._display as show

    summary = report.summary()
    parts = [
        show.fields(
            [
                ("data", report.data),
                ("backbone", report.backbone),
                ("photos", f"{report.n_usable} usable of {report.n_images}"),
                ("cross-validated accuracy", show.percent(report.cv_accuracy)),
                ("duplicate groups", f"{summary['duplicate_groups']} ({summary['leaks']} across splits)"),
                ("likely wrong labels", summary["label_issues"]),
                ("outliers", summary["outliers"]),
                ("unusable files", summary["unusable"]),
                ("classes", summary["n_classes"]),
                ("photos per class", f"{summary['photos_per_class']['min']}–{summary['photos_per_class']['max']}"),
            ]
        )
    ]
    limit = 10
    if report.label_issues:
        rows = [(r["path"], r["given"], r["suggested"], r["score"]) for r in report.label_issues]
        parts += [
            show.heading("Likely wrong labels", 4),
            show.table(["file", "label", "suggested", "score"], rows, limit=limit),
        ]
    if report.duplicates:
        rows = [
            (" | ".join(d["paths"]), d["kind"], "yes" if d["crosses_split"] else "no", d["similarity"])
            for d in report.duplicates
        ]
        parts += [
            show.heading("Duplicates", 4),
            show.table(["files", "kind", "across splits", "similarity"], rows, limit=limit),
        ]
    if report.outliers:
        rows = [(r["path"], r["label"], r["score"]) for r in report.outliers]
        parts += [show.heading("Outliers", 4), show.table(["file", "label", "score"], rows, limit=limit)]
    if report.confused_pairs:
        rows = [(r["true"], r["predicted"], r["count"], r["rate"]) for r in report.confused_pairs]
        parts += [
            show.heading("Most confused classes", 4),
            show.table(["true", "predicted as", "photos", "rate"], rows, limit=limit),
        ]
    if report.unusable:
        rows = [(u["path"], u["reason"]) for u in report.unusable]
        parts += [show.heading("Unusable files", 4), show.table(["file", "why"], rows, limit=limit)]
    parts += [show.paragraph(note) for note in report.notes]
    return show.card("audit", "Data audit", *parts)
