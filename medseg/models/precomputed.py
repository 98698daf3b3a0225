"""An encoder whose work was done beforehand: the slice features saved by ``medseg.tools.embed``.

A stage 2 on saved embeddings trains the same :class:`~medseg.models.classifier.ICHSequenceClassifier`
(sequence head, residual, losses, checkpoints) with this encoder in place of the image encoder:
its "images" are the features ``[B, S, D]`` themselves. It keeps the per-slice linear head of
:class:`SliceEncoder` (loaded from the stage-1 checkpoint with ``train.py --pretrained``), so the
checkpoint's names (``encoder.head.*``, ``head.*``) are those of the image model, which is what
lets the trained head join its encoder (:mod:`medseg.data.embeddings_join`).
"""

from __future__ import annotations

import paddle

from medseg.models.encoders.base import SliceEncoder
from medseg.registry import ENCODERS


@ENCODERS.add_component
class PrecomputedEncoder(SliceEncoder):
    """Identity features: ``encode_series(features [B, S, D], mask)`` → the features, padded rows 0.

    Args:
        feature_dim: width D of the saved features (the embeddings' ``manifest.json`` says it;
            the trainer refuses a mismatch).
        num_classes: outputs of the per-slice head.
    """

    def __init__(self, feature_dim: int, num_classes: int = 6):
        if int(feature_dim) < 1:
            raise ValueError(f"PrecomputedEncoder: feature_dim must be a positive width, got {feature_dim}")
        super().__init__(int(feature_dim), num_classes, chunk_size=None)

    def _check(self, x: paddle.Tensor, ndim: int) -> None:
        if x.ndim != ndim or x.shape[-1] != self.feature_dim:
            want = "[B, S, D]" if ndim == 3 else "[N, D]"
            raise ValueError(f"PrecomputedEncoder takes saved features {want} with D = {self.feature_dim}, got shape "
                             f"{list(x.shape)} (an image dataset with an embeddings model, or embeddings of another encoder?)")

    def forward_features(self, x: paddle.Tensor) -> paddle.Tensor:
        """[N, D] features → themselves."""
        self._check(x, 2)
        return x

    def encode_series(self, images: paddle.Tensor, mask: paddle.Tensor | None = None) -> paddle.Tensor:
        self._check(images, 3)
        if mask is None:
            return images
        return images * mask.astype(images.dtype).unsqueeze(-1)
