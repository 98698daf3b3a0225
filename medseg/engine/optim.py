"""Optimisers and the learning-rate schedule, built from YAML by name."""

from __future__ import annotations

import math
from typing import Iterable

import paddle

from medseg.registry import OPTIMIZERS, SCHEDULERS


def _clip(grad_clip_norm: float | None):
    return paddle.nn.ClipGradByGlobalNorm(grad_clip_norm) if grad_clip_norm else None


@OPTIMIZERS.add_component
def Momentum(parameters: Iterable, learning_rate, momentum: float = 0.9, use_nesterov: bool = True,
             weight_decay: float = 1e-4, grad_clip_norm: float | None = None) -> paddle.optimizer.Optimizer:
    """SGD with (Nesterov) momentum and L2 weight decay — the paper: 0.9, 1e-4."""
    return paddle.optimizer.Momentum(learning_rate=learning_rate, momentum=momentum, parameters=parameters,
                                     use_nesterov=use_nesterov, weight_decay=weight_decay,
                                     grad_clip=_clip(grad_clip_norm))


@OPTIMIZERS.add_component
def AdamW(parameters: Iterable, learning_rate, beta1: float = 0.9, beta2: float = 0.999,
          weight_decay: float = 0.01, grad_clip_norm: float | None = None) -> paddle.optimizer.Optimizer:
    """AdamW (decoupled weight decay)."""
    return paddle.optimizer.AdamW(learning_rate=learning_rate, beta1=beta1, beta2=beta2, parameters=parameters,
                                  weight_decay=weight_decay, grad_clip=_clip(grad_clip_norm))


def warmup_cosine_lr(step: int, learning_rate: float, total_iters: int, warmup_iters: int = 0,
                     warmup_start_lr: float = 0.0, end_lr: float = 0.0) -> float:
    """Closed form: linear from ``warmup_start_lr`` to ``learning_rate`` over ``warmup_iters``
    steps, then half a cosine down to ``end_lr`` at ``total_iters`` (constant after)."""
    if step < warmup_iters:
        return warmup_start_lr + (learning_rate - warmup_start_lr) * step / warmup_iters
    span = max(total_iters - warmup_iters, 1)
    progress = min(step - warmup_iters, span) / span
    return end_lr + (learning_rate - end_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


@SCHEDULERS.add_component
class WarmupCosine(paddle.optimizer.lr.LRScheduler):
    """Linear warm-up then cosine decay (paper: 1e-3, 300 warm-up steps, 60 000 iterations).

    Paddle's ``CosineAnnealingDecay`` updates the rate recursively; this one evaluates the closed
    form at every step, so a resumed run gets exactly the rate of an uninterrupted one.
    """

    def __init__(self, learning_rate: float, total_iters: int, warmup_iters: int = 0,
                 warmup_start_lr: float = 0.0, end_lr: float = 0.0, last_epoch: int = -1):
        if total_iters < 1 or warmup_iters < 0:
            raise ValueError(f"WarmupCosine: need total_iters >= 1 and warmup_iters >= 0, got {total_iters}, {warmup_iters}")
        self.total_iters = int(total_iters)
        self.warmup_iters = int(warmup_iters)
        self.warmup_start_lr = float(warmup_start_lr)
        self.end_lr = float(end_lr)
        super().__init__(learning_rate=float(learning_rate), last_epoch=last_epoch)

    def get_lr(self) -> float:
        return warmup_cosine_lr(self.last_epoch, self.base_lr, self.total_iters, self.warmup_iters,
                                self.warmup_start_lr, self.end_lr)
