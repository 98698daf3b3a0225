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

    Post-norm encoder layers with ReLU as in ``torch.nn.TransformerEncoderLayer``. The decoder is
    initialised as in the original (weights uniform in ±``init_range``, bias zero); the encoder
    layers keep Paddle's default initialisation.
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
    ):
        self.num_layers, self.nhead, self.dim_feedforward = num_layers, nhead, dim_feedforward
        self.dropout_p, self.init_range = dropout, init_range
        super().__init__(d_model, num_classes)

    def _build(self, d_model: int) -> None:
        if d_model % self.nhead:
            raise ValueError(f"d_model {d_model} is not divisible by nhead {self.nhead}")
        self.pos_encoder = PositionalEncoding(d_model, self.dropout_p)
        layer = nn.TransformerEncoderLayer(d_model, self.nhead, self.dim_feedforward, self.dropout_p, activation="relu")
        self.transformer_encoder = nn.TransformerEncoder(layer, self.num_layers)
        init = nn.initializer.Uniform(-self.init_range, self.init_range)
        self.decoder = nn.Linear(
            d_model, self.num_classes, weight_attr=paddle.ParamAttr(initializer=init), bias_attr=paddle.ParamAttr(initializer=nn.initializer.Constant(0.0))
        )

    def _forward(self, x: paddle.Tensor, mask: paddle.Tensor) -> paddle.Tensor:
        x = self.transformer_encoder(self.pos_encoder(x), key_padding_mask(mask))
        return self.decoder(x)
