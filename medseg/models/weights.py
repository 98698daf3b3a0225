"""Load local pretrained weights into an encoder, with key mapping and a loaded/missing report.

Sources: ``.safetensors`` (read with safetensors' numpy API: plain arrays, cannot run code) or
``.pdparams`` (Paddle's pickle format: only load files you trust). Nothing is downloaded.

Key maps (``key_map:``), each a function ``source key → our key`` (``None`` = not used):
- ``paddleclas_swin``: PaddleClas ``SwinTransformer`` names are ours already; its derived buffers
  (``relative_position_index``, ``attn_mask``, the export-time ``relative_position_bias``) are
  rebuilt by our blocks and skipped.
- ``paddle_vision``: ``paddle.vision.models`` ResNet/ResNeXt/DenseNet names get the
  ``backbone.`` prefix; their classifier (``fc.*`` / ``out.*``) maps to our per-slice ``head.*``.
- ``medseg``: our own checkpoints (an encoder's keys, or a full model's ``encoder.*`` keys).
- ``easymia``: the paper's released code (PaddlePaddle/Research, package ``easymia``): its
  ``backbone.*`` Swin names → ours; its derived buffers are skipped here. A whole released model
  (``sequence_encoder``/``sequence_decoder`` too) is loaded by ``checkpoint.load_params``, which
  recognises the layout itself (:func:`is_easymia`) and checks the buffers
  (:func:`convert_easymia`).
- ``auto``: whichever of the above loads the most tensors (ties: the fewest unexpected keys).
Tensors whose shape differs (e.g. a 1000-class ImageNet head vs our 6 outputs) are not loaded
and are listed in the report, except the first convolution of an encoder that takes neighbour
slices (``neighbours: k``, :mod:`medseg.data.neighbours`): a kernel ``[O, C, kh, kw]`` for one
slice loads into the centre block of its ``[O, C(2k+1), kh, kw]``, the other blocks zero
(:func:`widen_kernel`), so the model starts as the 2-D one; one log line says so.

Released weights saw uint8 / 255 inputs without mean or std; :func:`check_released_input_scale`
is the one check, called wherever a config meets a weights file (train, infer, export, predict),
that says so when the config's eval transforms feed something else.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import paddle

from medseg.models.heads.positional import sinusoid_table
from medseg.utils.logger import get_logger

logger = get_logger("models.weights")

_SWIN_DERIVED = ("relative_position_index", "attn_mask", "relative_position_bias")
_STRIP_PREFIXES = ("backbone.", "model.")


def _strip(key: str, prefixes: tuple[str, ...]) -> str:
    for prefix in prefixes:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def map_paddleclas_swin(key: str) -> str | None:
    """PaddleClas SwinTransformer key → ours (``None`` for buffers our blocks derive)."""
    key = _strip(key, _STRIP_PREFIXES)
    if key.rsplit(".", 1)[-1] in _SWIN_DERIVED:
        return None
    return key


def map_paddle_vision(key: str) -> str | None:
    """paddle.vision ResNet/DenseNet key → ``backbone.<key>``; its classifier → ``head.*``."""
    for classifier in ("fc.", "out."):
        if key.startswith(classifier):
            return "head." + key[len(classifier) :]
    return "backbone." + key


def map_medseg(key: str) -> str | None:
    """Our own checkpoints: an encoder state dict as is, or the ``encoder.*`` part of a model."""
    if key.startswith("encoder."):
        return key[len("encoder.") :]
    return key


# The released code's module names → ours (first match wins). Its ``PositionalEncoding`` holds a
# cached table ``pos_encoder.pe``; ours computes it per length (no parameter, no buffer).
_EASYMIA_RENAMES = (
    ("backbone.patch_embedding.patch_embed.", "encoder.patch_embed.proj."),
    ("backbone.patch_embedding.norm.", "encoder.patch_embed.norm."),
    ("backbone.stages.", "encoder.layers."),
    ("backbone.norm.", "encoder.norm."),
    ("backbone.fc.", "encoder.head."),
    ("sequence_encoder.", "head.transformer_encoder."),
    ("sequence_decoder.", "head.decoder."),
)
_EASYMIA_MARKERS = ("backbone.patch_embedding.", "backbone.stages.", "sequence_encoder.", "sequence_decoder.")
EASYMIA_PE = "pos_encoder.pe"
_EASYMIA_BUFFERS = (".relative_position_index", ".attn_mask")
PE_ATOL = 1e-5  # the released table is float64, ours float32: they differ by ~4e-6 over 60 positions


def easymia_name(key: str) -> str:
    """A released-model name → our full-model name (``ICHSequenceClassifier``); unknown names as is."""
    for src, dst in _EASYMIA_RENAMES:
        if key.startswith(src):
            return dst + key[len(src) :]
    return key


def map_easymia(key: str) -> str | None:
    """Encoder-level map (``encoder.pretrained``): the released Swin backbone's names → ours."""
    if key.rsplit(".", 1)[-1] in _SWIN_DERIVED:
        return None
    name = easymia_name(key)
    return name[len("encoder.") :] if name.startswith("encoder.") else key


