"""Swin Transformer slice encoder, self-contained (the timm one-file-per-architecture layout).

Written in-project because PaddleClas pins old numpy/OpenCV. Parameter names follow PaddleClas'
``SwinTransformer`` (``patch_embed.proj``, ``layers.N.blocks.M.attn.qkv``,
``relative_position_bias_table``, ``layers.N.downsample.reduction`` …) so that its ImageNet weights
load without renaming; the derived index/mask buffers are rebuilt here and not stored.

Block types (``block:``):
- ``postnorm``: the paper's model (the original calls it "SwinTransformerV2" but it only has the
  residual post-norm): ``x = x + DropPath(norm1(attn(x)))``, then the same for the MLP.
- ``prenorm``: Swin V1, ``x = x + DropPath(attn(norm1(x)))``.
Real Swin V2 features are separate switches: ``cosine_attention`` (scaled cosine attention with a
learnt per-head temperature) and ``continuous_position_bias`` (log-spaced coordinates through a
small MLP instead of the bias table). Deviation from V2: ``qkv`` keeps its full bias.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from medseg.data.neighbours import check_neighbours
from medseg.models.encoders.base import SliceEncoder, widen_input_conv
from medseg.registry import ENCODERS

VARIANTS: dict[str, dict] = {
    "tiny": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "small": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "base": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
    "large": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48)),
}
BLOCK_TYPES = ("postnorm", "prenorm")

_trunc_normal = nn.initializer.TruncatedNormal(std=0.02)
_zeros = nn.initializer.Constant(0.0)
_ones = nn.initializer.Constant(1.0)


def drop_path(x: paddle.Tensor, p: float, training: bool) -> paddle.Tensor:
    """Stochastic depth per sample: each sample's residual branch is kept or dropped as a whole."""
    if p <= 0.0 or not training:
        return x
    keep = 1.0 - p
    shape = [x.shape[0]] + [1] * (x.ndim - 1)
    mask = paddle.floor(keep + paddle.rand(shape, dtype=x.dtype))
    return x / keep * mask


