"""Where the model looked: Grad-CAM of P(any) for the slices a predict report shows large.

Method (Selvaraju et al. 2017): for slice ``i`` and its ``any`` logit ``y_i``, the feature map
``A`` [C, h, w] of the encoder's last stage is weighted per channel by the spatial mean of
``dy_i / dA`` and summed; the positive part, upsampled to the model input, is the map.

- CNN encoders (:class:`CNNEncoder`: MobileNetV3, ResNet, DenseNet, ShuffleNet): ``A`` is the
  backbone's last feature map, the one the encoder pools.
- Swin (:class:`SwinTransformer`): ``A`` is the last stage's tokens after the final LayerNorm (the
  ones the encoder averages), reshaped to their grid (7 × 7 at 224 px). Grad-CAM, not attention
  rollout: rollout ignores the output being explained, and the shifted windows make it
  approximate.

The output being explained is the one predict reports: the sequence head's ``any`` logit, which
depends on every slice of the series. It is computed in two exact steps so that only the shown
slices go through the encoder with gradients: (1) the whole series is encoded without gradients
and the heads are differentiated with respect to the per-slice features (one copy of the series
per shown slice, one backward); (2) the shown slices are encoded again with gradients and the
features are contracted with those gradients. Step 2 is exact because an eval-mode encoder treats
slices independently. A calibration temperature divides the logit by a positive constant, which
the per-slice normalisation removes. No map, and the report says why, for an exported model (a
static graph without gradients), with ``--no_saliency``, or when a gradient is not finite.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import paddle

from medseg.constants import LABELS
from medseg.data.build import apply_transforms
from medseg.data.neighbours import centre_channels
from medseg.data.transforms import Compose
from medseg.data.windows import Window
from medseg.models.encoders.cnn import POOLS, CNNEncoder
from medseg.models.encoders.swin import SwinTransformer
from medseg.models.outputs import prediction_logits
from medseg.utils.logger import get_logger

logger = get_logger("predict.saliency")

ANY = LABELS.index("any")
TOP_K = 3  # slices shown large per series: the highest P(any), flagged or not
MAX_SHOWN = 8  # at most this many large slices per series (the report says when it cuts)
METHOD = {CNNEncoder: "Grad-CAM on the CNN's last feature map",
          SwinTransformer: "Grad-CAM on the last Swin stage's tokens, reshaped to their grid"}


@dataclass
class SliceView:
    """One slice shown large: ``index`` head to foot, ``image`` the model input's first window as
    uint8 [H, W], its six probabilities, and the saliency map in [0, 1] (None: not computed)."""

    index: int
    image: np.ndarray
    probs: np.ndarray
    saliency: np.ndarray | None = None


@dataclass
class SeriesViews:
    """The large slices of one predicted series. ``candidates``: slices that qualified (flagged
    or among the top-k by P(any)) before the cap; ``note``: why there is no map, if there is none."""

    series_id: str
    slices: list[SliceView]
    candidates: int
    cap: int
    top_k: int
    window: str
    method: str = ""
    note: str = ""


def shown_slices(probs: np.ndarray, threshold: float, top_k: int = TOP_K, cap: int = MAX_SHOWN) -> tuple[np.ndarray, int]:
    """Slices to show large (indices, ascending) and how many qualified before the cap.

    A slice qualifies when any probability reaches ``threshold`` or its P(any) is among the
    ``top_k`` highest; beyond ``cap`` the highest P(any) are kept.
    """
    p_any = probs[:, ANY]
    ranked = np.argsort(-p_any, kind="stable")
    qualifies = (probs >= threshold).any(axis=1)
    qualifies[ranked[:top_k]] = True
    chosen = [int(i) for i in ranked if qualifies[i]][:cap]
    return np.asarray(sorted(chosen), dtype=np.int64), int(qualifies.sum())


def saliency_network(model) -> tuple[paddle.nn.Layer | None, str]:
    """The dygraph network behind a predict model and an empty note, or None and why not."""
    if getattr(model, "kind", None) == "export":
        return None, ("no saliency: an exported model is a static inference graph without gradients "
                      "(predict with the training checkpoint to get the maps)")
    if getattr(model, "kind", None) == "average":
        return None, "no saliency: the prediction averages several models (predict with one of them to get its maps)"
    net = getattr(model, "model", None)
    encoder = getattr(net, "encoder", None)
    if not isinstance(encoder, tuple(METHOD)) or not hasattr(net, "forward_heads"):
        name = type(encoder).__name__ if encoder is not None else type(model).__name__
        return None, f"no saliency: implemented for CNN and Swin encoders, not {name}"
    return net, ""


def feature_maps(encoder, x: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor]:
    """``x`` [N, C, H, W] → (last feature map [N, C', h, w], pooled features [N, D]); the pooled
    features are those of ``encoder.forward_features`` (the tests check it), computed from the map."""
    if isinstance(encoder, CNNEncoder):
        fmap = encoder.backbone(x)
        return fmap, POOLS[encoder.pool](fmap)
    if isinstance(encoder, SwinTransformer):
        tokens = encoder.pos_drop(encoder.patch_embed(x))
        for layer in encoder.layers:
            tokens = layer(tokens)
        tokens = encoder.norm(tokens)  # [N, L, C]
        n, length, c = tokens.shape
        side = int(round(length ** 0.5))
        fmap = tokens.transpose([0, 2, 1]).reshape([n, c, side, side])
        return fmap, fmap.mean(axis=[2, 3])
    raise TypeError(f"no feature map for {type(encoder).__name__}")


@contextlib.contextmanager
def differentiable_rnns(net: paddle.nn.Layer) -> Iterator[list[paddle.Tensor]]:
    """Let gradients pass Paddle's fused RNN kernel (GRU/LSTM heads): it keeps what its backward
    needs only in training mode, where a dropout of 0 gives the eval output (the tests check), and
    its backward fails unless the weights' gradients are requested too. Yields those weights."""
    saved = [(layer, layer.training, layer.dropout) for layer in net.sublayers()
             if isinstance(layer, paddle.nn.layer.rnn.RNNBase)]
    try:
        for layer, _, _ in saved:
            layer.training, layer.dropout = True, 0.0
        yield [p for layer, _, _ in saved for p in layer.parameters() if not p.stop_gradient]
    finally:
        for layer, training, dropout in saved:
            layer.training, layer.dropout = training, dropout


def head_gradients(net, features: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """d(any logit at slice p) / d(features of slice p) for each p in ``positions``: [K, D].

    ``features`` [S, D] of one series in the model's order; one copy of the series per position
    makes all K gradients come out of one backward pass.
    """
    k, (s, _) = len(positions), features.shape
    copies = paddle.to_tensor(np.repeat(features[None], k, axis=0), stop_gradient=False)
    pick = np.zeros((k, s), np.float32)
    pick[np.arange(k), positions] = 1.0
    with differentiable_rnns(net) as rnn_weights:
        logits = prediction_logits(net.forward_heads(copies, paddle.ones([k, s], dtype="bool")))[:, :, ANY]
        grads = paddle.grad((logits * paddle.to_tensor(pick)).sum(), [copies, *rnn_weights])
    return grads[0].numpy()[np.arange(k), positions]


def grad_cam(net, image: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """Grad-CAM of the ``any`` output for slices ``positions`` of one series.

    ``image`` [S, C, H, W] in the model's slice order (the sequence head sees the whole series);
    returns float32 [K, H, W], each map scaled to a maximum of 1 (all zero when nothing in the
    slice raises P(any)), and the feature map's size (the maps' true resolution).
    """
    positions = np.asarray(positions, dtype=np.int64)
    encoder = net.encoder
    with paddle.no_grad():
        features = encoder.encode_series(paddle.to_tensor(image[None]), paddle.ones([1, len(image)], dtype="bool"))
    weights = head_gradients(net, features.numpy()[0], positions)
    if not np.isfinite(weights).all():  # e.g. Paddle's GRU backward on saturated gates (heads/base.py)
        raise FloatingPointError("the gradient through the sequence head is not finite")
    x = paddle.to_tensor(image[positions], stop_gradient=False)  # a graph even when the encoder is frozen
    fmap, pooled = feature_maps(encoder, x)
    (dmap,) = paddle.grad((pooled * paddle.to_tensor(weights)).sum(), fmap)
    cams = paddle.nn.functional.relu((dmap.mean(axis=[2, 3], keepdim=True) * fmap).sum(axis=1)).numpy()
    if not np.isfinite(cams).all():
        raise FloatingPointError("the gradient through the encoder is not finite")
    h, w = image.shape[2:]
    out = np.stack([cv2.resize(c.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) for c in cams])
    peak = out.reshape(len(out), -1).max(axis=1)
    maps = np.where(peak[:, None, None] > 0, out / np.maximum(peak, 1e-12)[:, None, None], 0.0).astype(np.float32)
    return maps, (int(cams.shape[1]), int(cams.shape[2]))


def input_range(transforms: Compose, channels: int) -> tuple[float, float]:
    """The model-input values of window levels 0 and 255 in the first channel: the eval
    transforms map intensities affinely (Normalize), so two flat slices recover the map."""
    flat = [np.full((32, 32, channels), v, np.uint8) for v in (0, 255)]
    lo, hi = (float(apply_transforms(transforms, [f])[0, 0].mean()) for f in flat)
    if hi == lo:
        raise ValueError("eval transforms map window levels 0 and 255 to the same value: no image to show")
    return lo, hi


class ReportViews:
    """Collects the large slices (and their maps) of each predicted series while its model input
    is still in memory: ``medseg.predict.run.folder_results`` calls it once per series, in the
    order of the results. ``views`` lines up with those results; ``seconds`` is the time spent.
    With ``neighbours`` (k) a slice shows its own first window, input channel ``k × windows``
    (``channel``)."""

    def __init__(self, model, transforms: Compose, windows: tuple[Window, ...], threshold: float,
                 saliency: bool = True, top_k: int = TOP_K, cap: int = MAX_SHOWN, neighbours: int = 0):
        self.net, self.note = saliency_network(model) if saliency else (None, "no saliency: turned off (--no_saliency)")
        self.method = next((m for cls, m in METHOD.items() if isinstance(getattr(self.net, "encoder", None), cls)), "")
        self.lo, self.hi = input_range(transforms, len(windows))
        self.channel = centre_channels(len(windows), neighbours).start
        centre, width = windows[0]
        self.window = f"{centre:g}/{width:g}"
        self.threshold, self.top_k, self.cap = threshold, top_k, cap
        self.views: list[SeriesViews] = []
        self.seconds = 0.0

    def __call__(self, series, probs: np.ndarray) -> None:
        """``series``: a :class:`medseg.predict.study.SeriesInput`; ``probs`` [S, 6] head to foot."""
        tic = time.perf_counter()
        shown, candidates = shown_slices(probs, self.threshold, self.top_k, self.cap)
        first = series.image[shown, self.channel]
        images = np.clip(np.rint((first - self.lo) * (255.0 / (self.hi - self.lo))), 0, 255).astype(np.uint8)
        maps: list[np.ndarray | None] = [None] * len(shown)
        note, method = self.note, self.method
        if self.net is not None and len(shown):
            order = np.arange(len(probs)) if series.order is None else np.asarray(series.order)
            position_of = np.argsort(order)  # slice index (head to foot) -> position in the model's order
            try:
                cams, (h, w) = grad_cam(self.net, series.model_image(), position_of[shown])
                maps = list(cams)
                method = f"{self.method} ({h}×{w} cells over the {series.image.shape[-1]} px input)"
            except Exception as exc:  # the maps explain; losing them must not lose the predictions
                logger.warning("%s: no saliency: %s: %s", series.series_id, type(exc).__name__, exc)
                note = f"no saliency: {type(exc).__name__}: {exc}"
        self.views.append(SeriesViews(
            series.series_id, [SliceView(int(i), img, probs[i].copy(), m) for i, img, m in zip(shown, images, maps)],
            candidates, self.cap, self.top_k, self.window, "" if note else method, note))
        self.seconds += time.perf_counter() - tic
