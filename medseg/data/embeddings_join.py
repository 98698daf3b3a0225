"""Join a head trained on saved embeddings with its encoder: one ordinary checkpoint + config.

The head's checkpoint (``encoder.head.*`` and ``head.*`` of a model whose encoder is a
:class:`~medseg.models.precomputed.PrecomputedEncoder`) and the encoder's checkpoint (the one the
embeddings manifest names, or ``encoder``; its tensors must hash to the manifest's) become the
image model of the config the embeddings were made with, with the model section's head,
``sequential``, ``residual``, ``freeze_encoder`` and ``head_lr_mult`` taken from the head's config.
The result is the frozen-encoder stage 2 with those head weights, so infer.py, ``medseg.predict``,
export and pseudo-labelling take it like any checkpoint; its predictions on images equal the head's
on the embeddings up to the float16 rounding of the saved features (and the view averaging: the
embeddings average features over their views, the joined model sees images and uses the views
its config or ``--tta`` asks for).
"""

from __future__ import annotations

import copy
import os
import shutil
from typing import Any

import paddle

from medseg.config import Config
from medseg.data.embeddings import EmbeddingsError, read_manifest, tensors_sha256
from medseg.data.embeddings_extract import load_encoder_model
from medseg.engine import checkpoint as ckpt
from medseg.outputs.calibrate import CALIBRATION_FILE, calibration_path
from medseg.utils.atomic import atomic_write_json, atomic_write_text, staged_dir
from medseg.utils.logger import get_logger

logger = get_logger("embed.join")
JOIN_RECORD = "join.json"
CONFIG_FILE = "config.yml"
# Model keys of the head's config that the joined model takes (absent ones take the class defaults, as the head did).
HEAD_MODEL_KEYS = ("head", "sequential", "residual", "freeze_encoder", "head_lr_mult", "num_classes")
# Top-level sections of the head's config the joined config takes (its training recipe and metric).
RECIPE_KEYS = ("loss", "metric", "optimizer", "lr_scheduler", "iters", "batch_size", "test_time_augmentation")


def head_config_path(head: str) -> str:
    """The config a head was trained with: ``config.yml`` in its folder or, for ``best_model/`` and
    ``iter_N/``, in the training folder above."""
    folder = head if os.path.isdir(head) else os.path.dirname(head)
    for candidate in (os.path.join(folder, CONFIG_FILE), os.path.join(os.path.dirname(os.path.abspath(folder)), CONFIG_FILE)):
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(f"{head}: no {CONFIG_FILE} beside or above the checkpoint; pass --config")


def embeddings_root(cfg: Config) -> str:
    """The embeddings folder a head's config trained on (its ``train_dataset``)."""
    section = cfg.section("train_dataset")
    entry = section[0] if isinstance(section, list) else section
    if not isinstance(entry, dict) or entry.get("type") != "RSNAEmbeddingDataset":
        raise EmbeddingsError(f"{cfg.path or '<config>'}: train_dataset is not an RSNAEmbeddingDataset: not a head trained on embeddings")
    return str(entry["embeddings"])


def joined_config(head_cfg: Config, manifest: dict[str, Any]) -> dict[str, Any]:
    """The image config of the embeddings with the head's model keys and recipe."""
    joined = copy.deepcopy(manifest["config"])
    model = joined["model"]
    head_model = head_cfg.section("model")
    for key in HEAD_MODEL_KEYS:
        if key in head_model:
            model[key] = copy.deepcopy(head_model[key])
        else:
            model.pop(key, None)
    for key in RECIPE_KEYS:
        if key in head_cfg:
            joined[key] = copy.deepcopy(head_cfg[key])
        else:
            joined.pop(key, None)
    joined.pop("bag", None)
    return joined


def _check_target(out: str) -> None:
    if os.path.exists(out) and (not os.path.isdir(out) or (os.listdir(out) and not os.path.isfile(os.path.join(out, JOIN_RECORD)))):
        raise EmbeddingsError(f"{out}: exists and is not an earlier joined model; choose another --out")


def join_head(head: str, out: str, config: str | None = None, overrides: list[str] | None = None,
              encoder: str | None = None) -> str:
    """Write ``out/model.pdparams``, ``out/config.yml`` and ``out/join.json`` (and the head's
    ``calibration.json`` when it has one); returns ``out``."""
    head_file = head if os.path.isfile(head) else os.path.join(head, ckpt.MODEL_FILE)
    if not os.path.isfile(head_file):
        raise ckpt.CheckpointError(f"{head}: checkpoint not found")
    out = os.path.abspath(out)
    _check_target(out)
    head_cfg = Config(config or head_config_path(head), overrides or [])
    root = embeddings_root(head_cfg)
    manifest = read_manifest(root)
    encoder = encoder or manifest["model"]
    cfg_dict = joined_config(head_cfg, manifest)
    cfg = Config(None, data=cfg_dict)
    model = load_encoder_model(cfg, encoder)
    if tensors_sha256(model.encoder.state_dict()) != manifest["encoder_sha256"]:
        raise EmbeddingsError(f"{encoder}: not the encoder the embeddings in {root} were made with ({manifest['model']})")
    head_state = paddle.load(head_file, return_numpy=True)
    own = model.state_dict()
    allowed = {k for k in own if k.startswith(("head.", "encoder.head."))}
    stray = sorted(set(head_state) - allowed)
    missing = sorted(k for k in allowed if k not in head_state)
    if stray or missing:
        detail = f"unexpected {stray[:2]}" if stray else f"missing {missing[:2]}"
        raise ckpt.CheckpointError(f"{head_file}: not a head for this model ({detail}; was it trained on these embeddings?)")
    for key, value in head_state.items():
        if list(value.shape) != list(own[key].shape):
            raise ckpt.CheckpointError(f"{head_file}: {key} has shape {list(value.shape)}, the joined model needs {list(own[key].shape)}")
    slice_head = {k.removeprefix("encoder.head."): v for k, v in head_state.items() if k.startswith("encoder.head.")}
    if getattr(model, "freeze_encoder", False) and tensors_sha256(slice_head) != manifest["slice_head_sha256"]:
        raise EmbeddingsError(f"{head_file}: its frozen slice head differs from the encoder's ({encoder})")
    state = {k: v.numpy() for k, v in own.items()}
    state.update(head_state)

    with staged_dir(out) as tmp:
        paddle.save(state, os.path.join(tmp, ckpt.MODEL_FILE))
        atomic_write_text(os.path.join(tmp, CONFIG_FILE), cfg.dump())
        check = Config(os.path.join(tmp, CONFIG_FILE)).build("model")
        ckpt.load_params(tmp, check, strict=True)  # the pair loads as any checkpoint does
        atomic_write_json(os.path.join(tmp, JOIN_RECORD), {
            "encoder": os.path.abspath(encoder), "encoder_sha256": manifest["encoder_sha256"],
            "head": os.path.abspath(head_file), "head_config": os.path.abspath(head_cfg.path) if head_cfg.path else None,
            "embeddings": os.path.abspath(root), "embeddings_tta": manifest.get("tta"),
        })
        if os.path.isfile(calibration_path(head)):
            shutil.copy2(calibration_path(head), os.path.join(tmp, CALIBRATION_FILE))
    logger.info("joined %s with encoder %s -> %s (config %s)", head_file, encoder, out, os.path.join(out, CONFIG_FILE))
    return out
