"""Bidirectional GRU sequence head (the top Kaggle solutions' choice), for ablation."""

from __future__ import annotations

import paddle
import paddle.nn as nn

from medseg.models.heads.base import SequenceHead
from medseg.registry import HEADS


@HEADS.add_component
class BiGRUSequenceHead(SequenceHead):
    """features [B, S, D] → BiGRU → dropout → linear → [B, S, 6].

    Padding is handled with ``sequence_length``: the backward direction starts at each series'
    last real slice, so padded slices never reach a real one. Real slices must come first (the
    collate pads at the end); other masks are rejected.
    """

    def __init__(
        self,
        d_model: int | None = None,
        hidden_size: int = 256,
        num_layers: int = 2,
        dropout: float = 0.2,
        num_classes: int = 6,
        feature_norm: bool = False,
    ):
        self.hidden_size, self.num_layers, self.dropout_p = hidden_size, num_layers, dropout
        super().__init__(d_model, num_classes, feature_norm)

    def _build(self, d_model: int) -> None:
        self.gru = nn.GRU(
            d_model,
            self.hidden_size,
            num_layers=self.num_layers,
            direction="bidirect",
            dropout=self.dropout_p if self.num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(self.dropout_p)
        self.decoder = nn.Linear(2 * self.hidden_size, self.num_classes)

    def _forward(self, x: paddle.Tensor, mask: paddle.Tensor) -> paddle.Tensor:
        lengths = mask.astype("int64").sum(axis=1)
        if paddle.in_dynamic_mode():  # a check on data: no static-graph counterpart (export feeds its own masks)
            prefix = paddle.arange(mask.shape[1], dtype="int64").unsqueeze(0) < lengths.unsqueeze(1)
            if not bool((prefix == mask).all()):
                raise ValueError("BiGRUSequenceHead needs real slices first and padding at the end of each series")
        out, _ = self.gru(x, sequence_length=lengths)
        return self.decoder(self.dropout(out))
