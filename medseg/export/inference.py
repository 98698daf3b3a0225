"""Run an exported model with Paddle Inference (``paddle.inference.Config`` / ``create_predictor``).

:class:`ExportedModel` takes numpy batches in the layout of docs/design.md and returns
probabilities. It runs the encoder graph with oneDNN (exact and ~10× faster than without on
CPU) over the real slices only, in chunks that bound memory, and the small head graph without
oneDNN (whose kernels miscompute the head's dynamic positional table, see ``graph.py``).
"""

from __future__ import annotations

import numpy as np
from paddle import inference

from medseg.engine.tta import TTA, predict_views
from medseg.export.meta import ExportError, ExportMeta, graph_files, read_meta
from medseg.outputs.calibrate import apply_calibration, load_calibration


def create_predictor(folder: str, graph: str, threads: int = 1, onednn: bool = False) -> inference.Predictor:
    """A CPU predictor for one graph of an export folder."""
    program, params = graph_files(folder, graph)
    config = inference.Config(program, params)
    config.disable_gpu()
    config.disable_glog_info()
    config.set_cpu_math_library_num_threads(max(1, int(threads)))
    if onednn:
        config.enable_onednn()
    else:
        config.disable_onednn()
    return inference.create_predictor(config)


def run_predictor(predictor: inference.Predictor, *inputs: np.ndarray) -> np.ndarray:
    """Feed ``inputs`` in the order of the graph's inputs; return its single output."""
    names = predictor.get_input_names()
    if len(names) != len(inputs):
        raise ValueError(f"graph takes {len(names)} inputs ({', '.join(names)}), got {len(inputs)}")
    for name, value in zip(names, inputs):
        handle = predictor.get_input_handle(name)
        handle.reshape(list(value.shape))
        handle.copy_from_cpu(np.ascontiguousarray(value))
    predictor.run()
    return predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()


class ExportedModel:
    """``model(image [B, S, C, H, W] float32, mask [B, S] bool) → probabilities [B, S, 6]``.

    Padded positions of the output are 0.5 and carry no meaning (drop them with the mask).
    ``chunk_size`` (slices per encoder run) defaults to the exported model's. ``tta``: test-time
    views (:mod:`medseg.engine.tta`), all run as one batch through both graphs and averaged
    before the calibration.
    """

    kind = "export"

    def __init__(self, folder: str, threads: int = 1, chunk_size: int | None = None, tta: TTA | None = None):
        self.folder = folder
        self.tta = tta
        self.meta: ExportMeta = read_meta(folder)
        self.chunk_size = chunk_size if chunk_size is not None else self.meta.chunk_size
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ExportError(f"{folder}: chunk size must be a positive number of slices, got {self.chunk_size}")
        self.encoder = create_predictor(folder, "encoder", threads, onednn=True)
        self.head = create_predictor(folder, "head", threads, onednn=False)
        self.calibration = load_calibration(folder, tta)  # the checkpoint's, copied by export_model

    def _check(self, image: np.ndarray, mask: np.ndarray) -> None:
        meta = self.meta
        expected = [meta.channels, meta.height, meta.width]
        if image.ndim != 5 or any(e is not None and e != g for e, g in zip(expected, image.shape[2:])):
            raise ExportError(f"{self.folder}: input must be [B, S, {', '.join(str(e or '?') for e in expected)}], got {list(image.shape)}")
        if mask.shape != image.shape[:2]:
            raise ExportError(f"{self.folder}: mask shape {list(mask.shape)} does not match image [B, S] = {list(image.shape[:2])}")

    def encode(self, slices: np.ndarray) -> np.ndarray:
        """Real slices ``[N, C, H, W]`` → features ``[N, D]``, ``chunk_size`` slices per run."""
        step = len(slices) if self.chunk_size is None else self.chunk_size
        parts = [run_predictor(self.encoder, slices[i:i + step]) for i in range(0, len(slices), max(step, 1))]
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def probabilities(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The graphs' uncalibrated probabilities of one batch (no TTA)."""
        features = np.zeros((*mask.shape, self.meta.feature_dim), dtype=np.float32)
        if mask.any():
            features[mask] = self.encode(image[mask])
        return run_predictor(self.head, features, mask)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        image = np.asarray(image, dtype=np.float32)
        mask = np.asarray(mask, dtype=bool)
        self._check(image, mask)
        probs = predict_views(self.probabilities, image, mask, self.tta, outputs="probabilities")
        return apply_calibration(probs, self.calibration)