def is_easymia(keys) -> bool:
    """True for a state dict saved by the released code (its module names, none of ours)."""
    return any(k.startswith(_EASYMIA_MARKERS) for k in keys)


KEY_MAPS: dict[str, Callable[[str], str | None]] = {
    "medseg": map_medseg,
    "paddleclas_swin": map_paddleclas_swin,
    "paddle_vision": map_paddle_vision,
    "easymia": map_easymia,
}


@dataclass
class EasymiaReport:
    """What :func:`convert_easymia` did with a released model's state dict."""

    renamed: int = 0  # parameters given our names
    checked: list[str] = field(default_factory=list)  # the file's buffers, equal to ours
    unmatched: list[str] = field(default_factory=list)  # the file's buffers with no counterpart here

    def summary(self, path: str) -> str:
        line = (f"{path}: released easymia layout: {self.renamed} tensors renamed to ours, "
                f"{len(self.checked)} buffers checked equal to ours and not loaded")
        if self.unmatched:
            line += f"; {len(self.unmatched)} buffers without a counterpart here (skipped): {', '.join(self.unmatched[:4])}"
        return line


def _to_numpy(value) -> np.ndarray:
    return value.numpy() if isinstance(value, paddle.Tensor) else np.asarray(value)


def convert_easymia(state: dict, model: paddle.nn.Layer, path: str = "checkpoint") -> tuple[dict, EasymiaReport]:
    """A released model's state dict → ours: parameters renamed, buffers compared and dropped.

    Our model derives its buffers (window position index, shifted-window masks) and computes the
    positional table per length, so the file's copies are not loaded; each is compared with ours
    instead, because a difference means another geometry (window, shift, resolution) and other
    predictions. Raises ``ValueError`` naming ``path`` and the tensor when one differs.
    """
    ours = dict(model.named_buffers())
    head = getattr(model, "head", None)
    params: dict = {}
    seen: set[str] = set()
    report = EasymiaReport()
    for key, value in state.items():
        name = easymia_name(key)
        if key == EASYMIA_PE:
            if not hasattr(head, "pos_encoder"):
                report.unmatched.append(key)
                continue
            table = _to_numpy(value).reshape(-1, _to_numpy(value).shape[-1])
            diff = float(np.abs(table - sinusoid_table(*table.shape).numpy()).max())
            if diff > PE_ATOL:
                raise ValueError(f"{path}: {key} differs from our sinusoidal positions by {diff:.3g} (> {PE_ATOL})")
            report.checked.append(key)
        elif key.endswith(_EASYMIA_BUFFERS):
            if name not in ours:
                raise ValueError(f"{path}: {key} has no counterpart {name} in the model built from the config "
                                 "(another window, shift or image size?)")
            mine, theirs = ours[name].numpy(), _to_numpy(value)
            if mine.size != theirs.size or not np.array_equal(mine.reshape(theirs.shape), theirs):
                raise ValueError(f"{path}: {key} differs from our {name} (another window, shift or image size?)")
            report.checked.append(key)
            seen.add(name)
        else:
            params[name] = value
            report.renamed += name != key
    extra = [n for n in ours if n.endswith(_EASYMIA_BUFFERS) and n not in seen]
    if extra:
        raise ValueError(f"{path}: the model built from the config has {extra[0]}, the released model has none "
                         "(another window, shift or image size?)")
    return params, report


