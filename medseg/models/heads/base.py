"""Shared by sequence heads: the input width may be given now or bound later by the classifier.

The registry builds nested ``{type: ...}`` dicts before the classifier sees them, so a head in
YAML cannot know the encoder's feature width. A head built with ``d_model: null`` (the default)
creates its layers when :meth:`SequenceHead.bind` is called; ``ICHSequenceClassifier`` does that
with ``encoder.feature_dim`` in its constructor (before any optimizer sees the parameters). An
explicit ``d_model`` builds immediately and must then match the encoder.

``feature_norm`` (every head, off by default, not in the paper) puts a LayerNorm without learned
weights on the features before the head sees them. The paper's heads met LayerNorm'd Swin features;
a CNN's max-pooled features run many times larger (the demo encoder's up to about 50), which
drowns the transformer's ±1 sinusoidal positions and saturates a GRU's gates (the demo's BiGRU
stage 2 on a frozen eval-mode encoder produced a NaN gradient within 30 steps without it).
"""

from __future__ import annotations

import abc

import paddle
import paddle.nn as nn


class SequenceHead(nn.Layer, abc.ABC):
    """features [B, S, D] + bool mask [B, S] (True = real slice) → logits [B, S, num_classes]."""

    def __init__(self, d_model: int | None, num_classes: int = 6, feature_norm: bool = False):
        super().__init__()
        self.d_model: int | None = None
        self.num_classes = int(num_classes)
        self.feature_norm = bool(feature_norm)
        if d_model is not None:
            self.bind(d_model)

    def bind(self, d_model: int) -> "SequenceHead":
        """Create the layers for input width ``d_model`` (idempotent for the same width)."""
        if self.d_model is not None:
            if int(d_model) != self.d_model:
                raise ValueError(f"{type(self).__name__} was built for d_model={self.d_model}, the encoder gives {d_model}")
            return self
        self.d_model = int(d_model)
        if self.feature_norm:  # no parameters: checkpoints are the same with or without it
            self.input_norm = nn.LayerNorm(self.d_model, weight_attr=False, bias_attr=False)
        self._build(self.d_model)
        return self

    @abc.abstractmethod
    def _build(self, d_model: int) -> None:
        """Create the layers for input width ``d_model``."""

    @abc.abstractmethod
    def _forward(self, x: paddle.Tensor, mask: paddle.Tensor) -> paddle.Tensor:
        """x [B, S, D], bool mask [B, S] → logits [B, S, num_classes]."""

    def forward(self, x: paddle.Tensor, mask: paddle.Tensor | None = None) -> paddle.Tensor:
        if self.d_model is None:
            raise RuntimeError(f"{type(self).__name__} has no d_model yet: pass d_model or call bind(encoder.feature_dim)")
        if mask is None:
            mask = paddle.ones(x.shape[:2], dtype="bool")
        if self.feature_norm:
            x = self.input_norm(x)
        return self._forward(x, mask.astype("bool"))
