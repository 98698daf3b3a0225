"""The Secondary Capture series of one predicted series: one RGB image per flagged slice.

Which slices: every slice with a probability at or above the threshold; when none reaches it,
the slice with the highest P(any), so each SR has a capture that shows where the model looked
(its text says that nothing was flagged).

Why a Secondary Capture and not a Grayscale Softcopy Presentation State: a GSPS can carry the
text and the threshold, but not a colour saliency map (its graphic layers are lines and text), and
many PACS viewers ignore presentation states or apply them only on request, while every viewer
shows an SC image as it is. The cost is burned-in text, hence ``BurnedInAnnotation YES``.

Each image: the model input's first window (brain) as the model saw it (cropped, resized), scaled
up to :data:`SIDE` px; the Grad-CAM map that the report computed for this slice blended on top
(:class:`medseg.predict.saliency.ReportViews`: nothing is recomputed; a flagged slice beyond the
report's cap has no map and says so); below it a band with "NOT FOR DIAGNOSTIC USE", the model,
the slice, the window and the six probabilities (``*`` at or above the threshold).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import cv2
import highdicom as hd
import numpy as np
from pydicom import Dataset

from medseg.constants import LABELS
from medseg.predict.dicom_source import ModelIdentity, patient_orientation
from medseg.predict.saliency import ANY, ReportViews

SIDE = 512  # px of the longer image edge: burned-in text needs room at any model input size
FONT, SCALE, LINE = cv2.FONT_HERSHEY_SIMPLEX, 0.5, 20
CHARS = 58  # characters of one text line at SCALE on SIDE px
WARNING = "NOT FOR DIAGNOSTIC USE"
MAP_ALPHA = 0.45  # the map's weight where it is 1


@dataclass
class CaptureSlice:
    """One slice to capture: ``index`` head to foot, the model input's first window as uint8
    [H, W], its six probabilities and the report's saliency map (None: none)."""

    index: int
    image: np.ndarray
    probs: np.ndarray
    saliency: np.ndarray | None


@dataclass
class SeriesCaptures:
    """The slices to capture of one series; ``flagged`` False: none reached the threshold (the
    top P(any) slice is captured); ``map_text``: the method, or why a slice has no map."""

    series_id: str
    n_slices: int
    slices: list[CaptureSlice]
    flagged: bool
    window: str
    method: str
    note: str


class CaptureCollector:
    """The ``on_series`` callback of predict when DICOM outputs are asked for: runs the report's
    :class:`ReportViews` and keeps the slices to capture while the model input is in memory.
    ``series`` lines up with the predicted results."""

    def __init__(self, views: ReportViews):
        self.views = views
        self.series: list[SeriesCaptures] = []

    def __call__(self, series, probs: np.ndarray) -> None:
        self.views(series, probs)
        shown = self.views.views[-1]
        by_index = {s.index: s for s in shown.slices}
        flagged = np.flatnonzero((probs >= self.views.threshold).any(axis=1))
        chosen = [int(i) for i in flagged] if len(flagged) else [int(np.argmax(probs[:, ANY]))]
        scale = 255.0 / (self.views.hi - self.views.lo)
        slices = []
        for i in chosen:
            if i in by_index:
                view = by_index[i]
                slices.append(CaptureSlice(i, view.image, probs[i].copy(), view.saliency))
            else:
                image = np.clip(np.rint((series.image[i, self.views.channel] - self.views.lo) * scale), 0, 255).astype(np.uint8)
                slices.append(CaptureSlice(i, image, probs[i].copy(), None))
        note = shown.note or f"no map: not among the report's {shown.cap} large slices"
        self.series.append(SeriesCaptures(series.series_id, len(probs), slices, bool(len(flagged)), shown.window,
                                          shown.method, note))


def _ascii(text: str) -> str:
    return text.replace("×", "x").encode("ascii", "replace").decode("ascii")  # Hershey fonts draw ASCII only


def caption(capture: SeriesCaptures, item: CaptureSlice, threshold: float, identity: ModelIdentity) -> list[str]:
    """The burned-in text lines of one capture."""
    probs = [f"{label} {item.probs[j]:.3f}{'*' if item.probs[j] >= threshold else ''}" for j, label in enumerate(LABELS)]
    lines = [f"{WARNING} - research model output",
             f"{identity.name} sha256:{identity.sha256[:12]}",
             f"slice {item.index + 1}/{capture.n_slices}  window {capture.window}  * = p >= {threshold:g}"]
    lines += ["  ".join(probs[k:k + 2]) for k in range(0, len(probs), 2)]
    if not capture.flagged:
        lines.append("no slice at or above the threshold: highest P(any) shown")
    map_text = f"map: {capture.method}" if item.saliency is not None else capture.note
    lines += textwrap.wrap(map_text, CHARS)[:2]
    return [_ascii(line)[:CHARS + 10] for line in lines]


def render(item: CaptureSlice, lines: list[str]) -> np.ndarray:
    """RGB uint8 [H', W', 3]: the slice (with its map) scaled to :data:`SIDE` px, the warning on
    it, and ``lines`` in a band below."""
    h, w = item.image.shape
    size = (max(1, round(w * SIDE / max(h, w))), max(1, round(h * SIDE / max(h, w))))
    gray = cv2.resize(item.image, size, interpolation=cv2.INTER_LINEAR)
    rgb = np.repeat(gray[..., None], 3, axis=2).astype(np.float32)
    if item.saliency is not None:
        cam = cv2.resize(item.saliency.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
        heat = cv2.applyColorMap(np.clip(cam * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
        alpha = MAP_ALPHA * np.clip(cam, 0, 1)[..., None]
        rgb = rgb * (1 - alpha) + heat.astype(np.float32) * alpha
    image = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    cv2.putText(image, WARNING, (8, 24), FONT, 0.7, (255, 64, 64), 2, cv2.LINE_AA)
    band = np.zeros((LINE * len(lines) + 10, size[0], 3), np.uint8)
    for k, line in enumerate(lines):
        cv2.putText(band, line, (6, LINE * (k + 1)), FONT, SCALE, (255, 255, 255), 1, cv2.LINE_AA)
    return np.ascontiguousarray(np.vstack([image, band]))


def build_capture(ref: Dataset, header: Dataset, sources: list[Dataset], pixels: np.ndarray, series_uid: str,
                  sop_uid: str, series_number: int, instance_number: int, description: str) -> hd.sc.SCImage:
    """One SC image in the study of ``ref`` (patient and study modules); ``header``: the slice's
    source header (its orientation); ``sources``: its referencable source headers."""
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref, pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", series_instance_uid=series_uid, series_number=series_number,
        sop_instance_uid=sop_uid, instance_number=instance_number, manufacturer="medseg",
        patient_orientation=patient_orientation(header), series_description=description)
    sc.Laterality = ""  # type 2C of the General Series module: the head is not a paired structure
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = f"{WARNING}: probabilities and saliency map of a research model"
    sc.DerivationDescription = "brain window of the model input, Grad-CAM overlay, probabilities burned in"
    if sources:
        items = []
        for h in sources:
            item = Dataset()
            item.ReferencedSOPClassUID = h.SOPClassUID
            item.ReferencedSOPInstanceUID = h.SOPInstanceUID
            items.append(item)
        sc.SourceImageSequence = items
    return sc
