"""The model's output interface (docs/design.md, "Model"): a dict of logits by name, the same in
training and eval.

``"slice"`` (per-slice logits) is always there; ``"sequence"`` (the sequence head's logits) when
the model has a sequence head. Each is ``[B, S, num_classes]`` with zeros at padded positions.
The loss picks its outputs by name; prediction uses :func:`prediction_logits`.
"""

from __future__ import annotations

import paddle

SLICE = "slice"
SEQUENCE = "sequence"


def prediction_logits(outputs: dict[str, paddle.Tensor]) -> paddle.Tensor:
    """The logits a prediction comes from: the sequence output if the model has one, else the slice output."""
    if not isinstance(outputs, dict):
        raise TypeError(f"a model must return a dict of logits by name ({SEQUENCE!r}, {SLICE!r}), got {type(outputs).__name__}")
    return outputs[SEQUENCE] if SEQUENCE in outputs else outputs[SLICE]
