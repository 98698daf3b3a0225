"""Optional ONNX export of the whole-model graph through paddle2onnx, checked with onnxruntime.

Neither package is a project requirement: ``export_onnx`` says so in its error when paddle2onnx is
missing, and skips the numeric check (saying so) when onnxruntime is. ``optimize_tool="None"``
because paddle2onnx otherwise pip-installs an optimiser at run time.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from medseg.export.inference import ExportedModel
from medseg.export.meta import ExportError, graph_files, read_meta

ONNX_FILE = "model.onnx"


def export_onnx(folder: str, opset: int = 13, atol: float = 1e-4) -> str:
    """Convert ``folder``'s whole-model graph to ``folder/model.onnx``; return a one-line summary."""
    if importlib.util.find_spec("paddle2onnx") is None:
        raise ExportError("--onnx needs paddle2onnx (pip install paddle2onnx); the Paddle Inference export is complete without it")
    import paddle2onnx

    program, params = graph_files(folder, "series")
    target = os.path.join(folder, ONNX_FILE)
    tmp = os.path.join(folder, f".{ONNX_FILE}.tmp")
    try:
        paddle2onnx.export(program, params, tmp, opset_version=opset, enable_onnx_checker=True, optimize_tool="None")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if importlib.util.find_spec("onnxruntime") is None:
        return f"wrote {target} (onnxruntime not installed: outputs not checked)"
    return f"wrote {target}; {check_onnx(folder, atol)}"


def check_onnx(folder: str, atol: float = 1e-4) -> str:
    """Compare onnxruntime with Paddle Inference on two slice counts, one batch padded."""
    import onnxruntime

    meta = read_meta(folder)
    rng = np.random.default_rng(0)
    h, w = meta.height or 64, meta.width or 64
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # paddle2onnx leaves unused constants that ORT warns about one by one
    session = onnxruntime.InferenceSession(os.path.join(folder, ONNX_FILE), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    reference = ExportedModel(folder)
    worst = 0.0
    for batch, slices in ((2, 5), (1, 9)):
        image = rng.normal(size=(batch, slices, meta.channels, h, w)).astype(np.float32)
        mask = np.ones((batch, slices), dtype=bool)
        if batch > 1:
            mask[-1, slices // 2:] = False  # the second series is shorter: padded
        got = session.run(None, dict(zip(names, (image, mask))))[0]
        worst = max(worst, float(np.abs(got - reference(image, mask))[mask].max()))
    if worst > atol:
        raise ExportError(f"{folder}/{ONNX_FILE}: onnxruntime differs from Paddle Inference by {worst:.3g} (> {atol:g})")
    return f"onnxruntime matches Paddle Inference on 5 and 9 slices, with padding (max abs diff {worst:.2e})"