def widened_inputs(layer: paddle.nn.Layer) -> dict[str, int]:
    """``{state-dict key: 2k + 1}`` of the widened first-convolution kernels in ``layer``: those
    of every encoder in it with ``neighbours`` > 0 (:class:`medseg.models.encoders.base.SliceEncoder`)."""
    found = {}
    for prefix, sub in layer.named_sublayers(include_self=True):
        k, name = getattr(sub, "neighbours", 0), getattr(sub, "input_conv", None)
        if isinstance(k, int) and k > 0 and isinstance(name, str):
            found[f"{prefix + '.' if prefix else ''}{name}.weight"] = 2 * k + 1
    return found


def widen_kernel(value: np.ndarray, shape: Sequence[int], blocks: int) -> np.ndarray | None:
    """A one-slice kernel ``[O, C, kh, kw]`` as the centre block of ``shape`` ``[O, C·blocks, kh,
    kw]`` (zeros elsewhere), or None when ``value`` is not such a kernel."""
    value = np.asarray(value)
    shape = tuple(int(v) for v in shape)
    if (value.ndim != 4 or len(shape) != 4 or shape[0] != value.shape[0] or shape[2:] != value.shape[2:]
            or shape[1] != value.shape[1] * blocks):
        return None
    out = np.zeros(shape, dtype=value.dtype)
    centre = blocks // 2 * value.shape[1]
    out[:, centre:centre + value.shape[1]] = value
    return out


def widen_line(path: str, key: str, file_shape: Sequence[int], shape: Sequence[int], blocks: int) -> str:
    return (f"{path}: {key} {list(file_shape)} loaded into the centre block of {list(shape)} "
            f"(the other {blocks - 1} neighbour blocks start at zero: the model starts as the 2-D one)")


@dataclass
class LoadReport:
    """What happened to each tensor: loaded, left at its initial value, or skipped."""

    path: str
    key_map: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # ours, absent from the file
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (ours, file shape, our shape)
    unexpected: list[str] = field(default_factory=list)  # the file's, no counterpart here
    skipped: list[str] = field(default_factory=list)  # the file's derived buffers
    widened: list[tuple[str, tuple]] = field(default_factory=list)  # (ours, file shape): a one-slice kernel in a widened first layer's centre

    def summary(self, max_names: int = 8) -> str:
        def names(items: list) -> str:
            shown = ", ".join(str(i) for i in items[:max_names])
            return shown + (f", … (+{len(items) - max_names})" if len(items) > max_names else "")

        lines = [
            f"pretrained {self.path} (key map {self.key_map}): loaded {len(self.loaded)}, "
            f"missing {len(self.missing)}, shape-mismatched {len(self.mismatched)}, "
            f"unexpected {len(self.unexpected)}, derived buffers skipped {len(self.skipped)}"
        ]
        if self.missing:
            lines.append(f"  missing (kept initial values): {names(self.missing)}")
        if self.mismatched:
            lines.append("  shape-mismatched (not loaded): " + names([f"{k} file{list(a)} vs ours{list(b)}" for k, a, b in self.mismatched]))
        if self.unexpected:
            lines.append(f"  unexpected (ignored): {names(self.unexpected)}")
        return "\n".join(lines)


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """``.safetensors`` or ``.pdparams`` → {name: numpy array}; clear errors for bad paths."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".safetensors":
        from safetensors.numpy import load_file

        return dict(load_file(path))
    if ext == ".pdparams":
        state = paddle.load(path, return_numpy=True)
        if not isinstance(state, dict):
            raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
        return {k: np.asarray(v) for k, v in state.items() if isinstance(v, (np.ndarray, np.generic))}
    raise ValueError(f"{path}: unsupported weights format {ext!r} (use .safetensors or .pdparams)")


def _match(state: dict[str, np.ndarray], target: dict[str, paddle.Tensor], key_map: Callable, path: str, name: str,
           widened: dict[str, int] | None = None) -> tuple[LoadReport, dict]:
    report = LoadReport(path=path, key_map=name)
    updates: dict[str, np.ndarray] = {}
    widened = widened or {}
    for src, value in state.items():
        dst = key_map(src)
        if dst is None:
            report.skipped.append(src)
        elif dst not in target:
            report.unexpected.append(src)
        elif tuple(value.shape) != tuple(target[dst].shape):
            wide = widen_kernel(value, target[dst].shape, widened[dst]) if dst in widened else None
            if wide is None:
                report.mismatched.append((dst, tuple(value.shape), tuple(target[dst].shape)))
            else:
                updates[dst] = wide
                report.widened.append((dst, tuple(value.shape)))
        else:
            updates[dst] = value
    report.loaded = sorted(updates)
    seen = set(updates) | {k for k, _, _ in report.mismatched}
    report.missing = [k for k in target if k not in seen]
    return report, updates


def load_pretrained(layer: paddle.nn.Layer, path: str, key_map: str | Callable = "auto") -> LoadReport:
    """Copy matching tensors from ``path`` into ``layer`` and log the report; returns it.

    Raises ``FileNotFoundError`` naming the file when it does not exist and ``ValueError`` when
    not a single tensor matches (almost always the wrong file or key map).
    """
    state = read_state_dict(path)
    target = layer.state_dict()
    if callable(key_map):
        candidates = {getattr(key_map, "__name__", "custom"): key_map}
    elif key_map == "auto":
        candidates = KEY_MAPS
    elif key_map in KEY_MAPS:
        candidates = {key_map: KEY_MAPS[key_map]}
    else:
        raise ValueError(f"unknown key_map {key_map!r}; known: auto, {', '.join(KEY_MAPS)}")
    widened = widened_inputs(layer)
    best = max((_match(state, target, fn, path, name, widened) for name, fn in candidates.items()),
               key=lambda r: (len(r[1]), -len(r[0].unexpected)))
    report, updates = best
    if not updates:
        raise ValueError(f"{path}: no tensor matches {type(layer).__name__} ({report.summary()})")
    for key, value in updates.items():
        tensor = target[key]
        tensor.set_value(value.astype(str(tensor.dtype).split(".")[-1], copy=False))
    for key, file_shape in report.widened:
        logger.info(widen_line(path, key, file_shape, target[key].shape, widened[key]))
    logger.info(report.summary())
    return report


def _weights_file(path: str) -> str:
    """A checkpoint folder's ``model.pdparams``, or ``path`` itself."""
    return os.path.join(path, "model.pdparams") if os.path.isdir(path) else path


