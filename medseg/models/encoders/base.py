"""What every slice encoder shares: the per-slice ("stage 1") linear head and series encoding.

A subclass builds its backbone, then calls ``SliceEncoder.__init__`` first with the width of its
pooled features and implements ``forward_features(x [N, C, H, W]) -> [N, D]``. Everything that
deals with series (padding, chunking, activation checkpointing) lives here, once, so that a CNN and
a Swin encoder behave the same way inside the classifier.
"""

from __future__ import annotations

import abc

import numpy as np
import paddle
import paddle.nn as nn

from medseg.data.neighbours import check_neighbours


def widen_input_conv(conv: nn.Conv2D, neighbours: int) -> nn.Conv2D:
    """``conv`` taking ``2k + 1`` stacked slices (:mod:`medseg.data.neighbours`) instead of one:
    the same kernel size, stride, padding, dilation and bias, ``C(2k+1)`` input channels; its
    kernel is ``conv``'s in the centre block and zero in the others, so the widened encoder
    computes what ``conv``'s did on the centre slice. The new layer draws no random numbers
    (zero-initialised, then filled), so every later initialisation is the 2-D model's.
    ``neighbours`` 0 returns ``conv`` itself."""
    k = check_neighbours(neighbours, "widen_input_conv")
    if k == 0:
        return conv
    if conv._groups != 1:
        raise ValueError(f"widen_input_conv: a grouped input convolution ({conv._groups} groups) cannot take neighbours")
    channels = int(conv._in_channels)
    zero = nn.initializer.Constant(0.0)
    wide = nn.Conv2D(channels * (2 * k + 1), conv._out_channels, conv._kernel_size, stride=conv._stride, padding=conv._padding,
                     dilation=conv._dilation, groups=1, padding_mode=conv._padding_mode,
                     weight_attr=paddle.ParamAttr(initializer=zero),
                     bias_attr=False if conv.bias is None else paddle.ParamAttr(initializer=zero), data_format=conv._data_format)
    kernel = np.zeros(wide.weight.shape, dtype=np.float32)
    kernel[:, k * channels:(k + 1) * channels] = conv.weight.numpy()
    wide.weight.set_value(kernel)
    if conv.bias is not None:
        wide.bias.set_value(conv.bias.numpy())
    return wide


