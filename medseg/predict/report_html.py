"""report.html: what a reader looks at after predict, in one self-contained page.

Every image is inline (``data:`` URIs) and the page loads nothing, so it can be mailed or opened
offline. Per study: a table of every series triage met (predicted or why not, geometry, series
maximum per subtype). Per predicted series: the slices at or above the threshold and the top-k by
P(any), shown large in the first window of the model input with a saliency overlay
(:mod:`medseg.predict.saliency`) and their six probabilities, then the thumbnail strip over
per-subtype bars. Every string taken from a DICOM header or a path is escaped.

The strip figure follows ``medseg.outputs.report`` (matplotlib ``Figure`` with the Agg canvas, no
pyplot state); it is also written as ``series_<k>.png`` beside the page. Slices with any
probability at or above the threshold are framed in red on the strip and their bars are red.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from medseg.constants import LABELS
from medseg.predict.discover import Skipped
from medseg.predict.saliency import SeriesViews, SliceView
from medseg.predict.tables import SeriesResult
from medseg.predict.triage import SeriesInfo
from medseg.utils.atomic import atomic_open, atomic_write_text

_SKIPPED_SHOWN = 100  # rows of skipped.csv repeated in the page; the CSV has them all
LARGE_PX = 384  # display width of a slice shown large
OVERLAY_ALPHA = 0.55  # opacity of the saliency colours where the map is 1
DASH = "—"
SHORT = {"epidural": "EDH", "intraparenchymal": "IPH", "intraventricular": "IVH", "subarachnoid": "SAH", "subdural": "SDH",
         "any": "any"}  # column heads of the study table, which must fit a screen
esc = html.escape


def figure_png(result: SeriesResult, threshold: float) -> bytes:
    """Thumbnail strip (flagged slices framed) above one bar row per subtype, as PNG bytes."""
    n = len(result.slice_ids)
    idx = np.arange(n)
    flagged = result.flagged(threshold)
    fig = Figure(figsize=(min(18.0, max(6.0, 0.32 * n)), 1.2 + 0.8 * len(LABELS)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1 + len(LABELS), 1, sharex=True, gridspec_kw={"hspace": 0.12, "height_ratios": [1.6] + [1] * len(LABELS)})
    strip = np.concatenate(list(result.thumbnails), axis=1)
    axes[0].imshow(strip, cmap="gray", vmin=0, vmax=255, aspect="auto", extent=(-0.5, n - 0.5, 0, 1))
    for i in np.flatnonzero(flagged):
        axes[0].add_patch(Rectangle((i - 0.5, 0), 1, 1, fill=False, edgecolor="red", linewidth=2))
    axes[0].set_yticks([])
    axes[0].set_title(f"{result.series_id}: {n} slices, {int(flagged.sum())} at or above {threshold:g} (framed)", fontsize=9)
    for ax, j in zip(axes[1:], range(len(LABELS))):
        p = result.probs[:, j]
        ax.bar(idx, p, width=0.8, color=np.where(p >= threshold, "tab:red", "tab:blue"))
        ax.axhline(threshold, color="grey", linestyle="--", linewidth=0.8)
        ax.set_ylim(0, 1)
        ax.set_yticks([0, 1])
        ax.tick_params(axis="y", labelsize=6)
        ax.set_ylabel(LABELS[j], rotation=0, ha="right", va="center", fontsize=8)
    axes[-1].set_xlim(-0.5, n - 0.5)
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlabel("slice index (head → foot)")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return buffer.getvalue()


def plot_series(result: SeriesResult, threshold: float, path: str) -> None:
    """:func:`figure_png` written atomically to ``path``."""
    with atomic_open(path, "wb") as fh:
        fh.write(figure_png(result, threshold))


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _png(image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"PNG encoding failed for an image of shape {image.shape}")
    return encoded.tobytes()


def _fit(image: np.ndarray) -> np.ndarray:
    """Shrink an image wider than the display to it (page size); smaller ones the browser scales up."""
    h, w = image.shape[:2]
    if w <= LARGE_PX:
        return image
    return cv2.resize(image, (LARGE_PX, max(1, round(h * LARGE_PX / w))), interpolation=cv2.INTER_AREA)


def overlay(gray: np.ndarray, saliency: np.ndarray) -> np.ndarray:
    """uint8 [H, W] slice + map in [0, 1] → BGR uint8: jet colours whose opacity follows the map,
    so the anatomy stays readable where the map is low."""
    base = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR).astype(np.float32)
    colours = cv2.applyColorMap(np.rint(saliency * 255).astype(np.uint8), cv2.COLORMAP_JET).astype(np.float32)
    alpha = (OVERLAY_ALPHA * saliency)[..., None]
    return np.clip(np.rint(base * (1 - alpha) + colours * alpha), 0, 255).astype(np.uint8)


def _num(value: float | None, spec: str) -> str:
    return DASH if value is None else format(value, spec)


def _text(value: str | None) -> str:
    return esc(value) if value else DASH


def _prob_cells(probs: np.ndarray | None, threshold: float) -> str:
    if probs is None:
        return "".join(f"<td>{DASH}</td>" for _ in LABELS)
    return "".join(f'<td class="{"num hit" if p >= threshold else "num"}">{p:.3f}</td>' for p in probs)


def _max_table(result: SeriesResult, threshold: float) -> str:
    cells = []
    for j, label in enumerate(LABELS):
        p = float(result.probs[:, j].max())
        style = ' class="num hit"' if p >= threshold else ' class="num"'
        cells.append(f"<tr><td>{esc(label)}</td><td{style}>{p:.3f}</td><td>{int(np.argmax(result.probs[:, j]))}</td>"
                     f"<td>{int((result.probs[:, j] >= threshold).sum())}</td></tr>")
    return ("<table><tr><th>subtype</th><th>series max</th><th>at slice</th><th>slices ≥ threshold</th></tr>"
            + "".join(cells) + "</table>")


def _rows_by_study(results: Sequence[SeriesResult], series_info: Sequence[SeriesInfo]
                   ) -> dict[str, list[tuple[SeriesInfo | None, int | None]]]:
    """Study id → (triage's entry, index into ``results``) per series, in the order met. A result
    finds its entry through ``result.series_info`` or else by (study, series) id; entries without
    a result are series not predicted, results without an entry are shown with "—"."""
    free: dict[tuple[str, str], list[int]] = {}
    for n, info in enumerate(series_info):
        free.setdefault((info.study_id, info.series_id), []).append(n)
    of_info: dict[int, int] = {}
    for k, result in enumerate(results):
        own = getattr(result, "series_info", None)
        if own is not None:
            n = next((n for n, info in enumerate(series_info) if info is own and n not in of_info), None)
        else:
            n = next((n for n in free.get((result.study_id, result.series_id), []) if n not in of_info), None)
        if n is not None:
            of_info[n] = k
    studies: dict[str, list[tuple[SeriesInfo | None, int | None]]] = {}
    for n, info in enumerate(series_info):
        studies.setdefault(info.study_id, []).append((info, of_info.get(n)))
    matched = set(of_info.values())
    for k, result in enumerate(results):
        if k not in matched:
            own = getattr(result, "series_info", None)
            studies.setdefault(result.study_id, []).append((own, k))
    return studies


def _notes(info: SeriesInfo | None, result: SeriesResult | None) -> list[str]:
    notes = list(info.notes) if info is not None else []
    return notes + [n for n in (result.notes if result is not None else []) if n not in notes]


def _study_table(rows: list[tuple[SeriesInfo | None, int | None]], results: Sequence[SeriesResult], threshold: float) -> str:
    fixed = ("series", "description", "predicted", "files", "slices", "kernel", "thickness (mm)", "tilt (°)", "spacing (mm)")
    head = ("<tr>" + "".join(f'<th rowspan="2">{h}</th>' for h in fixed)
            + f'<th colspan="{len(LABELS)}">series max</th><th rowspan="2">notes</th></tr>'
            + "<tr>" + "".join(f'<th title="{esc(label)}">{esc(SHORT.get(label, label))}</th>' for label in LABELS) + "</tr>")
    body = []
    for info, k in rows:
        result = results[k] if k is not None else None
        series_id = info.series_id if info is not None else result.series_id
        name = f'<a href="#series-{k}">{esc(series_id)}</a>' if k is not None else esc(series_id)
        if result is not None:
            predicted = "yes"
        else:
            predicted = f'<span class="no">no: {_text(info.reason)}</span>'
        files = info.files if info is not None else len(result.files)
        spacing = DASH
        if info is not None and info.spacing_mm is not None:
            spread = info.spacing_spread_mm
            spacing = f"{info.spacing_mm:.2f}" + (f"<br><small>range {spread:.2f}</small>" if spread else "")
        notes = "; ".join(esc(n) for n in _notes(info, result)) or DASH
        cells = [
            f'<td class="uid">{name}</td>', f"<td>{_text(info.description if info else None)}</td>",
            f'<td class="pred">{predicted}</td>', f'<td class="num">{files}</td>',
            f'<td class="num">{len(result.slice_ids) if result is not None else DASH}</td>',
            f'<td class="kernel">{_text(info.kernel if info else None)}</td>',
            f'<td class="num">{_num(info.thickness_mm if info else None, ".2f")}</td>',
            f'<td class="num">{_num(info.tilt_deg if info else None, ".1f")}</td>', f'<td class="num">{spacing}</td>',
            _prob_cells(result.probs.max(axis=0) if result is not None else None, threshold), f'<td class="notes">{notes}</td>',
        ]
        body.append("<tr>" + "".join(cells) + "</tr>")
    legend = ", ".join(f"{SHORT[label]} {label}" for label in LABELS if SHORT.get(label, label) != label)
    return (f'<div class="wide"><table class="series">{head}{"".join(body)}</table></div>'
            f'<p class="note">{esc(legend)}; values at or above {threshold:g} in red.</p>')


def _slice_figure(view: SliceView, result: SeriesResult, threshold: float) -> str:
    i = view.index
    position = float(result.positions[i])
    where = f", {position:.1f} mm" if np.isfinite(position) else ""
    alt = f"slice {i} of series {result.series_id}"
    images = [f'<img class="large" src="{data_uri(_png(_fit(view.image)))}" alt="{esc(alt)}">']
    flat = ""
    if view.saliency is not None:
        coloured = data_uri(_png(_fit(overlay(view.image, view.saliency))))
        images.append(f'<img class="large" src="{coloured}" alt="{esc("saliency on " + alt)}">')
        if not view.saliency.max() > 0:
            flat = '<p class="note">no region raised P(any) (map all zero)</p>'
    probs = "".join(f'<tr><td>{esc(label)}</td><td class="{"num hit" if p >= threshold else "num"}">{p:.3f}</td></tr>'
                    for label, p in zip(LABELS, view.probs))
    return (f'<figure class="slice"><div class="pair">{"".join(images)}</div><figcaption>'
            f"<b>slice {i}</b> of {len(result.slice_ids)}<br>head → foot{where}<br>"
            f'<span class="uid">id {esc(result.slice_ids[i])}</span>'
            f'{flat}<table class="probs">{probs}</table></figcaption></figure>')


def _views_html(views: SeriesViews | None, result: SeriesResult, threshold: float) -> str:
    if views is None:
        return '<p class="note">Large slices were not collected for this series.</p>'
    shown = len(views.slices)
    what = (f"{shown} slice(s): those with a probability at or above {threshold:g} and the {views.top_k} with the "
            f"highest P(any), head to foot")
    if views.candidates > shown:
        what += (f'. <b class="cap">Capped: {views.candidates} slices qualify; the {shown} with the highest P(any) '
                 f"are shown (at most {views.cap} per series)</b>")
    left = f"Left: window {esc(views.window)} (centre/width HU) of the model input."
    if views.note:
        right = f'<p class="warn">{esc(views.note)}</p>'
    else:
        right = ("<p>Right: saliency of P(any), " + esc(views.method) + ", scaled per slice "
                 '(<span class="legend"></span> low → high): where the model\'s P(any) rests, not how high it is.</p>')
    figures = "".join(_slice_figure(v, result, threshold) for v in views.slices)
    return f"<p>{what}. {left}</p>{right}<div class=\"views\">{figures}</div>"


def _series_section(k: int, result: SeriesResult, info: SeriesInfo | None, views: SeriesViews | None,
                    threshold: float, figure: bytes) -> str:
    title = info.description if info is not None and info.description else "series"
    notes = "".join(f"<li>{esc(n)}</li>" for n in _notes(info, result))
    flagged = int(result.flagged(threshold).sum())
    strip_alt = esc("slices and probabilities of " + result.series_id)
    return (
        f'<section class="series" id="series-{k}">'
        f'<h3>{esc(title)} <small class="uid">{esc(result.series_id)}</small></h3>'
        f"<p>patient {esc(result.patient_id)}, {len(result.slice_ids)} slices predicted, {flagged} with a probability at "
        f"or above {threshold:g}.</p>" + (f"<ul>{notes}</ul>" if notes else "") + _max_table(result, threshold)
        + "<h4>Slices shown large</h4>" + _views_html(views, result, threshold)
        + f'<h4>All slices</h4><figure><img class="strip" src="{data_uri(figure)}" alt="{strip_alt}"></figure></section>'
    )


_STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 6px;font-size:.9em}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.hit{color:#b00;font-weight:bold}.no{color:#666}.uid{font-size:.8em;color:#555;word-break:break-all}
.wide{overflow-x:auto}table.series{width:100%;font-size:.9em}table.series td{max-width:12em;overflow-wrap:anywhere}
table.series td.num,table.series td.kernel{white-space:nowrap}table.series td.uid{min-width:8em}
table.series td.pred{min-width:8em}table.series td.notes{min-width:12em;max-width:28em;font-size:.85em}
section.study{border-top:3px solid #444;margin-top:2em}section.series{margin:1.5em 0 2.5em 1em}
.views{display:flex;flex-wrap:wrap;gap:1em}figure.slice{margin:0;border:1px solid #ddd;padding:.5em;display:flex;gap:.8em}
figcaption{min-width:13em}
.pair{display:flex;gap:4px}img.large{width:""" + str(LARGE_PX) + """px;height:auto;background:#000}
img.strip{max-width:100%}table.probs td{padding:1px 6px}.warn{color:#a60}.note{color:#666;font-size:.9em}
.cap{color:#a60}.legend{display:inline-block;width:6em;height:.8em;vertical-align:middle;
background:linear-gradient(to right,#00007f,#0000ff,#00ffff,#7fff7f,#ffff00,#ff0000,#7f0000)}"""


def write_report(out_dir: str, results: list[SeriesResult], skipped: list[Skipped], threshold: float,
                 info: dict[str, Any], series_info: Sequence[SeriesInfo] = (),
                 views: Sequence[SeriesViews] | None = None) -> list[str]:
    """Write ``report.html`` (self-contained) and ``series_<k>.png`` into ``out_dir``; returns the
    files written. ``views`` (:class:`medseg.predict.saliency.ReportViews`) lines up with ``results``."""
    if views is not None:
        if len(views) != len(results) or any(v.series_id != r.series_id for v, r in zip(views, results)):
            raise ValueError("report views do not line up with the predicted series")
    figures = []
    for k, result in enumerate(results):
        figures.append(figure_png(result, threshold))
        with atomic_open(os.path.join(out_dir, f"series_{k:03d}.png"), "wb") as fh:
            fh.write(figures[-1])
    studies = []
    for study_id, rows in _rows_by_study(results, series_info).items():
        patients = sorted({results[k].patient_id for _, k in rows if k is not None})
        sections = "".join(
            _series_section(k, results[k], row_info, views[k] if views is not None else None, threshold, figures[k])
            for row_info, k in rows if k is not None)
        studies.append(
            f'<section class="study"><h2>Study <span class="uid">{esc(study_id)}</span></h2>'
            + (f"<p>patient {', '.join(esc(p) for p in patients)}</p>" if patients else "")
            + _study_table(rows, results, threshold) + sections + "</section>")
    skipped_rows = "".join(f"<tr><td>{esc(s.file)}</td><td class=\"uid\">{_text(getattr(s, 'series_id', ''))}</td>"
                           f"<td>{esc(s.reason)}</td></tr>" for s in sorted(skipped, key=lambda s: s.file)[:_SKIPPED_SHOWN])
    more = f"<p>… {len(skipped) - _SKIPPED_SHOWN} more in skipped.csv</p>" if len(skipped) > _SKIPPED_SHOWN else ""
    text = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ICH prediction report</title>
<style>{_STYLE}</style></head><body>
<h1>Intracranial hemorrhage: per-slice probabilities</h1>
<p>{len(results)} series, {sum(len(r.slice_ids) for r in results)} slices predicted from {esc(str(info.get('dicom_dir', '')))};
model {esc(str(info.get('model', '')))} ({esc(str(info.get('model_kind', '')))}); threshold {threshold:g}.
{len(skipped)} file(s) skipped (see <a href="skipped.csv">skipped.csv</a>). <b>Research output, not a diagnosis.</b></p>
{''.join(studies)}
<h2>Skipped files</h2>
<table><tr><th>file</th><th>series</th><th>reason</th></tr>{skipped_rows}</table>{more}
</body></html>
"""
    atomic_write_text(os.path.join(out_dir, "report.html"), text)
    return [f"series_{k:03d}.png" for k in range(len(results))] + ["report.html"]
