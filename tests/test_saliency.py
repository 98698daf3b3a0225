"""Grad-CAM of P(any) (medseg.predict.saliency): the two-step computation equals plain autograd
through the whole series, for CNN and Swin encoders and for GRU and transformer heads."""

from __future__ import annotations

import cv2
import numpy as np
import paddle
import pytest

from medseg.constants import DEFAULT_WINDOWS
from medseg.models import CNNEncoder, ICHSequenceClassifier, SwinTransformer
from medseg.models.outputs import prediction_logits
from medseg.predict.saliency import (ANY, ReportViews, differentiable_rnns, feature_maps, grad_cam, head_gradients,
                                     input_range, saliency_network, shown_slices)
from medseg.data.build import build_eval_transforms
from medseg.predict.study import SeriesInput

SLICES = 6


def _net(encoder, head: dict, **kwargs) -> ICHSequenceClassifier:
    paddle.seed(1)
    net = ICHSequenceClassifier(encoder=encoder, head=head, **kwargs)
    net.eval()
    return net


def _cnn(**kwargs) -> ICHSequenceClassifier:
    encoder = CNNEncoder(arch="mobilenet_v3_small", img_size=64, pool="max", chunk_size=4)
    return _net(encoder, {"type": "BiGRUSequenceHead", "hidden_size": 16, "feature_norm": True}, **kwargs)


def _swin() -> ICHSequenceClassifier:
    encoder = SwinTransformer(variant=None, img_size=56, embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=7,
                              drop_path_rate=0.0)
    return _net(encoder, {"type": "TransformerSequenceHead", "num_layers": 1, "nhead": 2, "dim_feedforward": 32})


def _series(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(SLICES, 3, size, size)).astype(np.float32)


def _direct(net, image: np.ndarray, slice_index: int) -> np.ndarray:
    """Grad-CAM by plain autograd: every slice through the encoder with gradients, one backward
    from the any logit of ``slice_index`` (what the two-step computation must reproduce)."""
    x = paddle.to_tensor(image, stop_gradient=False)
    fmap, pooled = feature_maps(net.encoder, x)
    with differentiable_rnns(net) as rnn_weights:
        outputs = net.forward_heads(pooled.unsqueeze(0), paddle.ones([1, len(image)], dtype="bool"))
        logit = prediction_logits(outputs)[0, slice_index, ANY]
        dmap = paddle.grad(logit, [fmap, *rnn_weights])[0].numpy()[slice_index]
    a = fmap.numpy()[slice_index]
    cam = np.maximum((dmap.mean(axis=(1, 2))[:, None, None] * a).sum(axis=0), 0)
    cam = cv2.resize(cam.astype(np.float32), image.shape[-2:][::-1], interpolation=cv2.INTER_LINEAR)
    return cam / cam.max() if cam.max() > 0 else cam


@pytest.mark.parametrize("build,size,grid", [(_cnn, 64, (2, 2)), (_swin, 56, (7, 7))], ids=["cnn_bigru", "swin_transformer"])
def test_grad_cam_equals_autograd_through_the_series(build, size, grid):
    net = build()
    image = _series(size)
    x = paddle.to_tensor(image)
    _, pooled = feature_maps(net.encoder, x)
    np.testing.assert_allclose(pooled.numpy(), net.encoder.forward_features(x).numpy(), rtol=1e-5, atol=1e-6)
    positions = np.array([1, 4, 5])
    maps, shape = grad_cam(net, image, positions)
    assert shape == grid and maps.shape == (3, size, size)
    assert sum(m.max() == pytest.approx(1.0) for m in maps) >= 2  # not all zero (a map is zero where nothing raises P(any))
    for m, i in zip(maps, positions):
        np.testing.assert_allclose(m, _direct(net, image, int(i)), atol=2e-4)
    # Through the sequence head, slice 1's gradient depends on its neighbours' features.
    with paddle.no_grad():
        features = net.encoder.encode_series(paddle.to_tensor(image[None])).numpy()[0]
    base = head_gradients(net, features, np.array([1]))
    features[[0, 2]] += np.random.default_rng(4).normal(size=features[[0, 2]].shape).astype(np.float32)
    moved = head_gradients(net, features, np.array([1]))
    assert np.abs(moved - base).max() > 1e-3 * np.abs(base).max()  # float noise is ~1e-7 of it