class SliceEncoder(nn.Layer, abc.ABC):
    """Base class: ``forward(x) = forward_head(forward_features(x))`` plus :meth:`encode_series`.

    Args:
        feature_dim: width D of the pooled per-slice features.
        num_classes: outputs of the per-slice linear head (6 labels).
        chunk_size: slices encoded per forward pass by :meth:`encode_series`; bounds the
            activation memory of long series. ``None`` encodes all real slices at once. With
            BatchNorm in training mode each chunk is normalised with its own statistics.
        recompute: activation checkpointing per chunk (paddle's ``fleet.utils.recompute``): only the
            chunk inputs are kept, activations are recomputed in backward. Meant for GPU training of
            the large encoders; ignored in eval mode.
        head_dropout: dropout on the pooled features in front of the per-slice head, training
            only (model noise for a Noisy-Student student, arXiv 1911.04252: 0.5 there). The
            features handed to a sequence head are not dropped. 0 builds no layer at all, so
            runs without it draw the same random numbers as before the option existed.

    A subclass that takes neighbour slices (``neighbours: k``, :mod:`medseg.data.neighbours`)
    widens its first convolution with :func:`widen_input_conv` and sets ``neighbours``,
    ``in_chans`` (its input channels) and ``input_conv`` (that convolution's name, whose
    3-channel pretrained kernel :mod:`medseg.models.weights` loads into the centre block).
    """

    neighbours = 0
    in_chans = 3
    input_conv: str | None = None

    def __init__(
        self,
        feature_dim: int,
        num_classes: int = 6,
        chunk_size: int | None = 32,
        recompute: bool = False,
        head_dropout: float = 0.0,
    ):
        super().__init__()
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive number of slices or null, got {chunk_size}")
        self.feature_dim = int(feature_dim)
        self.num_classes = int(num_classes)
        self.chunk_size = chunk_size
        self.recompute = bool(recompute)
        if not 0.0 <= head_dropout < 1.0:
            raise ValueError(f"head_dropout must be in [0, 1), got {head_dropout}")
        self.head_dropout = float(head_dropout)
        self.head_drop = nn.Dropout(self.head_dropout) if self.head_dropout else nn.Identity()
        self.head = nn.Linear(self.feature_dim, self.num_classes)

    @abc.abstractmethod
    def forward_features(self, x: paddle.Tensor) -> paddle.Tensor:
        """[N, C, H, W] slices → pooled features [N, feature_dim]."""

    def forward_head(self, features: paddle.Tensor) -> paddle.Tensor:
        """Per-slice logits from pooled features; works on [N, D] and on [B, S, D]."""
        return self.head(self.head_drop(features))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """[N, C, H, W] slices → [N, num_classes] per-slice logits."""
        return self.forward_head(self.forward_features(x))

    def _encode_chunk(self, x: paddle.Tensor) -> paddle.Tensor:
        if self.recompute and self.training:
            # Imported lazily: fleet pulls in the distributed stack, which CPU inference never needs.
            from paddle.distributed.fleet.utils import recompute

            # Non-reentrant (saved-tensor hooks): the backward is one pass over one graph, so each
            # parameter's gradient is accumulated once per step however many chunks used it. The
            # reentrant form (a PyLayer running its own backward per chunk) hands the gradient of
            # every parameter to paddle.DataParallel's reducer once per chunk: "has been ready
            # before" errors, or buckets all-reduced before later chunks added to them.
            # The input is made to need a gradient so that recompute does not warn that the block
            # needs none (parameters are not its inputs).
            x = x.detach()
            x.stop_gradient = False
            return recompute(self.forward_features, x, use_reentrant=False)
        return self.forward_features(x)

    def encode_series(self, images: paddle.Tensor, mask: paddle.Tensor | None = None) -> paddle.Tensor:
        """[B, S, C, H, W] (+ bool mask [B, S], True = real slice) → features [B, S, D].

        Only real slices are encoded (padding costs nothing and never enters BatchNorm
        statistics); padded positions get zero features.
        """
        if images.ndim != 5:
            raise ValueError(f"encode_series expects images [B, S, C, H, W], got shape {list(images.shape)}")
        b, s, c, h, w = images.shape
        flat = images.reshape([b * s, c, h, w])
        index = None
        if mask is not None:
            if list(mask.shape) != [b, s]:
                raise ValueError(f"mask shape {list(mask.shape)} does not match images [B, S] = {[b, s]}")
            flat_mask = mask.reshape([-1]).astype("bool")
            if not bool(flat_mask.all()):
                index = paddle.nonzero(flat_mask).reshape([-1])
                flat = paddle.gather(flat, index)
        n = flat.shape[0]
        step = n if self.chunk_size is None else self.chunk_size
        chunks = [self._encode_chunk(flat[i : i + step]) for i in range(0, n, step)]
        feats = chunks[0] if len(chunks) == 1 else paddle.concat(chunks, axis=0)  # [n_real, D]
        if index is not None:
            out = paddle.zeros([b * s, feats.shape[-1]], dtype=feats.dtype)
            feats = paddle.scatter(out, index, feats, overwrite=True)
        return feats.reshape([b, s, -1])

    def load_pretrained(self, path: str | None, key_map: str = "auto"):
        """Load local weights (``.pdparams``/``.safetensors``) into this encoder; see ``weights.py``."""
        if not path:
            return None
        from medseg.models.weights import load_pretrained

        return load_pretrained(self, path, key_map=key_map)
