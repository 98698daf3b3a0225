"""``export_model``: a training checkpoint → a deployable folder of Paddle Inference graphs.

Layout of ``save_dir`` (written to a hidden temporary folder and renamed into place, so a
killed export never leaves a half-written model):

* ``model.json`` / ``model.pdiparams``: the whole model, ``(image [B, S, C, H, W], mask [B, S])
  → probabilities [B, S, 6]`` with B and S dynamic (for consumers that want one graph; run it
  with oneDNN off, see ``medseg.export.graph``);
* ``encoder.*`` and ``head.*``: the same model in two graphs, what :class:`ExportedModel` runs;
* ``export.json``: input shape, windows, eval transforms, labels and provenance;
* ``calibration.json``: the checkpoint's per-class temperatures when it has them (applied by
  :class:`ExportedModel`; the single ``model.*`` graph and ONNX give uncalibrated probabilities);
* ``config.yml``: the resolved experiment config the model was built from.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

import paddle
from paddle.static import InputSpec

from medseg.config import Config
from medseg.constants import DEFAULT_WINDOWS, LABELS
from medseg.data.build import build_eval_transforms, config_input_channels, config_neighbours, eval_transform_config, model_input_shape
from medseg.data.windows import Window, format_windows
from medseg.engine import checkpoint as ckpt
from medseg.export.graph import EncoderGraph, HeadGraph, SeriesGraph, check_exportable
from medseg.export.meta import EXPORT_META, GRAPHS, ExportError, ExportMeta, write_meta
from medseg.outputs.calibrate import CALIBRATION_FILE, calibration_path
from medseg.utils.atomic import atomic_write_text, staged_dir
from medseg.utils.logger import get_logger

logger = get_logger("export")


@dataclass(frozen=True)
class ExportResult:
    save_dir: str
    meta: ExportMeta
    onnx_file: str | None = None


def _prepare_target(save_dir: str) -> None:
    """Refuse to replace a folder that is not an earlier export (never delete a user's files)."""
    if os.path.exists(save_dir):
        if not os.path.isdir(save_dir):
            raise ExportError(f"{save_dir}: exists and is not a directory")
        if os.listdir(save_dir) and not os.path.isfile(os.path.join(save_dir, EXPORT_META)):
            raise ExportError(f"{save_dir}: not empty and not an earlier export; choose another --save_dir")


def export_model(cfg: Config, checkpoint: str, save_dir: str, windows: tuple[Window, ...] = DEFAULT_WINDOWS) -> ExportResult:
    """Build the model of ``cfg``, load ``checkpoint`` (strict) and save the inference graphs."""
    save_dir = os.path.abspath(save_dir)
    _prepare_target(save_dir)
    transform_spec = eval_transform_config(cfg)
    # With neighbours (k) each slice carries 2k + 1 slices' windows: C(2k + 1) input channels.
    neighbours = config_neighbours(cfg)
    channels, height, width = model_input_shape(build_eval_transforms(transform_spec), config_input_channels(cfg, len(windows)))
    model = check_exportable(cfg.build("model"))
    ckpt.load_params(checkpoint, model, strict=True)
    model.eval()

    with staged_dir(save_dir) as tmp:
        image = InputSpec([None, None, channels, height, width], "float32", "image")
        mask = InputSpec([None, None], "bool", "mask")
        slices = InputSpec([None, channels, height, width], "float32", "slices")
        features = InputSpec([None, None, model.encoder.feature_dim], "float32", "features")
        specs = {
            "series": (SeriesGraph(model), [image, mask]),
            "encoder": (EncoderGraph(model), [slices]),
            "head": (HeadGraph(model), [features, mask]),
        }
        for name, (layer, spec) in specs.items():
            static = paddle.jit.to_static(layer, input_spec=spec, full_graph=True)
            paddle.jit.save(static, os.path.join(tmp, GRAPHS[name]))
        meta = ExportMeta(
            channels=channels, height=height, width=width, feature_dim=int(model.encoder.feature_dim),
            labels=list(LABELS), windows=format_windows(windows), transforms=transform_spec,
            sequential=model.head is not None, chunk_size=model.encoder.chunk_size,
            checkpoint=os.path.abspath(checkpoint), config=os.path.abspath(cfg.path) if cfg.path else None,
            paddle_version=paddle.__version__, extra={"neighbours": neighbours} if neighbours else {},
        )
        write_meta(tmp, meta)
        atomic_write_text(os.path.join(tmp, "config.yml"), cfg.dump())
        if os.path.isfile(calibration_path(checkpoint)):
            shutil.copy2(calibration_path(checkpoint), os.path.join(tmp, CALIBRATION_FILE))
    logger.info("exported %s (%s) to %s: input [B, S, %d, %s, %s]", type(model).__name__, checkpoint, save_dir,
                channels, height if height else "H", width if width else "W")
    return ExportResult(save_dir, meta)
