"""Training losses: masked, class-weighted BCE per model output, combined with coefficients."""

from __future__ import annotations

from typing import Sequence

import paddle
import paddle.nn.functional as F

from medseg.constants import CLASS_WEIGHTS
from medseg.models.outputs import SEQUENCE, SLICE
from medseg.registry import LOSSES


@LOSSES.add_component
class MaskedWeightedBCE(paddle.nn.Layer):
    """Mean over real slices of the class-weighted BCE (weights normalised to sum 1).

    With the default weights ``[1, 1, 1, 1, 1, 2]`` this is the Kaggle metric written as a loss.
    Padded slices (``mask`` False) contribute nothing, whatever their logits; labels may be soft.
    """

    def __init__(self, weights: Sequence[float] = CLASS_WEIGHTS):
        super().__init__()
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"MaskedWeightedBCE: weights must be non-negative with a positive sum, got {list(weights)}")
        self.weights = [float(w) for w in weights]

    def forward(self, logits: paddle.Tensor, label: paddle.Tensor, mask: paddle.Tensor) -> paddle.Tensor:
        if logits.shape[-1] != len(self.weights):
            raise ValueError(f"MaskedWeightedBCE: {len(self.weights)} weights for {logits.shape[-1]} outputs")
        logits = logits.astype("float32")
        weights = paddle.to_tensor(self.weights, dtype="float32")
        keep = mask.astype("bool")
        # Zero the padded rows before the BCE so a non-finite padded logit cannot leak a NaN.
        safe_logits = paddle.where(keep.unsqueeze(-1), logits, paddle.zeros_like(logits))
        safe_label = paddle.where(keep.unsqueeze(-1), label, paddle.zeros_like(label))
        bce = F.binary_cross_entropy_with_logits(safe_logits, safe_label, reduction="none")
        per_slice = (bce * weights).sum(axis=-1) / weights.sum()
        keep_f = keep.astype("float32")
        return (per_slice * keep_f).sum() / keep_f.sum().clip(min=1.0)


@LOSSES.add_component
class MixedLoss(paddle.nn.Layer):
    """``sum_i coef[i] * losses[i](outputs[names[i]], label, mask)``: one loss per named model output.

    The paper trains the sequence output and the slice output together with coefficients
    ``[2, 1]`` (``outputs: [sequence, slice]``, the default for two losses); a slice-only model
    has one loss on ``outputs: [slice]``.
    """

    def __init__(self, losses: Sequence[paddle.nn.Layer], coef: Sequence[float], outputs: Sequence[str] | None = None):
        super().__init__()
        if len(losses) != len(coef) or not losses:
            raise ValueError(f"MixedLoss: {len(losses)} losses but {len(coef)} coefficients")
        if outputs is None:
            if len(losses) != 2:
                raise ValueError(f"MixedLoss: name the model output each of the {len(losses)} losses reads "
                                 f"(outputs: [{SLICE}] for a slice-only model)")
            outputs = (SEQUENCE, SLICE)
        if len(outputs) != len(losses):
            raise ValueError(f"MixedLoss: {len(losses)} losses but {len(outputs)} output names")
        self.losses = paddle.nn.LayerList(list(losses))
        self.coef = [float(c) for c in coef]
        self.outputs = [str(name) for name in outputs]

    def forward(self, outputs: dict[str, paddle.Tensor], label: paddle.Tensor,
                mask: paddle.Tensor) -> tuple[paddle.Tensor, list[paddle.Tensor]]:
        missing = [name for name in self.outputs if name not in outputs]
        if missing:
            raise ValueError(f"MixedLoss: the model has no {missing[0]!r} output (it returns {', '.join(outputs)}); "
                             "set loss.outputs to the outputs to train")
        parts = [loss(outputs[name], label, mask) for loss, name in zip(self.losses, self.outputs)]
        total = paddle.add_n([c * p for c, p in zip(self.coef, parts)])
        return total, parts
