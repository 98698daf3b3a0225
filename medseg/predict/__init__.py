"""From a folder of DICOM files to per-slice ICH probabilities and a report
(``python -m medseg.predict``): discover → read and group series → training's eval
preprocessing → model (checkpoint or export) → CSV, JSON, HTML with per-series strips."""
