"""Training losses: masked, class-weighted BCE per model output, combined with coefficients."""

from __future__ import annotations

from typing import Sequence

import paddle
import paddle.nn.functional as F

from medseg.constants import CLASS_WEIGHTS
from medseg.models.outputs import SEQUENCE, SLICE
from medseg.registry import LOSSES


NORMALIZATIONS = ("labels", "weights")


@LOSSES.add_component
class MaskedWeightedBCE(paddle.nn.Layer):
    """Class-weighted BCE over the real slices of a batch; padded slices (``mask`` False) count for
    nothing, whatever their logits. Labels may be soft.

    ``normalize`` picks the denominator of ``Σ w·bce`` over real slices:
    - ``"labels"``: the number of label elements (6 per real slice), as the released code of the
      paper does (``Σ mask·w·bce / (Σ mask + 1e-5)``, mask element-wise); what
      ``config/_base_/loss_paper.yml`` uses, so the paper configs train with its gradients.
    - ``"weights"`` (default): the sum of the weights (7 per real slice), i.e. the mean over slices
      of the Kaggle metric written as a loss; 6/7 of the ``labels`` value, same minimiser.
    """

    def __init__(self, weights: Sequence[float] = CLASS_WEIGHTS, normalize: str = "weights"):
        super().__init__()
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"MaskedWeightedBCE: weights must be non-negative with a positive sum, got {list(weights)}")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"MaskedWeightedBCE: normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        self.weights = [float(w) for w in weights]
        self.normalize = normalize

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
        keep_f = keep.astype("float32")
        total = ((bce * weights).sum(axis=-1) * keep_f).sum()
        if self.normalize == "labels":
            return total / (keep_f.sum() * len(self.weights) + 1e-5)
        return total / (keep_f.sum().clip(min=1.0) * weights.sum())


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