def test_rnn_head_in_differentiable_mode_gives_the_eval_output():
    net = _cnn()
    features = paddle.to_tensor(np.random.default_rng(2).normal(size=(2, SLICES, net.encoder.feature_dim)).astype(np.float32))
    mask = paddle.ones([2, SLICES], dtype="bool")
    with paddle.no_grad():
        before = prediction_logits(net.forward_heads(features, mask)).numpy()
        with differentiable_rnns(net):
            during = prediction_logits(net.forward_heads(features, mask)).numpy()
        after = prediction_logits(net.forward_heads(features, mask)).numpy()
    np.testing.assert_allclose(during, before, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(after, before)
    gru = net.head.gru
    assert not gru.training and gru.dropout == net.head.dropout_p  # restored


def test_frozen_encoder_still_gets_a_map():
    net = _cnn(freeze_encoder=True, residual=True)
    maps, _ = grad_cam(net, _series(64), np.array([0]))
    assert maps.max() == pytest.approx(1.0)


def test_shown_slices_threshold_top_k_and_cap():
    probs = np.zeros((12, 6))
    probs[:, ANY] = np.linspace(0.1, 0.2, 12)  # top 3 by P(any): 9, 10, 11
    probs[2, 0] = 0.9  # flagged by a subtype with a low P(any)
    shown, candidates = shown_slices(probs, threshold=0.5, top_k=3, cap=8)
    assert shown.tolist() == [2, 9, 10, 11] and candidates == 4
    probs[:, ANY] = np.linspace(0.6, 0.95, 12)  # every slice flagged
    shown, candidates = shown_slices(probs, threshold=0.5, top_k=3, cap=8)
    assert shown.tolist() == list(range(4, 12)) and candidates == 12


class _Model:
    """What predict's backend hands over: a ``kind`` and, for a checkpoint, the network."""

    def __init__(self, kind: str, model=None):
        self.kind, self.model = kind, model


def test_report_views_follow_the_model_order_and_say_why_not():
    net = _cnn()
    transforms = build_eval_transforms([{"type": "Normalize", "mean": [0.5] * 3, "std": [0.25] * 3}, {"type": "ToCHW"}])
    assert input_range(transforms, 3) == pytest.approx((-2.0, 2.0))
    levels = np.random.default_rng(3).integers(0, 256, size=(SLICES, 64, 64, 3)).astype(np.uint8)
    image = ((levels / 255.0 - 0.5) / 0.25).transpose(0, 3, 1, 2).astype(np.float32)
    order = np.array([3, 0, 5, 1, 4, 2])  # the model takes the slices in this order
    series = SeriesInput("s", "st", "p", [f"f{i}" for i in range(SLICES)], [f"id{i}" for i in range(SLICES)],
                         np.arange(SLICES, dtype=float), image, np.zeros((SLICES, 8, 8), np.uint8), order=order)
    probs = np.full((SLICES, 6), 0.1)
    probs[4, ANY] = 0.9

    views = ReportViews(_Model("checkpoint", net), transforms, DEFAULT_WINDOWS, threshold=0.5, top_k=1)
    views(series, probs)
    (v,) = views.views
    assert [s.index for s in v.slices] == [4] and v.window == "40/80" and not v.note and "Grad-CAM" in v.method
    np.testing.assert_array_equal(v.slices[0].image, levels[4, ..., 0])  # the first window, back as uint8
    expected, _ = grad_cam(net, image[order], np.array([4]))  # slice 4 sits at model position 4 of `order`
    np.testing.assert_allclose(v.slices[0].saliency, expected[0], atol=1e-6)

    exported = ReportViews(_Model("export"), transforms, DEFAULT_WINDOWS, threshold=0.5)
    exported(series, probs)
    assert all(s.saliency is None for s in exported.views[0].slices)
    assert "static inference graph without gradients" in exported.views[0].note
    off = ReportViews(_Model("checkpoint", net), transforms, DEFAULT_WINDOWS, threshold=0.5, saliency=False)
    off(series, probs)
    assert off.views[0].slices[0].saliency is None and "--no_saliency" in off.views[0].note
    assert saliency_network(_Model("checkpoint", object()))[0] is None


def test_a_non_finite_gradient_is_said_not_drawn():
    """Paddle's GRU backward turns saturated gates into NaN (large features, no feature_norm):
    the report must say so instead of drawing an empty map."""
    net = _net(CNNEncoder(arch="resnet18", img_size=64), {"type": "BiGRUSequenceHead", "hidden_size": 8})
    image = _series(64) * 100
    with pytest.raises(FloatingPointError, match="not finite"):
        grad_cam(net, image, np.array([0]))
    transforms = build_eval_transforms([{"type": "Normalize"}, {"type": "ToCHW"}])
    series = SeriesInput("s", "st", "p", ["f"] * SLICES, [f"id{i}" for i in range(SLICES)], np.arange(SLICES, dtype=float),
                         image, np.zeros((SLICES, 8, 8), np.uint8))
    views = ReportViews(_Model("checkpoint", net), transforms, DEFAULT_WINDOWS, threshold=0.5)
    views(series, np.full((SLICES, 6), 0.1))
    assert "not finite" in views.views[0].note and all(s.saliency is None for s in views.views[0].slices)
