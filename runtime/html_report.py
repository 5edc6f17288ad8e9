"""``report.html``: an inspection's results at a glance, one self-contained file readable offline.

Written by ``inspector inspect`` next to ``report.csv``/``report.jsonl``, from the same records and the
run's summary: the summary, counts per sub-folder, the score histogram with the threshold (inline SVG
drawn here), every flagged image (a thumbnail of its overlay embedded as a base64 JPEG, the overlay and
mask linked relatively inside the output folder), the unreadable files and the slowest images. No
script, no font, style sheet or image from the network: the page shows the same on a box without one.
"""

from __future__ import annotations

import base64
import html
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import cv2
import numpy as np

from inspector.io import atomic_write_text

HTML_NAME = "report.html"
#: Flagged images beyond this many (highest scores first) are listed without an embedded thumbnail,
#: which keeps the page a few megabytes at most.
THUMBNAIL_LIMIT = 200
THUMBNAIL_SIDE = 160
HISTOGRAM_BINS = 20

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 70em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.8em; text-align: left; vertical-align: middle; }
td.number, th.number { text-align: right; font-variant-numeric: tabular-nums; }
.anomalous { color: #b00020; font-weight: 600; }
.note { color: #555; }
img.thumbnail { max-width: 160px; max-height: 160px; display: block; }
"""


def write_html_report(
    out_dir: str | Path, summary: dict[str, Any], records: Sequence[dict[str, Any]]
) -> Path:
    """Write ``out_dir/report.html`` (atomically) from an inspection's summary and records; returns its path."""
    out_dir = Path(out_dir)
    return atomic_write_text(out_dir / HTML_NAME, render_html_report(out_dir, summary, records))


def render_html_report(out_dir: Path, summary: dict[str, Any], records: Sequence[dict[str, Any]]) -> str:
    """The page as text; overlays named in the records are read from ``out_dir`` for the thumbnails."""
    title = f"Inspection of {summary.get('folder', '')}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{_text(title)}</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{_text(title)}</h1>",
        _summary_section(summary),
        _folders_section(records),
        _histogram_section(records, float(summary.get("image_threshold", 0.5))),
        _flagged_section(out_dir, records),
        _unreadable_section(records),
        _slowest_section(summary),
        f'<p class="note">Written {_text(_now())} by inspector inspect; the same records are in report.csv '
        "and report.jsonl.</p>",
        "</body>",
        "</html>",
    ]
    return "\n".join(part for part in parts if part) + "\n"


# --- sections -------------------------------------------------------------------------------------------


def _summary_section(summary: dict[str, Any]) -> str:
    run = summary.get("this_run") or {}
    rate = run.get("images_per_second")
    rows = [
        ("folder", summary.get("folder")),
        ("model", summary.get("model")),
        ("images", summary.get("images")),
        ("scored", summary.get("scored")),
        ("anomalous", summary.get("anomalous")),
        ("normal", summary.get("normal")),
        ("unreadable", summary.get("unreadable")),
        (
            "thresholds",
            f"image {summary.get('image_threshold')}, pixel {summary.get('pixel_threshold')} "
            "(normalised; 0.5 = as calibrated)",
        ),
        (
            "this run",
            f"{run.get('images', 0)} images in {run.get('seconds', 0)} s"
            + (f" ({rate} images/s)" if rate else "")
            + (f", {summary['resumed']} from an earlier run" if summary.get("resumed") else ""),
        ),
        ("compute", ", ".join(summary.get("providers") or [])),
    ]
    if summary.get("interrupted"):
        rows.append(("status", "interrupted: the report holds the images finished before the stop"))
    if summary.get("error"):
        rows.append(("error", summary["error"]))
    body = "".join(f"<tr><th>{_text(key)}</th><td>{_text(value)}</td></tr>" for key, value in rows)
    return f"<h2>Summary</h2>\n<table>{body}</table>"


def _folders_section(records: Sequence[dict[str, Any]]) -> str:
    counts: dict[str, Counter] = {}
    for record in records:
        path = str(record.get("path", ""))
        folder = path.rsplit("/", 1)[0] if "/" in path else "."
        counter = counts.setdefault(folder, Counter())
        counter["images"] += 1
        counter[record.get("label") or "unreadable"] += 1
    header = _row(
        ["folder", "images", "anomalous", "normal", "unreadable", "anomalous share"], "th", numbers=1
    )
    rows = []
    for folder, counter in sorted(counts.items()):
        scored = counter["anomalous"] + counter["normal"]
        share = f"{counter['anomalous'] / scored:.1%}" if scored else "-"
        rows.append(
            _row(
                [
                    folder,
                    counter["images"],
                    counter["anomalous"],
                    counter["normal"],
                    counter["unreadable"],
                    share,
                ],
                numbers=1,
            )
        )
    return f"<h2>Per folder</h2>\n<table>{header}{''.join(rows)}</table>"


def _histogram_section(records: Sequence[dict[str, Any]], threshold: float) -> str:
    scores = [float(r["score"]) for r in records if r.get("status") == "ok" and r.get("score") is not None]
    if not scores:
        return '<h2>Scores</h2>\n<p class="note">No image was scored.</p>'
    return (
        "<h2>Scores</h2>\n"
        f'<p class="note">Normalised image scores of the {len(scores)} scored images; images above the '
        f"threshold ({threshold:g}, dashed) are flagged.</p>\n" + score_histogram_svg(scores, threshold)
    )


def score_histogram_svg(scores: Sequence[float], threshold: float, bins: int = HISTOGRAM_BINS) -> str:
    """An inline SVG histogram of normalised scores in [0, 1], bars above ``threshold`` in red, the
    threshold as a dashed line."""
    width, height, left, bottom, top, right = 640, 240, 48, 32, 16, 16
    plot_w, plot_h = width - left - right, height - top - bottom
    counts, edges = np.histogram(np.clip(scores, 0.0, 1.0), bins=bins, range=(0.0, 1.0))
    tallest = max(1, int(counts.max()))
    elements = [
        f'<svg width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="score histogram">',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#444"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#444"/>',
    ]
    bar_w = plot_w / bins
    for index, count in enumerate(counts):
        if not count:
            continue
        bar_h = plot_h * count / tallest
        centre = (edges[index] + edges[index + 1]) / 2
        colour = "#d32f2f" if centre > threshold else "#607d8b"
        x, y = left + index * bar_w, top + plot_h - bar_h
        elements.append(
            f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{bar_w - 2:.1f}" height="{bar_h:.1f}" fill="{colour}">'
            f"<title>{edges[index]:.2f} to {edges[index + 1]:.2f}: {count} images</title></rect>"
        )
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = left + tick * plot_w
        elements.append(
            f'<text x="{x:.1f}" y="{height - 12}" font-size="11" text-anchor="middle">{tick:g}</text>'
        )
    elements.append(f'<text x="{left - 6}" y="{top + 4}" font-size="11" text-anchor="end">{tallest}</text>')
    elements.append(f'<text x="{left - 6}" y="{top + plot_h}" font-size="11" text-anchor="end">0</text>')
    x = left + min(max(threshold, 0.0), 1.0) * plot_w
    elements.append(
        f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" stroke="#000" '
        'stroke-dasharray="5,4" stroke-width="1.5"><title>threshold</title></line>'
    )
    elements.append(f'<text x="{x + 4:.1f}" y="{top + 10}" font-size="11">threshold {threshold:g}</text>')
    elements.append("</svg>")
    return "\n".join(elements)


def _flagged_section(out_dir: Path, records: Sequence[dict[str, Any]]) -> str:
    flagged = sorted(
        (r for r in records if r.get("label") == "anomalous"),
        key=lambda r: float(r.get("score") or 0),
        reverse=True,
    )
    if not flagged:
        return '<h2>Flagged images</h2>\n<p class="note">No image was flagged.</p>'
    header = _row(["overlay", "image", "score", "raw score", "regions", "files"], "th")
    rows = []
    for rank, record in enumerate(flagged):
        thumbnail = _thumbnail(out_dir, record.get("overlay")) if rank < THUMBNAIL_LIMIT else None
        picture = (
            f'<img class="thumbnail" alt="overlay of {_text(record.get("path"))}" src="{thumbnail}">'
            if thumbnail
            else '<span class="note">-</span>'
        )
        links = " ".join(
            f'<a href="{_href(record[key])}">{key}</a>' for key in ("overlay", "mask") if record.get(key)
        )
        cells = [
            picture,
            f'<span class="anomalous">{_text(record.get("path"))}</span>',
            _number(record.get("score"), 4),
            _number(record.get("raw_score"), 6),
            str(len(record.get("regions") or [])),
            links or '<span class="note">not saved</span>',
        ]
        rows.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    note = (
        f'<p class="note">{len(flagged)} flagged, highest score first; thumbnails for the first '
        f"{THUMBNAIL_LIMIT}.</p>"
        if len(flagged) > THUMBNAIL_LIMIT
        else f'<p class="note">{len(flagged)} flagged, highest score first.</p>'
    )
    return f"<h2>Flagged images</h2>\n{note}\n<table>{header}{''.join(rows)}</table>"


def _unreadable_section(records: Sequence[dict[str, Any]]) -> str:
    unreadable = [r for r in records if r.get("status") != "ok"]
    if not unreadable:
        return ""
    rows = "".join(_row([r.get("path"), r.get("error")]) for r in unreadable)
    return f"<h2>Unreadable files</h2>\n<table>{_row(['file', 'reason'], 'th')}{rows}</table>"


def _slowest_section(summary: dict[str, Any]) -> str:
    slowest = summary.get("slowest") or []
    if not slowest:
        return ""
    rows = "".join(_row([item.get("path"), _number(item.get("time_ms"), 1)], numbers=1) for item in slowest)
    return (
        "<h2>Slowest images</h2>\n"
        '<p class="note">Processing time of each image in this run: decoding, its share of the model '
        "call, regions and drawing.</p>\n"
        f"<table>{_row(['image', 'milliseconds'], 'th', numbers=1)}{rows}</table>"
    )


# --- helpers --------------------------------------------------------------------------------------------


def _thumbnail(out_dir: Path, overlay: str | None) -> str | None:
    """A small JPEG of the overlay as a ``data:`` URI, or None when there is none or it cannot be read."""
    if not overlay:
        return None
    path = out_dir / overlay
    try:
        image = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_COLOR)
    except (OSError, ValueError, cv2.error):
        return None
    if image is None:
        return None
    scale = THUMBNAIL_SIDE / max(image.shape[:2])
    if scale < 1.0:
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
    if not ok:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


def _row(cells: Sequence[Any], tag: str = "td", numbers: int | None = None) -> str:
    """A table row; cells from index ``numbers`` on are right-aligned numbers."""
    out = []
    for index, cell in enumerate(cells):
        css = ' class="number"' if numbers is not None and index >= numbers else ""
        out.append(f"<{tag}{css}>{_text(cell)}</{tag}>")
    return "<tr>" + "".join(out) + "</tr>"


def _text(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _number(value: Any, digits: int) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"


def _href(relative: str) -> str:
    """A link to a file inside the output folder, relative to the page (``report.html`` sits there too)."""
    return html.escape(quote(relative, safe="/"))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
