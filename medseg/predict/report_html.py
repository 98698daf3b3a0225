"""report.html + one PNG per series: slice thumbnails over per-subtype probability bars.

Same figure conventions as ``medseg.outputs.report`` (matplotlib ``Figure`` with the Agg canvas,
no pyplot state, atomic PNG writes). Slices with any probability at or above the threshold are
framed in red on the thumbnail strip and their bars are red.
"""

from __future__ import annotations

import html
import os
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from medseg.constants import LABELS
from medseg.predict.discover import Skipped
from medseg.predict.tables import SeriesResult
from medseg.utils.atomic import atomic_open, atomic_write_text

_SKIPPED_SHOWN = 100  # rows of skipped.csv repeated in the page; the CSV has them all


def _save(fig: Figure, path: str) -> None:
    FigureCanvasAgg(fig)
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=90, bbox_inches="tight")


def plot_series(result: SeriesResult, threshold: float, path: str) -> None:
    """Thumbnail strip (flagged slices framed) above one bar row per subtype."""
    n = len(result.slice_ids)
    idx = np.arange(n)
    flagged = result.flagged(threshold)
    fig = Figure(figsize=(min(18.0, max(6.0, 0.32 * n)), 1.2 + 0.8 * len(LABELS)))
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
    axes[-1].set_xlabel("slice index (head → foot)")
    _save(fig, path)


def _max_table(result: SeriesResult, threshold: float) -> str:
    esc = html.escape
    cells = []
    for j, label in enumerate(LABELS):
        p = float(result.probs[:, j].max())
        style = ' class="hit"' if p >= threshold else ""
        cells.append(f"<tr><td>{esc(label)}</td><td{style}>{p:.3f}</td><td>{int(np.argmax(result.probs[:, j]))}</td>"
                     f"<td>{int((result.probs[:, j] >= threshold).sum())}</td></tr>")
    return ("<table><tr><th>subtype</th><th>series max</th><th>at slice</th><th>slices ≥ threshold</th></tr>"
            + "".join(cells) + "</table>")


def write_report(out_dir: str, results: list[SeriesResult], skipped: list[Skipped], threshold: float,
                 info: dict[str, Any]) -> list[str]:
    """Write the PNGs and ``report.html`` into ``out_dir``; returns the files written."""
    esc = html.escape
    written, sections = [], []
    for k, result in enumerate(results):
        name = f"series_{k:03d}.png"
        plot_series(result, threshold, os.path.join(out_dir, name))
        written.append(name)
        notes = "".join(f"<li>{esc(n)}</li>" for n in result.notes)
        sections.append(
            f'<section><h2>{esc(result.series_id)}</h2><p>study {esc(result.study_id)}, patient {esc(result.patient_id)}, '
            f"{len(result.slice_ids)} slices</p>{_max_table(result, threshold)}"
            + (f"<ul>{notes}</ul>" if notes else "")
            + f'<figure><img src="{name}" alt="slices and probabilities of {esc(result.series_id)}"></figure></section>'
        )
    skipped_rows = "".join(f"<tr><td>{esc(s.file)}</td><td>{esc(s.reason)}</td></tr>" for s in sorted(skipped, key=lambda s: s.file)[:_SKIPPED_SHOWN])
    more = f"<p>… {len(skipped) - _SKIPPED_SHOWN} more in skipped.csv</p>" if len(skipped) > _SKIPPED_SHOWN else ""
    text = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ICH prediction report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:.5em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px}}td.hit{{color:#b00;font-weight:bold}}img{{max-width:100%}}
section{{margin-bottom:2em}}</style></head><body>
<h1>Intracranial hemorrhage: per-slice probabilities</h1>
<p>{len(results)} series, {sum(len(r.slice_ids) for r in results)} slices from {esc(str(info.get('dicom_dir', '')))};
model {esc(str(info.get('model', '')))} ({esc(str(info.get('model_kind', '')))}); threshold {threshold:g}.
{len(skipped)} file(s) skipped (see <a href="skipped.csv">skipped.csv</a>). Research output, not a diagnosis.</p>
{''.join(sections)}
<h2>Skipped files</h2>
<table><tr><th>file</th><th>reason</th></tr>{skipped_rows}</table>{more}
</body></html>
"""
    atomic_write_text(os.path.join(out_dir, "report.html"), text)
    return written + ["report.html"]
