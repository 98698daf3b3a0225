"""The registered model: slice encoder → per-slice logits, plus a sequence head over the series."""

from __future__ import annotations

import paddle
import paddle.nn as nn

from medseg.models.encoders.base import SliceEncoder
from medseg.models.heads.base import SequenceHead
from medseg.models.heads.transformer import TransformerSequenceHead
from medseg.models.outputs import SEQUENCE, SLICE
from medseg.registry import ENCODERS, HEADS, MODELS, build
from medseg.utils.logger import get_logger

logger = get_logger("models")


@MODELS.add_component
class ICHSequenceClassifier(nn.Layer):
    """``model(image [B, S, C, H, W], mask [B, S] bool)`` as fixed in docs/design.md.

    Returns ``{"sequence": logits, "slice": logits}`` (:mod:`medseg.models.outputs`), each
    [B, S, num_classes], in training and eval alike. With ``sequential: false`` it is the
    slice-only model and returns ``{"slice": logits}``. Padded positions of every output are zero.

    Args:
        encoder: a built :class:`SliceEncoder` (YAML ``{type: SwinTransformer, ...}`` arrives built)
            or a config dict with ``type``.
        head: a :class:`SequenceHead` or its config dict; ``None`` means the paper's
            ``TransformerSequenceHead``. The classifier binds it to ``encoder.feature_dim``, so YAML
            heads need no ``d_model`` (if given it must match). Unused when ``sequential`` is false.
        sequential: add the sequence head (the paper's model) or not (slice-only baseline).
        num_classes: must equal the encoder's per-slice head size.
        head_lr_mult: learning-rate multiplier for the sequence head's parameters (Paddle's
            per-parameter ``optimize_attr``). With Adam-type optimisers every weight moves by about
            the learning rate per step whatever its gradient, and an encoder trained from scratch
            wants a rate at which the attention projections grow until self-attention drowns the
            residual path and every slice gets the same output; a smaller rate for the head avoids
            that collapse.
        freeze_encoder: train the sequence head on fixed slice features: the encoder (with its
            slice head and BatchNorm statistics) stays in eval mode and gets no gradients. The
            second stage of a two-stage recipe (slice encoder first, then a sequence model on its
            features, as the RSNA 2019 winners trained), and much cheaper per step.
        residual: the sequence head predicts a correction added to the slice logits instead of
            the logits themselves. With a zero-initialised decoder (head ``init_range: 0``) the
            model starts as the slice model, so a head trained briefly on top of a trained encoder
            starts calibrated and only has to learn what the neighbouring slices add. The paper's
            head (false) maps features to logits directly. Unused when ``sequential`` is false.
    """

    def __init__(
        self,
        encoder: dict | SliceEncoder,
        head: dict | SequenceHead | None = None,
        sequential: bool = True,
        num_classes: int = 6,
        head_lr_mult: float = 1.0,
        freeze_encoder: bool = False,
        residual: bool = False,
    ):
        super().__init__()
        if head_lr_mult < 0:
            raise ValueError(f"head_lr_mult must be >= 0, got {head_lr_mult}")
        if isinstance(encoder, dict):
            encoder = build(encoder, ENCODERS, "model.encoder")
        if not isinstance(encoder, SliceEncoder):
            raise TypeError(f"model.encoder must be a SliceEncoder (e.g. SwinTransformer, CNNEncoder), got {type(encoder).__name__}")
        if encoder.num_classes != num_classes:
            raise ValueError(f"encoder has {encoder.num_classes} outputs but model num_classes is {num_classes}")
        self.encoder = encoder
        self.freeze_encoder = bool(freeze_encoder)
        if self.freeze_encoder:
            for param in self.encoder.parameters():
                param.stop_gradient = True
        self.sequential = bool(sequential)
        self.residual = bool(residual)
        if self.freeze_encoder and not self.sequential:
            raise ValueError("freeze_encoder with sequential: false leaves nothing to train")
        self.num_classes = num_classes
        if not self.sequential:
            if head is not None:
                logger.info("sequential is false: the configured sequence head is not used")
            self.head = None
            return
        if head is None:
            head = TransformerSequenceHead(num_classes=num_classes)
        elif isinstance(head, dict):
            head = build(head, HEADS, "model.head")
        if not isinstance(head, SequenceHead):
            raise TypeError(f"model.head must be a SequenceHead, got {type(head).__name__}")
        if head.num_classes != num_classes:
            raise ValueError(f"head has {head.num_classes} outputs but model num_classes is {num_classes}")
        self.head = head.bind(encoder.feature_dim)
        for param in self.head.parameters():
            param.optimize_attr["learning_rate"] = float(head_lr_mult)

    def train(self, mode: bool = True):
        """Training mode, except a frozen encoder, which keeps its eval-mode behaviour."""
        super().train(mode)
        if mode and self.freeze_encoder:
            self._encoder_eval_flags()
        return self

    def _encoder_eval_flags(self) -> None:
        # Flags only: Layer.eval() would also switch Paddle's global tracer to eval mode.
        for layer in (self.encoder, *self.encoder.sublayers()):
            layer.training = False

    def _encode(self, image: paddle.Tensor, mask: paddle.Tensor) -> paddle.Tensor:
        if self.freeze_encoder:
            # Enforced here too, not only in train(): paddle.DataParallel.train() sets ``training``
            # on every sublayer directly without calling this class's train(), which would run the
            # frozen encoder with batch statistics (its BatchNorm running stats drifting) and drop path.
            if any(layer.training for layer in (self.encoder, *self.encoder.sublayers())):
                self._encoder_eval_flags()
            with paddle.no_grad():
                return self.encoder.encode_series(image, mask)
        return self.encoder.encode_series(image, mask)

    def forward_heads(self, features: paddle.Tensor, mask: paddle.Tensor) -> dict[str, paddle.Tensor]:
        """Per-slice features [B, S, D] (padded rows zero) + bool mask → the named outputs.

        Static-graph friendly (the export graphs call it): the branches depend on the model's
        configuration only, never on the data.
        """
        keep = mask.unsqueeze(-1).astype(features.dtype)  # zero the outputs at padded positions
        slice_logits = self.encoder.forward_head(features) * keep
        if self.head is None:
            return {SLICE: slice_logits}
        sequence_logits = self.head(features, mask) * keep
        if self.residual:
            sequence_logits = sequence_logits + slice_logits
        return {SEQUENCE: sequence_logits, SLICE: slice_logits}

    def forward(self, image: paddle.Tensor, mask: paddle.Tensor | None = None) -> dict[str, paddle.Tensor]:
        if mask is None:
            mask = paddle.ones(image.shape[:2], dtype="bool")
        mask = mask.astype("bool")
        return self.forward_heads(self._encode(image, mask), mask)  # features [B, S, D]
