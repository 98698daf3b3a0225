"""Per-slice MLP head: the no-context control of the sequence-head ablation."""

from __future__ import annotations

import paddle
import paddle.nn as nn

from medseg.models.heads.base import SequenceHead
from medseg.registry import HEADS


@HEADS.add_component
class SliceMLPHead(SequenceHead):
    """features [B, S, D] → Linear → ReLU → dropout → Linear → [B, S, 6], each slice on its own.

    It sees no other slice, so in the classifier's residual form it can only recalibrate each slice
    from its own features; what a sequence head scores beyond it is what the neighbours add.
    """

    def __init__(self, d_model: int | None = None, hidden_size: int = 256, dropout: float = 0.2, num_classes: int = 6,
                 feature_norm: bool = False):
        self.hidden_size, self.dropout_p = hidden_size, dropout
        super().__init__(d_model, num_classes, feature_norm)

    def _build(self, d_model: int) -> None:
        self.mlp = nn.Sequential(
            nn.Linear(d_model, self.hidden_size), nn.ReLU(), nn.Dropout(self.dropout_p), nn.Linear(self.hidden_size, self.num_classes)
        )

    def _forward(self, x: paddle.Tensor, mask: paddle.Tensor) -> paddle.Tensor:
        return self.mlp(x)
