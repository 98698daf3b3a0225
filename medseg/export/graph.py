"""Static-graph-friendly views of :class:`ICHSequenceClassifier` for ``paddle.jit.to_static``.

Why not trace the classifier itself: ``SliceEncoder.encode_series`` decides in Python whether a
batch has padding (``bool(mask.all())``) and loops over chunks of a data-dependent length, which
a static graph cannot express. In eval mode neither changes the result: BatchNorm uses running
statistics, so each slice's features are independent of the others, and padded positions get
zero features either way. These wrappers encode every slice in one pass, zero the padded
features and then call the model's own :meth:`~ICHSequenceClassifier.forward_heads` (slice head,
sequence head, residual) — the same layers and weights, so the outputs equal the dygraph model's
(the tests check it).

Three graphs are exported (see ``medseg.export.save``):

* :class:`SeriesGraph`  ``(image [B, S, C, H, W], mask [B, S]) → probabilities [B, S, 6]``;
* :class:`EncoderGraph` ``slices [N, C, H, W] → features [N, D]``;
* :class:`HeadGraph`    ``(features [B, S, D], mask [B, S]) → probabilities [B, S, 6]``.

The split pair exists because Paddle Inference's oneDNN kernels miscompute the sequence head's
positional table when the slice count is dynamic (measured with Paddle 3.3.1: differences up to
2.0 in the table), while the CNN encoder is exact and about 10× faster with oneDNN. Running the
encoder with oneDNN and the small head without it is both fast and exact.
"""

from __future__ import annotations

import paddle
import paddle.nn as nn

from medseg.models.classifier import ICHSequenceClassifier
from medseg.models.outputs import prediction_logits


def check_exportable(model: nn.Layer) -> ICHSequenceClassifier:
    if not isinstance(model, ICHSequenceClassifier):
        raise TypeError(f"export supports ICHSequenceClassifier models, got {type(model).__name__}")
    return model


def _sequence_probabilities(model: ICHSequenceClassifier, features: paddle.Tensor, mask: paddle.Tensor) -> paddle.Tensor:
    """features [B, S, D] (padded rows zero) → sigmoid of the model's eval output, [B, S, 6]."""
    features = features * mask.astype(features.dtype).unsqueeze(-1)
    return paddle.nn.functional.sigmoid(prediction_logits(model.forward_heads(features, mask.astype("bool"))))


class SeriesGraph(nn.Layer):
    """The whole model as one graph; padded positions come out as 0.5 (sigmoid of a zeroed logit)
    and are dropped by the caller through the mask, as with the dygraph model."""

    def __init__(self, model: ICHSequenceClassifier):
        super().__init__()
        self.model = check_exportable(model)
        self.eval()

    def forward(self, image: paddle.Tensor, mask: paddle.Tensor) -> paddle.Tensor:
        flat = image.reshape([-1, image.shape[2], image.shape[3], image.shape[4]])
        features = self.model.encoder.forward_features(flat)  # [B*S, D]
        # -1 for B, the traced (symbolic) S: the slice count stays dynamic in the saved graph.
        features = features.reshape([-1, image.shape[1], features.shape[-1]])
        return _sequence_probabilities(self.model, features, mask)


class EncoderGraph(nn.Layer):
    """The slice encoder alone: ``[N, C, H, W] → [N, D]`` pooled features."""

    def __init__(self, model: ICHSequenceClassifier):
        super().__init__()
        self.encoder = check_exportable(model).encoder
        self.eval()

    def forward(self, slices: paddle.Tensor) -> paddle.Tensor:
        return self.encoder.forward_features(slices)


class HeadGraph(nn.Layer):
    """Per-slice and sequence heads: ``(features [B, S, D], mask [B, S]) → probabilities``."""

    def __init__(self, model: ICHSequenceClassifier):
        super().__init__()
        self.model = check_exportable(model)
        self.eval()

    def forward(self, features: paddle.Tensor, mask: paddle.Tensor) -> paddle.Tensor:
        return _sequence_probabilities(self.model, features, mask)
