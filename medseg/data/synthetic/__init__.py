"""Synthetic RSNA-2019-style head-CT cohort: the embedded default data of the project.

``python -m medseg.data.synthetic --out DIR --series N --seed S [--size 512] [--test_fraction F]
[--workers W] [--sites classic|all|a,b]`` writes the Kaggle layout: ``stage_2_train/ID_<9 hex>.dcm`` and
``stage_2_test/…`` (flat, one DICOM file per slice, file stem = SOPInstanceUID),
``stage_2_train.csv``, ``stage_2_sample_submission.csv`` and ``stage_2_test_truth.csv``.

Sites. Each series is acquired at a scanner site drawn among ``--sites``; the site's preset plus
per-series jitter sets noise, kernel, slice thickness, hyperdense mimics, skull base, streaks,
motion, head placement, field of view, matrix, HU offset and harder bleeds (``sites``,
``mimics``, ``scanner``). ``classic``, the default, is the generator before sites existed,
byte for byte.

Truth. ``synthesize_series(seed, index, size)`` is a pure function: it returns the true HU volume
(int16, slices in InstanceNumber order), the lesion masks, the labels and the identifiers, so a
reader can be checked against it voxel for voxel.

Label rule. A slice is positive for a subtype when that subtype's lesion mask covers at least
``min_positive_pixels(size)`` pixels on it: 48 at 512 px, scaled with the pixel area
(``round(48 * (size / 512) ** 2)``, about 12 mm²), never fewer than 2. ``any`` is the OR of the
five subtypes. Lesion ends fade (30-55 % contrast on the first and last labelled slice).

Pixel quirks (one per series; true HU always in [-1000, 3000], air outside the field of view):

- ``signed_padded``: PixelRepresentation 1, intercept -1024, raw = HU + 1024, pixels outside the
  circular field of view stored as -2000 (PixelPaddingValue -2000);
- ``signed_zero``: PixelRepresentation 1, intercept 0, raw = HU;
- ``unsigned``: PixelRepresentation 0, BitsStored 12, intercept -1024, raw = HU + 1024;
- ``bug12``: the RSNA 12-bit intercept bug: PixelRepresentation 0, BitsStored 12, intercept 0,
  raw = HU mod 4096.

Decoding that recovers the true HU exactly: if BitsStored == 12, PixelRepresentation == 0 and
RescaleIntercept > -100, take x = raw + 1000, subtract 4096 where x >= 4096, and HU = x - 1000;
otherwise HU = raw * RescaleSlope + RescaleIntercept. Then clip HU below at -1000 (padding
becomes air; no true value changes).

Other header quirks: WindowCenter/WindowWidth single-valued, multi-valued (take the first) or
absent, per series; z ascending with InstanceNumber in some series and descending in others
(file names are random: order slices by ImagePositionPatient); some patients have several
studies; exactly one train file has truncated PixelData (it parses, ``pixel_array`` fails) and
still has its label rows; a few train slices are listed twice in ``stage_2_train.csv``.
"""

from medseg.data.synthetic.cohort import format_summary, generate_cohort
from medseg.data.synthetic.plan import SeriesPlan, plan_series
from medseg.data.synthetic.quirks import PIXEL_QUIRKS, WINDOW_MODES
from medseg.data.synthetic.series import SyntheticSeries, min_positive_pixels, synthesize_series

__all__ = [
    "PIXEL_QUIRKS", "WINDOW_MODES", "SeriesPlan", "SyntheticSeries", "format_summary", "generate_cohort",
    "min_positive_pixels", "plan_series", "synthesize_series",
]
