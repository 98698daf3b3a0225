"""CNN slice encoders from ``paddle.vision.models`` (built with ``pretrained=False``: no downloads).

The backbone is kept under ``backbone.`` with paddle.vision's own parameter names, so its
ImageNet ``.pdparams`` load through the ``paddle_vision`` key map (``fc.*``/``out.*`` → ``head.*``).
"""

from __future__ import annotations

from typing import Callable

import paddle
import paddle.vision.models as pvm

from medseg.data.neighbours import check_neighbours
from medseg.models.encoders.base import SliceEncoder, widen_input_conv
from medseg.registry import ENCODERS

# name → paddle.vision constructor; all accept num_classes / with_pool. The MobileNet/ShuffleNet
# entries are the cheap encoders for CPU demos and smoke runs (about 13× less compute than
# ResNet-18 at 128 px).
ARCHS: dict[str, Callable] = {
    "mobilenet_v3_small": pvm.mobilenet_v3_small,
    "mobilenet_v3_large": pvm.mobilenet_v3_large,
    "shufflenet_v2_x0_5": pvm.shufflenet_v2_x0_5,
    "shufflenet_v2_x1_0": pvm.shufflenet_v2_x1_0,
    "resnet18": pvm.resnet18,
    "resnet34": pvm.resnet34,
    "resnet50": pvm.resnet50,
    "resnet101": pvm.resnet101,
    "resnext50_32x4d": pvm.resnext50_32x4d,
    "resnext50_64x4d": pvm.resnext50_64x4d,
    "wide_resnet50_2": pvm.wide_resnet50_2,
    "densenet121": pvm.densenet121,
    "densenet169": pvm.densenet169,
    "densenet201": pvm.densenet201,
}


def _feature_width(backbone: paddle.nn.Layer) -> int:
    """Width of the pooled features, read from the built backbone rather than a table."""
    if isinstance(backbone, pvm.DenseNet):
        return int(backbone.batch_norm.weight.shape[0])
    if isinstance(backbone, pvm.ResNet):
        return int(backbone.inplanes)  # planes * expansion of the last stage after _make_layer
    # Other families name their last layer differently: ask the network itself, once, in eval
    # mode so that BatchNorm statistics are untouched.
    was_training = backbone.training
    backbone.eval()
    with paddle.no_grad():
        width = int(backbone(paddle.zeros([1, 3, 64, 64])).shape[1])
    backbone.train(was_training)
    return width


def input_conv_name(backbone: paddle.nn.Layer) -> str:
    """The name (under ``backbone``) of the first Conv2D that takes the 3 image channels."""
    for name, layer in backbone.named_sublayers():
        if isinstance(layer, paddle.nn.Conv2D) and int(layer._in_channels) == 3:
            return name
    raise ValueError(f"{type(backbone).__name__}: no Conv2D with 3 input channels to widen for neighbours")


def replace_sublayer(root: paddle.nn.Layer, name: str, layer: paddle.nn.Layer) -> None:
    """Put ``layer`` at the dotted ``name`` under ``root``."""
    *path, last = name.split(".")
    parent = root
    for part in path:
        parent = parent._sub_layers[part]
    parent._sub_layers[last] = layer


POOLS: dict[str, Callable[[paddle.Tensor], paddle.Tensor]] = {
    "avg": lambda x: x.mean(axis=[2, 3]),
    "max": lambda x: x.amax(axis=[2, 3]),
    "avgmax": lambda x: 0.5 * (x.mean(axis=[2, 3]) + x.amax(axis=[2, 3])),
}


