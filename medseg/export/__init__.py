"""Deployment export: a checkpoint → Paddle Inference graphs (``python export.py``) and the
wrapper that runs them (:class:`ExportedModel`, used by ``medseg.predict``)."""

from medseg.export.inference import ExportedModel, create_predictor, run_predictor
from medseg.export.meta import ExportError, ExportMeta, is_export_dir, read_meta
from medseg.export.save import ExportResult, export_model

__all__ = [
    "ExportError", "ExportMeta", "ExportResult", "ExportedModel", "create_predictor", "export_model",
    "is_export_dir", "read_meta", "run_predictor",
]
