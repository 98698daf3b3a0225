"""A bag of sequence heads on the same features, their logits averaged.

What ``train.py --bag N`` assembles (:mod:`medseg.engine.bagging`): N heads trained with different
seeds on one frozen encoder become one model, so infer.py, ``medseg.predict``, export and
pseudo-labelling take the bag like any checkpoint. Logits, not probabilities, are averaged: with
the classifier's ``residual`` the bag's output is then ``mean_i(head_i) + slice = mean_i(head_i +
slice)``, exactly the mean of the members' logits, and the bag stays one ``SequenceHead`` that the
export graphs trace. (The RSNA 2019 teams averaged probabilities; for members this alike the two
differ little.)
"""

from __future__ import annotations

from collections.abc import Sequence

import paddle
import paddle.nn as nn

from medseg.models.heads.base import SequenceHead
from medseg.registry import HEADS, build


@HEADS.add_component
class BaggedSequenceHead(SequenceHead):
    """``heads``: the members (configs or built heads; usually N copies of one config). The bag's
    own ``feature_norm`` is off: each member keeps its own."""

    def __init__(self, heads: Sequence[dict | SequenceHead], d_model: int | None = None, num_classes: int = 6):
        members = [build(h, [HEADS], f"BaggedSequenceHead.heads[{i}]") if isinstance(h, dict) else h
                   for i, h in enumerate(heads or ())]
        if not members:
            raise ValueError("BaggedSequenceHead: heads is empty")
        for i, member in enumerate(members):
            if not isinstance(member, SequenceHead) or isinstance(member, BaggedSequenceHead):
                raise TypeError(f"BaggedSequenceHead.heads[{i}]: expected a sequence head, got {type(member).__name__}")
            if member.num_classes != int(num_classes):
                raise ValueError(f"BaggedSequenceHead.heads[{i}] has {member.num_classes} outputs, the bag {num_classes}")
        super().__init__(None, num_classes, feature_norm=False)
        self.members = nn.LayerList(members)
        if d_model is not None:
            self.bind(d_model)

    def _build(self, d_model: int) -> None:
        for member in self.members:
            member.bind(d_model)

    def _forward(self, x: paddle.Tensor, mask: paddle.Tensor) -> paddle.Tensor:
        return paddle.stack([member(x, mask) for member in self.members]).mean(axis=0)
