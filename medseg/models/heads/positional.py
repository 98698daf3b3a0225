"""Sinusoidal positional encoding (Vaswani et al.), computed for the length at hand.

The original cached a table of 60 positions, which breaks on longer clinical series; computing
the [S, D] table per call costs S × D sines and has no cap.
"""

from __future__ import annotations

import math

import paddle
import paddle.nn as nn


def sinusoid_table(length: int, d_model: int, dtype: str = "float32") -> paddle.Tensor:
    """[length, d_model]: sin on even channels, cos on odd ones."""
    pos = paddle.arange(length, dtype="float32").unsqueeze(1)
    div = paddle.exp(paddle.arange(0, d_model, 2, dtype="float32") * (-math.log(10000.0) / d_model))
    angles = pos * div  # [length, ceil(d/2)]
    table = paddle.stack([paddle.sin(angles), paddle.cos(angles)], axis=-1).reshape([length, -1])
    return table[:, :d_model].astype(dtype)


class PositionalEncoding(nn.Layer):
    """x [B, S, D] → dropout(x + PE[:S])."""

    def __init__(self, d_model: int, dropout: float = 0.2):
        super().__init__()
        self.d_model = d_model
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.dropout(x + sinusoid_table(x.shape[1], self.d_model, x.dtype).unsqueeze(0))
