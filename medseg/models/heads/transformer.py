"""Transformer sequence head: positional encoding, encoder layers over slices, linear decoder."""

from __future__ import annotations

import paddle
import paddle.nn as nn

from medseg.models.heads.base import SequenceHead
from medseg.models.heads.positional import PositionalEncoding
from medseg.registry import HEADS


def key_padding_mask(mask: paddle.Tensor) -> paddle.Tensor:
    """bool [B, S] (True = real) → bool [B, 1, 1, S] for paddle attention (True = may attend).

    Every query (padded ones included) attends only to real keys, so padding cannot change a real
    slice's output; padded queries still have at least one real key and stay finite.
    """
    return mask.astype("bool").unsqueeze(1).unsqueeze(1)


@HEADS.add_component
class TransformerSequenceHead(SequenceHead):
    """The paper's stage-2 head (2 layers, 2 heads, feed-forward 200, dropout 0.2).

    Post-norm encoder layers with ReLU (Paddle's ``TransformerEncoderLayer`` defaults). Initialised
    as the released code: the encoder layers' attention and feed-forward weights uniform in
    ±``init_range`` with zero biases (LayerNorms at 1 / 0); the decoder Linear keeps Paddle's
    default initialisation.

    Options that depart from the paper (defaults keep it exact):
        zero_decoder: decoder weight and bias zero. With the classifier's ``residual: true`` the
            model then starts as the slice model. ``init_range: 0`` means the same (kept for
            earlier configs; the encoder layers then keep the original ±0.1).
        feature_norm: a LayerNorm (no affine) on the features before the positions are added, so
            that features of any scale meet the ±1 sinusoids as the original's LayerNorm'd Swin
            features do (:class:`SequenceHead`, shared by every head).
    """

    def __init__(
        self,
        d_model: int | None = None,
        num_layers: int = 2,
        nhead: int = 2,
        dim_feedforward: int = 200,
        dropout: float = 0.2,
        num_classes: int = 6,
        init_range: float = 0.1,
        zero_decoder: bool = False,
        feature_norm: bool = False,
    ):
        if init_range < 0:
            raise ValueError(f"init_range must be >= 0, got {init_range}")
        self.num_layers, self.nhead, self.dim_feedforward = num_layers, nhead, dim_feedforward
        self.dropout_p = dropout
        self.zero_decoder = bool(zero_decoder) or init_range == 0
        self.init_range = init_range if init_range > 0 else 0.1
        super().__init__(d_model, num_classes, feature_norm)

    def _build(self, d_model: int) -> None:
        if d_model % self.nhead:
            raise ValueError(f"d_model {d_model} is not divisible by nhead {self.nhead}")
        self.pos_encoder = PositionalEncoding(d_model, self.dropout_p)
        layer = nn.TransformerEncoderLayer(
            d_model,
            self.nhead,
            self.dim_feedforward,
            self.dropout_p,
            activation="relu",
            weight_attr=paddle.ParamAttr(initializer=nn.initializer.Uniform(-self.init_range, self.init_range)),
            bias_attr=paddle.ParamAttr(initializer=nn.initializer.Constant(0.0)),
        )
        self.transformer_encoder = nn.TransformerEncoder(layer, self.num_layers)
        if self.zero_decoder:
            zero = paddle.ParamAttr(initializer=nn.initializer.Constant(0.0))
            self.decoder = nn.Linear(d_model, self.num_classes, weight_attr=zero, bias_attr=zero)
        else:
            self.decoder = nn.Linear(d_model, self.num_classes)

    def _forward(self, x: paddle.Tensor, mask: paddle.Tensor) -> paddle.Tensor:
        x = self.transformer_encoder(self.pos_encoder(x), key_padding_mask(mask))
        return self.decoder(x)
