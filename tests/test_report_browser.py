"""report.html in a real browser (headless Debian chromium, installed by `make browser`): every
image decodes, the page loads nothing from outside itself, and header strings stay text.

The page is copied alone into an empty folder (an image that is not inline cannot load there)
with a probe script appended; chromium runs it on load and ``--dump-dom`` returns what it saw.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from medseg.constants import LABELS
from medseg.predict.__main__ import main as predict_main
from medseg.predict.discover import Skipped
from medseg.predict.report_html import write_report
from medseg.predict.saliency import ANY, MAX_SHOWN, SeriesViews, SliceView, shown_slices
from medseg.predict.tables import SeriesResult
from medseg.predict.triage import SeriesInfo
from tests.predict_fixtures import write_checkpoint, write_config, write_study

pytestmark = pytest.mark.slow  # starts a browser

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--virtual-time-budget=10000")
PROBE = """<script>window.addEventListener("load", () => {
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({
    images: [...document.images].map(i => ({alt: i.alt, inline: i.getAttribute("src").startsWith("data:image/png;base64,"),
                                             complete: i.complete, width: i.naturalWidth, height: i.naturalHeight})),
    scripts: document.scripts.length,
    external: [...document.querySelectorAll("[src], link, iframe, object, embed")]
      .map(e => e.getAttribute("src") || e.outerHTML.slice(0, 80)).filter(s => !s.startsWith("data:")),
    resources: performance.getEntriesByType("resource").map(e => e.name),
    text: document.body.innerText,
  });
  document.body.appendChild(out);
});</script>"""
HOSTILE = '<img src=x onerror="document.title=1">'


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed: run `make browser` (apt-get install chromium, as root)")
    return path


def browse(page: str, tmp_path) -> dict:
    """What the probe saw after chromium loaded ``page`` (a copy, alone in a fresh folder)."""
    folder = tmp_path / "browser"
    folder.mkdir()
    copy = folder / "page.html"
    with open(page, encoding="utf-8") as fh:
        text = fh.read()
    assert text.count("</body>") == 1
    copy.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    run = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={folder / 'profile'}", "--dump-dom", copy.as_uri()],
                         capture_output=True, text=True, timeout=180)
    found = re.search(r'<pre id="probe">(.*?)</pre>', run.stdout, re.S)
    assert found, f"chromium exited {run.returncode} without running the probe: {run.stderr[-1000:]}"
    return json.loads(html.unescape(found.group(1)))


def check_self_contained(seen: dict) -> None:
    assert seen["images"], "no image in the page"
    broken = [i["alt"] for i in seen["images"] if not (i["inline"] and i["complete"] and i["width"] > 0 and i["height"] > 0)]
    assert not broken, f"images that did not load inline: {broken}"
    assert seen["scripts"] == 1  # the probe; the product has none
    assert seen["external"] == [] and seen["resources"] == []


def test_predict_report_in_the_browser(tmp_path):
    """End to end: predict on a study (synthetic series + real CT files) with a checkpoint, so
    every large slice carries a Grad-CAM overlay."""
    config = write_config(str(tmp_path / "tiny.yml"))
    checkpoint = write_checkpoint(config, str(tmp_path / "ckpt"))
    write_study(str(tmp_path / "dicom"))
    out = tmp_path / "out"
    assert predict_main(["--config", config, "--model", checkpoint, "--dicom_dir", str(tmp_path / "dicom"), "--out", str(out),
                         "--no_progress"]) == 0
    seen = browse(str(out / "report.html"), tmp_path)
    check_self_contained(seen)

    frame = pd.read_csv(out / "predictions.csv", dtype={"series_id": str})
    large = sum(len(shown_slices(rows[list(LABELS)].to_numpy(), 0.5)[0]) for _, rows in frame.groupby("series_id", sort=False))
    alts = [i["alt"] for i in seen["images"]]
    assert sum(a.startswith("slice ") for a in alts) == large
    assert sum(a.startswith("saliency on slice ") for a in alts) == large  # one map per large slice
    assert sum(a.startswith("slices and probabilities of ") for a in alts) == frame["series_id"].nunique()
    assert "Grad-CAM" in seen["text"]


def _result(series_id: str, study_id: str, probs: np.ndarray) -> SeriesResult:
    n = len(probs)
    rng = np.random.default_rng(n)
    return SeriesResult(series_id, study_id, "patient <b>", [f"f{i}" for i in range(n)], [f"{series_id}_{i}" for i in range(n)],
                        np.linspace(80.0, 0.0, n), probs, rng.integers(0, 256, (n, 16, 16), dtype=np.uint8), [f"note {HOSTILE}"])


def _views(result: SeriesResult, threshold: float, saliency: bool) -> SeriesViews:
    shown, candidates = shown_slices(result.probs, threshold)
    rng = np.random.default_rng(0)
    slices = [SliceView(int(i), rng.integers(0, 256, (48, 48), dtype=np.uint8), result.probs[i],
                        rng.random((48, 48)).astype(np.float32) if saliency else None) for i in shown]
    note = "" if saliency else "no saliency: an exported model is a static inference graph without gradients"
    method = "Grad-CAM on the CNN's last feature map" if saliency else ""
    return SeriesViews(result.series_id, slices, candidates, MAX_SHOWN, 3, "40/80", method, note)


def test_triage_table_caps_and_escaping_in_the_browser(tmp_path):
    """write_report alone: a study with a predicted series (capped), one predicted without
    saliency, one not predicted; DICOM strings carrying markup must show as text."""
    threshold = 0.5
    hot = np.full((20, len(LABELS)), 0.1)
    hot[:, ANY] = np.linspace(0.55, 0.95, 20)  # every slice flagged: more than the cap
    cool = np.full((5, len(LABELS)), 0.2)
    results = [_result("1.2.3", "study <i>", hot), _result("1.2.4", "study <i>", cool)]
    infos = [
        SeriesInfo("1.2.3", "study <i>", f"HEAD {HOSTILE}", 20, True, kernel="STANDARD", thickness_mm=5.0, tilt_deg=18.5),
        SeriesInfo("1.2.9", "study <i>", "Scout", 1, False, reason=f"localizer {HOSTILE}", notes=["ImageType LOCALIZER"]),
        SeriesInfo("1.2.4", "study <i>", "HEAD soft", 5, True),
    ]
    views = [_views(results[0], threshold, True), _views(results[1], threshold, False)]
    out = tmp_path / "out"
    out.mkdir()
    write_report(str(out), results, [Skipped(f"bad {HOSTILE}.dcm", "not a DICOM file")], threshold, {"dicom_dir": "d"},
                 series_info=infos, views=views)
    seen = browse(str(out / "report.html"), tmp_path)
    check_self_contained(seen)
    text = seen["text"]
    assert text.count(HOSTILE) >= 4  # description, reason, note, skipped file: shown, not parsed
    alts = [i["alt"] for i in seen["images"]]
    assert sum(a.startswith("slice ") for a in alts) == MAX_SHOWN + 3  # capped series + the top 3 of the cool one
    assert sum(a.startswith("saliency on ") for a in alts) == MAX_SHOWN
    assert f"Capped: 20 slices qualify; the {MAX_SHOWN} with the highest P(any) are shown" in text
    assert "static inference graph without gradients" in text
    assert "no: localizer" in text and "18.5" in text and "STANDARD" in text
    page = (out / "report.html").read_text(encoding="utf-8")
    scout_row = re.search(r"<tr><td class=\"uid\">1\.2\.9</td>.*?</tr>", page).group(0)
    assert scout_row.count(">—</td>") == len(LABELS) + 5  # probabilities, slices, kernel, thickness, tilt, spacing