@ENCODERS.add_component
class CNNEncoder(SliceEncoder):
    """A paddle.vision CNN without its classifier: global-average-pooled features [N, D].

    Args:
        arch: one of ``ARCHS`` (resnet18/34/50/101, resnext50_32x4d/64x4d, wide_resnet50_2,
            densenet121/169/201, mobilenet_v3_small/large, shufflenet_v2_x0_5/x1_0).
        scale: width multiplier for the MobileNet-V3 family (paddle.vision's ``scale``).
        pool: how the last feature map becomes one vector: ``avg`` (paddle.vision's default),
            ``max``, or ``avgmax`` (their mean). A bleed can be a few pixels of a slice; max pooling
            keeps such a small bright finding from being averaged away, which helps models trained
            from scratch.
        bn_momentum: override the running-statistics momentum of every BatchNorm layer (Paddle:
            running = momentum * running + (1 - momentum) * batch). paddle.vision's MobileNetV3
            uses 0.99, which lags far behind the weights in a short run from scratch, so eval-mode
            features collapse; 0.9 (ResNet's value) follows them.
        img_size: the slice size the data pipeline feeds (CNNs accept any size); if set, inputs
            of another size are rejected, which catches a transform/model mismatch early, and
            ``model_info`` uses it.
        pretrained: a local ``.pdparams``/``.safetensors`` file (paddle.vision names or ours).
        head_dropout: see :class:`SliceEncoder`.
        neighbours: k neighbour slices on each side stacked as channels (set by the config's
            top-level ``neighbours``, :mod:`medseg.data.neighbours`): the first 3-channel Conv2D
            takes 3(2k+1) channels, centre block as built, the others zero
            (:func:`widen_input_conv`); 3-channel pretrained kernels load into the centre block.
    """

    def __init__(
        self,
        arch: str = "resnet18",
        num_classes: int = 6,
        chunk_size: int | None = 32,
        recompute: bool = False,
        img_size: int | None = None,
        pretrained: str | None = None,
        scale: float | None = None,
        pool: str = "avg",
        bn_momentum: float | None = None,
        head_dropout: float = 0.0,
        neighbours: int = 0,
    ):
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; known: {', '.join(POOLS)}")
        if arch not in ARCHS:
            raise ValueError(f"unknown CNN arch {arch!r}; known: {', '.join(ARCHS)}")
        extra = {}
        if scale is not None:
            if not arch.startswith("mobilenet"):
                raise ValueError(f"scale applies to the mobilenet archs only, not {arch!r}")
            extra["scale"] = scale
        if arch.startswith("densenet"):
            # paddle.vision's DenseNet.forward fails with with_pool=False (it returns an unbound
            # variable), so keep its pool layer and make it a no-op: we pool ourselves.
            backbone = ARCHS[arch](pretrained=False, num_classes=0, with_pool=True, **extra)
            backbone.pool2d_avg = paddle.nn.Identity()
        else:
            backbone = ARCHS[arch](pretrained=False, num_classes=0, with_pool=False, **extra)
        super().__init__(_feature_width(backbone), num_classes, chunk_size, recompute, head_dropout)
        self.arch, self.img_size, self.pool = arch, img_size, pool
        if bn_momentum is not None:
            if not 0.0 <= bn_momentum < 1.0:
                raise ValueError(f"bn_momentum must be in [0, 1), got {bn_momentum}")
            for layer in backbone.sublayers():
                if isinstance(layer, paddle.nn.layer.norm._BatchNormBase):
                    layer._momentum = bn_momentum
        self.backbone = backbone
        self.neighbours = check_neighbours(neighbours, f"CNNEncoder({arch})")
        if self.neighbours:
            name = input_conv_name(backbone)
            conv = widen_input_conv(dict(backbone.named_sublayers())[name], self.neighbours)
            replace_sublayer(backbone, name, conv)
            self.input_conv, self.in_chans = f"backbone.{name}", int(conv._in_channels)
        self.load_pretrained(pretrained, key_map="auto")

    def forward_features(self, x: paddle.Tensor) -> paddle.Tensor:
        """[N, C, H, W] → [N, D]."""
        if self.img_size is not None and (x.shape[-1] != self.img_size or x.shape[-2] != self.img_size):
            raise ValueError(f"CNNEncoder({self.arch}) is configured for {self.img_size}px input, got {list(x.shape)}")
        return POOLS[self.pool](self.backbone(x))  # [N, D, h, w] -> [N, D]
