"""Checkpoints: ``save_dir/iter_N/`` with everything needed to continue a run exactly.

A checkpoint directory holds ``model.pdparams``, ``model.pdopt`` (optimizer, including the
scheduler) and ``train_state.pkl`` (iteration, scheduler, loss scaler, best score and the RNG
states of Python, NumPy and Paddle per rank). It is written to a hidden temporary directory and
renamed into place, so a kill at any moment leaves either the old or the new checkpoint.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import shutil
import warnings
from typing import Any, Iterable

import numpy as np
import paddle

from medseg.models import weights
from medseg.utils.atomic import atomic_write_json, staged_dir
from medseg.utils.logger import get_logger

MODEL_FILE = "model.pdparams"
OPTIMIZER_FILE = "model.pdopt"
STATE_FILE = "train_state.pkl"
BEST_DIR = "best_model"
_ITER_DIR = re.compile(r"^iter_(\d+)$")

logger = get_logger("checkpoint")


class CheckpointError(ValueError):
    """A checkpoint is missing or does not fit; the message names the path."""


def capture_rng() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "paddle": paddle.get_rng_state()}


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    paddle.set_rng_state(state["paddle"])


def _write_dir(final: str, files: dict[str, Any]) -> str:
    """Write ``{name: object}`` (paddle.save for tensors' dicts, pickle for ``.pkl``) atomically."""
    with staged_dir(final) as tmp:
        for name, obj in files.items():
            path = os.path.join(tmp, name)
            if name.endswith(".pkl"):
                with open(path, "wb") as fh:
                    pickle.dump(obj, fh, protocol=pickle.HIGHEST_PROTOCOL)
            elif name.endswith(".json"):
                atomic_write_json(path, obj)
            else:
                paddle.save(obj, path)
    return final


def _rename_optimizer_state(state: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    """Rename the parameter part of optimizer-state keys (``<param>_velocity_0`` …).

    Paddle keys optimizer state by unique parameter names (``conv2d_3.w_0``), which depend on how
    many layers a process built before; checkpoints store structural names (``encoder.conv.weight``)
    instead, so that a resumed run finds its state whatever was built first.
    """
    names = sorted(mapping, key=len, reverse=True)  # longest first: no prefix confusions
    out: dict[str, Any] = {}
    for key, value in state.items():
        if key == "master_weights" and isinstance(value, dict):
            out[key] = {mapping.get(k, k): v for k, v in value.items()}
            continue
        for name in names:
            if key.startswith(name + "_"):
                key = mapping[name] + key[len(name):]
                break
        out[key] = value
    return out


def optimizer_state_to_save(model: paddle.nn.Layer, optimizer: paddle.optimizer.Optimizer) -> dict[str, Any]:
    return _rename_optimizer_state(optimizer.state_dict(), {p.name: f"@{n}" for n, p in model.named_parameters()})


def optimizer_state_to_load(model: paddle.nn.Layer, state: dict[str, Any]) -> dict[str, Any]:
    return _rename_optimizer_state(state, {f"@{n}": p.name for n, p in model.named_parameters()})


_HALF = (paddle.float16, paddle.bfloat16)


def float32_state_dict(model: paddle.nn.Layer, optimizer: paddle.optimizer.Optimizer | None = None) -> dict[str, Any]:
    """``model.state_dict()`` with float16/bfloat16 tensors as float32, so that a checkpoint of an
    AMP O2 run loads into any model (inference, export, --pretrained all build float32 models).

    A parameter the optimiser keeps a float32 master copy of (O2 with multi_precision) is saved
    from that copy, which holds the bits the low-precision weight was rounded from.
    """
    masters = getattr(optimizer, "_master_weights", None) or {}
    names = {id(p): p.name for p in model.parameters()}
    out: dict[str, Any] = {}
    for key, value in model.state_dict().items():
        if value.dtype in _HALF:
            master = masters.get(names.get(id(value), ""))
            value = master.detach().clone() if master is not None else value.astype("float32")
        out[key] = value
    return out


def list_checkpoints(save_dir: str) -> list[tuple[int, str]]:
    if not os.path.isdir(save_dir):
        return []
    found = []
    for name in os.listdir(save_dir):
        match = _ITER_DIR.match(name)
        if match and os.path.isdir(os.path.join(save_dir, name)):
            found.append((int(match.group(1)), os.path.join(save_dir, name)))
    return sorted(found)


def prune_checkpoints(save_dir: str, keep_max: int, keep_iters: Iterable[int] = ()) -> None:
    """Keep the last ``keep_max`` ``iter_N`` dirs plus those listed in ``keep_iters``."""
    if keep_max is None or keep_max <= 0:
        return
    keep = set(keep_iters or ())
    checkpoints = list_checkpoints(save_dir)
    for iteration, path in checkpoints[:-keep_max]:
        if iteration not in keep:
            shutil.rmtree(path, ignore_errors=True)


def save_checkpoint(save_dir: str, iteration: int, model: paddle.nn.Layer, optimizer: paddle.optimizer.Optimizer,
                    train_state: dict[str, Any], keep_max: int = 5, keep_iters: Iterable[int] = ()) -> str:
    """Write ``save_dir/iter_<iteration>/`` atomically and prune older ones."""
    final = os.path.join(save_dir, f"iter_{iteration}")
    state = dict(train_state, iteration=iteration)
    _write_dir(final, {MODEL_FILE: float32_state_dict(model, optimizer), OPTIMIZER_FILE: optimizer_state_to_save(model, optimizer),
                       STATE_FILE: state})
    prune_checkpoints(save_dir, keep_max, keep_iters)
    return final


def save_best(save_dir: str, model: paddle.nn.Layer, iteration: int, metrics: dict[str, float],
              optimizer: paddle.optimizer.Optimizer | None = None) -> str:
    final = os.path.join(save_dir, BEST_DIR)
    summary = {"iteration": iteration, **{k: float(v) for k, v in metrics.items() if np.isscalar(v)}}
    return _write_dir(final, {MODEL_FILE: float32_state_dict(model, optimizer), "score.json": summary})


def _model_file(path: str) -> str:
    if os.path.isdir(path):
        path = os.path.join(path, MODEL_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint not found")
    return path


def load_params(path: str, model: paddle.nn.Layer, strict: bool = True) -> str:
    """Load weights into ``model``; shapes must fit (and, if ``strict``, the keys must match).

    A state dict saved by the paper's released code is recognised by its names and renamed to
    ours, its buffers checked against ours (``weights.convert_easymia``). Not ``strict``
    (``train.py --pretrained``): a one-slice first-layer kernel loads into the centre block of a
    model that takes neighbour slices (``weights.widen_kernel``); a strict load (resume, infer,
    export, predict) needs the config the checkpoint was trained with.
    """
    file = _model_file(path)
    try:
        params = paddle.load(file)
    except Exception as err:  # paddle raises several types for a corrupt file
        raise CheckpointError(f"{file}: unreadable checkpoint ({type(err).__name__}: {err})") from err
    if weights.is_easymia(params):
        try:
            params, report = weights.convert_easymia(params, model, file)
        except ValueError as err:
            raise CheckpointError(str(err)) from err
        logger.info(report.summary(file))
    own = model.state_dict()
    widened = weights.widened_inputs(model)
    for key, value in params.items():
        if key in own and list(own[key].shape) != list(value.shape):
            wide = weights.widen_kernel(_numpy(value), own[key].shape, widened[key]) if key in widened else None
            if wide is None or strict:
                hint = " (a checkpoint of the 2-D model: start from it with train.py --pretrained)" if wide is not None else ""
                raise CheckpointError(f"{file}: {key} has shape {list(value.shape)}, the model built from the config needs "
                                      f"{list(own[key].shape)}{hint}")
            logger.info(weights.widen_line(file, key, value.shape, own[key].shape, widened[key]))
            params[key] = wide
    missing = [k for k in own if k not in params]
    unexpected = [k for k in params if k not in own]
    if strict and (missing or unexpected):
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CheckpointError(f"{file}: does not fit the model ({len(missing)} missing, {len(unexpected)} unexpected keys; {detail})")
    if not strict and (missing or unexpected):
        logger.info("%s: loaded %d tensors, %d model tensors not in the file, %d file tensors unused",
                    file, len(own) - len(missing), len(missing), len(unexpected))
    with warnings.catch_warnings():  # Paddle warns once per missing key; the line above already counted them
        warnings.filterwarnings("ignore", message="Skip loading for ", category=UserWarning)
        model.set_state_dict(_cast_to_model(file, {k: v for k, v in params.items() if k in own}, own))
    return file


def _numpy(value: Any) -> np.ndarray:
    return value.numpy() if isinstance(value, paddle.Tensor) else np.asarray(value)


def _cast_to_model(file: str, params: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """Cast floating tensors to the model's dtype (e.g. a float16 checkpoint of an AMP O2 run into a
    float32 model; Paddle's set_state_dict would stop on the mismatch) and report what was cast."""
    cast: dict[str, int] = {}
    out = {}
    for key, value in params.items():
        want = own[key].dtype
        if isinstance(value, np.ndarray):
            value = paddle.to_tensor(value)
        if hasattr(value, "dtype") and value.dtype != want and value.is_floating_point() and own[key].is_floating_point():
            pair = f"{str(value.dtype).replace('paddle.', '')} -> {str(want).replace('paddle.', '')}"
            cast[pair] = cast.get(pair, 0) + 1
            value = value.astype(want)
        out[key] = value
    for pair, count in cast.items():
        logger.info("%s: cast %d tensors %s to fit the model", file, count, pair)
    return out


def load_checkpoint(path: str, model: paddle.nn.Layer, optimizer: paddle.optimizer.Optimizer) -> dict[str, Any]:
    """Restore model and optimizer from ``iter_N/`` and return its train state."""
    directory = os.path.dirname(path) if os.path.isfile(path) else path
    if not os.path.isdir(directory):
        raise CheckpointError(f"{path}: checkpoint not found")
    for name in (MODEL_FILE, OPTIMIZER_FILE, STATE_FILE):
        if not os.path.isfile(os.path.join(directory, name)):
            raise CheckpointError(f"{os.path.join(directory, name)}: not found (not a complete training checkpoint)")
    load_params(directory, model, strict=True)
    optimizer.set_state_dict(optimizer_state_to_load(model, paddle.load(os.path.join(directory, OPTIMIZER_FILE))))
    with open(os.path.join(directory, STATE_FILE), "rb") as fh:
        return pickle.load(fh)