def file_is_easymia(path: str) -> bool:
    """Whether the weights at ``path`` (a file or a checkpoint folder) carry the released code's
    names; False for anything unreadable (its loader reports that)."""
    file = _weights_file(path)
    try:
        if file.lower().endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(file, framework="numpy") as fh:
                return is_easymia(list(fh.keys()))
        state = paddle.load(file, return_numpy=True)  # pdparams: a pickle, no key index to peek at
    except Exception:  # any unreadable file: its loader reports it, not this check
        return False
    return isinstance(state, dict) and is_easymia(state)


def input_scale_note(transforms: Sequence[dict]) -> str | None:
    """Why a transform list (config dicts) does not feed uint8 / 255, or None when it does: the
    released checkpoints saw ``x / 255`` with no mean or std (its Evaluator divides uint8 by 255
    and nothing else), which a ``Normalize`` with the default mean 0 and std 1 gives exactly."""
    norms = [t for t in transforms if isinstance(t, dict) and t.get("type") == "Normalize"]
    if not norms:
        return "no Normalize (the model would see 0..255)"
    mean, std = (np.asarray(norms[-1].get(key, default), dtype=np.float64) for key, default in (("mean", 0.0), ("std", 1.0)))
    if np.all(mean == 0.0) and np.all(std == 1.0):
        return None
    return f"Normalize mean {mean.tolist()} std {std.tolist()}"


def check_released_input_scale(cfg: Any, *paths: str | None) -> str | None:
    """Log one warning (and return it) when a released (easymia) weights file among ``paths`` is
    used with a config whose eval transforms do not feed uint8 / 255; None otherwise. Cheap when
    the config is right: the files are only opened when its transforms would deserve a warning."""
    from medseg.data.build import eval_transform_config
    from medseg.registry import ConfigError

    try:
        note = input_scale_note(eval_transform_config(cfg))
    except ConfigError:  # no eval transforms: nothing to compare
        return None
    if note is None:
        return None
    for path in paths:
        if path and file_is_easymia(path):
            line = (f"{path}: released (easymia) weights, but {cfg.path or 'the config'} feeds {note}; "
                    "they were trained on uint8 / 255 without mean or std ({type: Normalize}, as in config/_base_/rsna_224.yml)")
            logger.warning(line)
            return line
    return None