class DropPath(nn.Layer):
    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Layer):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def window_partition(x: paddle.Tensor, w: int) -> paddle.Tensor:
    """[B, H, W, C] → [B * nW, w * w, C]."""
    b, h, wd, c = x.shape
    x = x.reshape([b, h // w, w, wd // w, w, c]).transpose([0, 1, 3, 2, 4, 5])
    return x.reshape([-1, w * w, c])


def window_reverse(windows: paddle.Tensor, w: int, h: int, wd: int) -> paddle.Tensor:
    """[B * nW, w * w, C] → [B, H, W, C]."""
    c = windows.shape[-1]
    x = windows.reshape([-1, h // w, wd // w, w, w, c]).transpose([0, 1, 3, 2, 4, 5])
    return x.reshape([-1, h, wd, c])


def relative_position_index(w: int) -> np.ndarray:
    """[w*w, w*w] index into the (2w-1)^2 relative-offset table (as in the original)."""
    coords = np.stack(np.meshgrid(np.arange(w), np.arange(w), indexing="ij")).reshape(2, -1)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (w - 1)
    return (rel[:, :, 0] * (2 * w - 1) + rel[:, :, 1]).astype("int64")


def log_spaced_coords(w: int) -> np.ndarray:
    """Swin V2 continuous position bias input: [(2w-1)^2, 2] log-spaced relative coordinates."""
    r = np.arange(-(w - 1), w, dtype="float32")
    table = np.stack(np.meshgrid(r, r, indexing="ij"), axis=-1).reshape(-1, 2)
    if w > 1:
        table = table / (w - 1)
    table = table * 8.0
    return (np.sign(table) * np.log2(np.abs(table) + 1.0) / np.log2(8.0)).astype("float32")


def shifted_window_mask(h: int, wd: int, w: int, shift: int) -> np.ndarray:
    """[nW, w*w, w*w] additive mask (0 / -100) keeping attention inside each shifted region."""
    img = np.zeros((h, wd), dtype="float32")
    cnt = 0
    for hs in (slice(0, -w), slice(-w, -shift), slice(-shift, None)):
        for ws in (slice(0, -w), slice(-w, -shift), slice(-shift, None)):
            img[hs, ws] = cnt
            cnt += 1
    win = img.reshape(h // w, w, wd // w, w).transpose(0, 2, 1, 3).reshape(-1, w * w)
    diff = win[:, None, :] - win[:, :, None]
    return np.where(diff != 0, -100.0, 0.0).astype("float32")


class WindowAttention(nn.Layer):
    """Multi-head self-attention inside windows with a relative position bias."""

    def __init__(
        self,
        dim: int,
        window_size: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        cosine_attention: bool = False,
        continuous_position_bias: bool = False,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.cosine_attention = cosine_attention
        self.continuous_position_bias = continuous_position_bias
        table_len = (2 * window_size - 1) ** 2
        if continuous_position_bias:
            self.cpb_mlp = nn.Sequential(nn.Linear(2, 512), nn.ReLU(), nn.Linear(512, num_heads, bias_attr=False))
            self.register_buffer("relative_coords_table", paddle.to_tensor(log_spaced_coords(window_size)), persistable=False)
        else:
            self.relative_position_bias_table = self.create_parameter([table_len, num_heads], default_initializer=_trunc_normal)
        if cosine_attention:
            self.logit_scale = self.create_parameter(
                [num_heads, 1, 1], default_initializer=nn.initializer.Constant(math.log(10.0))
            )
        self.register_buffer(
            "relative_position_index", paddle.to_tensor(relative_position_index(window_size).reshape(-1)), persistable=False
        )
        self.qkv = nn.Linear(dim, dim * 3, bias_attr=None if qkv_bias else False)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def position_bias(self) -> paddle.Tensor:
        """[1, heads, N, N] bias added to the attention logits."""
        n = self.window_size**2
        if self.continuous_position_bias:
            table = 16.0 * F.sigmoid(self.cpb_mlp(self.relative_coords_table))
        else:
            table = self.relative_position_bias_table
        bias = paddle.index_select(table, self.relative_position_index).reshape([n, n, -1])
        return bias.transpose([2, 0, 1]).unsqueeze(0)

    def forward(self, x: paddle.Tensor, mask: paddle.Tensor | None = None) -> paddle.Tensor:
        """x [B*nW, N, C]; mask [nW, N, N] additive or None."""
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape([bw, n, 3, self.num_heads, c // self.num_heads]).transpose([2, 0, 3, 1, 4])
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B*nW, heads, N, d]
        if self.cosine_attention:
            scale = paddle.exp(paddle.clip(self.logit_scale, max=math.log(100.0)))
            attn = paddle.matmul(F.normalize(q, axis=-1), F.normalize(k, axis=-1), transpose_y=True) * scale
        else:
            attn = paddle.matmul(q * self.scale, k, transpose_y=True)
        attn = attn + self.position_bias()
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.reshape([bw // nw, nw, self.num_heads, n, n]) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.reshape([-1, self.num_heads, n, n])
        attn = self.attn_drop(F.softmax(attn, axis=-1))
        out = paddle.matmul(attn, v).transpose([0, 2, 1, 3]).reshape([bw, n, c])
        return self.proj_drop(self.proj(out))

    def matmul_macs(self, num_tokens: int) -> int:
        """Multiply-adds of q·kᵀ and attn·v for ``num_tokens`` tokens (not seen by paddle.flops)."""
        return 2 * num_tokens * self.window_size**2 * self.dim


class SwinTransformerBlock(nn.Layer):
    """(Shifted-)window attention + MLP, each in a residual branch with pre- or post-norm."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        num_heads: int,
        window_size: int = 7,
        shift_size: int = 0,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        block: str = "postnorm",
        cosine_attention: bool = False,
        continuous_position_bias: bool = False,
    ):
        super().__init__()
        if block not in BLOCK_TYPES:
            raise ValueError(f"block must be one of {BLOCK_TYPES}, got {block!r}")
        h, w = input_resolution
        if min(h, w) <= window_size:  # the window covers the whole map: no partition, no shift
            window_size, shift_size = min(h, w), 0
        if h % window_size or w % window_size:
            raise ValueError(
                f"feature map {h}x{w} is not divisible by window {window_size}; choose img_size so that "
                f"img_size / patch_size / 2^stage is a multiple of window_size (or at most window_size)"
            )
        self.dim, self.input_resolution = dim, (h, w)
        self.window_size, self.shift_size, self.postnorm = window_size, shift_size, block == "postnorm"
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(
            dim, window_size, num_heads, qkv_bias, attn_drop, drop, cosine_attention, continuous_position_bias
        )
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        if shift_size > 0:
            mask = paddle.to_tensor(shifted_window_mask(h, w, window_size, shift_size))
            self.register_buffer("attn_mask", mask, persistable=False)
        else:
            self.attn_mask = None

    def _attention(self, x: paddle.Tensor) -> paddle.Tensor:
        h, w = self.input_resolution
        b, _, c = x.shape
        x = x.reshape([b, h, w, c])
        if self.shift_size:
            x = paddle.roll(x, shifts=(-self.shift_size, -self.shift_size), axis=(1, 2))
        windows = self.attn(window_partition(x, self.window_size), mask=self.attn_mask)
        x = window_reverse(windows, self.window_size, h, w)
        if self.shift_size:
            x = paddle.roll(x, shifts=(self.shift_size, self.shift_size), axis=(1, 2))
        return x.reshape([b, h * w, c])

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """x [B, H*W, C] → [B, H*W, C]."""
        if self.postnorm:
            x = x + self.drop_path(self.norm1(self._attention(x)))
            return x + self.drop_path(self.norm2(self.mlp(x)))
        x = x + self.drop_path(self._attention(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Layer):
    """2×2 neighbourhood → one token: [B, H*W, C] → [B, H/2*W/2, 2C] (V1 order: norm, reduce)."""

    def __init__(self, input_resolution: tuple[int, int], dim: int):
        super().__init__()
        self.input_resolution = input_resolution
        if input_resolution[0] % 2 or input_resolution[1] % 2:
            raise ValueError(f"patch merging needs an even feature map, got {input_resolution}")
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias_attr=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        h, w = self.input_resolution
        b, _, c = x.shape
        # Channel order x[0::2,0::2], x[1::2,0::2], x[0::2,1::2], x[1::2,1::2] as in the original,
        # which the pretrained reduction weights depend on.
        x = x.reshape([b, h // 2, 2, w // 2, 2, c]).transpose([0, 1, 3, 4, 2, 5])
        return self.reduction(self.norm(x.reshape([b, h * w // 4, 4 * c])))


class BasicLayer(nn.Layer):
    """One stage: ``depth`` blocks alternating plain and shifted windows, then optional merging."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        drop_path: Sequence[float],
        downsample: bool,
        **block_kwargs,
    ):
        super().__init__()
        self.blocks = nn.LayerList(
            [
                SwinTransformerBlock(
                    dim,
                    input_resolution,
                    num_heads,
                    window_size=window_size,
                    shift_size=0 if i % 2 == 0 else window_size // 2,
                    drop_path=drop_path[i],
                    **block_kwargs,
                )
                for i in range(depth)
            ]
        )
        self.downsample = PatchMerging(input_resolution, dim) if downsample else None

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class PatchEmbed(nn.Layer):
    """[B, C, H, W] → [B, H/p * W/p, D] by a strided convolution, then LayerNorm."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, patch_norm: bool = True):
        super().__init__()
        self.proj = nn.Conv2D(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if patch_norm else None

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.proj(x).flatten(2).transpose([0, 2, 1])
        return self.norm(x) if self.norm is not None else x


@ENCODERS.add_component
class SwinTransformer(SliceEncoder):
    """Swin slice encoder: ``forward_features`` → pooled [N, D]; ``forward_head`` → [N, 6].

    ``variant`` (tiny/small/base/large) fills ``embed_dim``/``depths``/``num_heads``; explicit values
    override it (tests use a tiny custom configuration). The input size is fixed at construction
    (``img_size``) because the shifted-window masks depend on it; every stage's feature map must
    be divisible by the window or smaller than it (then the window shrinks to the map, no shift).
    Drop path rises linearly from 0 to ``drop_path_rate`` over all blocks and acts per sample;
    ``head_dropout``: see :class:`SliceEncoder`. ``neighbours`` (k, set by the config's top-level
    ``neighbours``, :mod:`medseg.data.neighbours`): the patch embedding takes ``in_chans`` channels
    of each of 2k+1 stacked slices, its kernel for the centre slice initialised as usual and zero
    for the others (:func:`widen_input_conv`); ``in_chans``-channel pretrained kernels load into
    the centre block.
    """

    def __init__(
        self,
        variant: str | None = "base",
        img_size: int = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 6,
        embed_dim: int | None = None,
        depths: Sequence[int] | None = None,
        num_heads: Sequence[int] | None = None,
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.5,
        block: str = "postnorm",
        cosine_attention: bool = False,
        continuous_position_bias: bool = False,
        patch_norm: bool = True,
        chunk_size: int | None = 32,
        recompute: bool = False,
        pretrained: str | None = None,
        head_dropout: float = 0.0,
        neighbours: int = 0,
    ):
        if variant is not None and variant not in VARIANTS:
            raise ValueError(f"unknown Swin variant {variant!r}; known: {', '.join(VARIANTS)} (or null with explicit sizes)")
        spec = dict(VARIANTS[variant]) if variant else {}
        embed_dim = embed_dim or spec.get("embed_dim")
        depths = list(depths or spec.get("depths") or [])
        num_heads = list(num_heads or spec.get("num_heads") or [])
        if not embed_dim or not depths or len(depths) != len(num_heads):
            raise ValueError("SwinTransformer needs a variant or embed_dim plus depths and num_heads of equal length")
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        num_features = int(embed_dim * 2 ** (len(depths) - 1))
        super().__init__(num_features, num_classes, chunk_size, recompute, head_dropout)
        self.img_size, self.variant = img_size, variant
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, patch_norm)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = np.linspace(0.0, drop_path_rate, sum(depths)).tolist()
        res = img_size // patch_size
        self.layers = nn.LayerList()
        for i, depth in enumerate(depths):
            r = res // 2**i
            self.layers.append(
                BasicLayer(
                    int(embed_dim * 2**i),
                    (r, r),
                    depth,
                    num_heads[i],
                    window_size,
                    dpr[sum(depths[:i]) : sum(depths[: i + 1])],
                    downsample=i < len(depths) - 1,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    block=block,
                    cosine_attention=cosine_attention,
                    continuous_position_bias=continuous_position_bias,
                )
            )
        self.norm = nn.LayerNorm(num_features)
        self._init_weights()
        self.neighbours = check_neighbours(neighbours, "SwinTransformer")
        if self.neighbours:
            self.patch_embed.proj = widen_input_conv(self.patch_embed.proj, self.neighbours)
            self.input_conv = "patch_embed.proj"
        self.in_chans = int(self.patch_embed.proj._in_channels)
        self.load_pretrained(pretrained, key_map="auto")

    def _init_weights(self) -> None:
        for layer in self.sublayers(include_self=True):
            if isinstance(layer, nn.Linear):
                _trunc_normal(layer.weight)
                if layer.bias is not None:
                    _zeros(layer.bias)
            elif isinstance(layer, nn.LayerNorm):
                _ones(layer.weight)
                _zeros(layer.bias)

    def forward_features(self, x: paddle.Tensor) -> paddle.Tensor:
        """[N, C, H, W] → [N, D] (mean over the last stage's tokens after the final norm)."""
        if x.shape[-1] != self.img_size or x.shape[-2] != self.img_size:
            raise ValueError(f"SwinTransformer was built for {self.img_size}px input, got {list(x.shape)}")
        x = self.pos_drop(self.patch_embed(x))
        for layer in self.layers:
            x = layer(x)
        return self.norm(x).mean(axis=1)

    def attention_matmul_macs(self) -> int:
        """Per-image MACs of the attention matmuls, which paddle.flops cannot see (not layers)."""
        total = 0
        for layer in self.layers:
            for blk in layer.blocks:
                h, w = blk.input_resolution
                total += blk.attn.matmul_macs(h * w)
        return total
