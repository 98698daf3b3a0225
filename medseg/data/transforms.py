"""Slice transforms: small callables composed from YAML, randomness through an explicit RNG.

Every transform works on one slice (``H × W × C`` array) in two steps, ``sample(rng)`` draws the
random parameters and ``apply(image, params)`` uses them. The split is what makes the per-slice
vs per-series switch possible: the paper's loader draws a new augmentation for every slice
(``per_slice: true``); ``per_slice: false`` draws once and applies the same geometry to the whole
series. Parameters are shape-free (fractions, angles), so one draw fits slices whose head crops
differ in size.

Geometric transforms are affine; ``Compose`` fuses a run of them into one ``cv2.warpAffine``
(one interpolation instead of one per transform, the loader's main cost) and zeroes what the
sequential version would have lost at an intermediate canvas edge (e.g. the corners a rotation
pulls in from outside the crop), so the result matches applying them one by one.

The paper's released augmentation (easymia) is reproduced by ``RandomResizedCrop(sampler="released",
interpolation="cubic")`` and ``RandomRotation(centre="released")``; the defaults keep this
project's own variant (zoom-out for ``scale > 1``, bilinear, exact pixel centre).
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Any, Iterable, NamedTuple, Sequence

import cv2
import numpy as np

from medseg.registry import TRANSFORMS


def _as_hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    if len(size) != 2:
        raise ValueError(f"size must be an int or [height, width], got {size!r}")
    return int(size[0]), int(size[1])


def _four_byte_pixels(image: np.ndarray) -> np.ndarray | None:
    """The ``H × W × 4`` array under a 3-channel uint8 view that skips every 4th byte (what the
    cache hands out), or None when ``image`` is not such a view of one whole buffer."""
    h, w = image.shape[:2]
    if image.strides != (4 * w, 4, 1):
        return None
    owner = image.base
    while isinstance(owner, np.ndarray) and isinstance(owner.base, np.ndarray):
        owner = owner.base
    if (not isinstance(owner, np.ndarray) or owner.nbytes != 4 * h * w or not owner.flags.c_contiguous
            or image.__array_interface__["data"][0] != owner.__array_interface__["data"][0]):
        return None
    return owner.reshape(-1).view(np.uint8).reshape(h, w, 4)


def contiguous_pixels(image: np.ndarray) -> np.ndarray:
    """``image`` as a C-contiguous array (a cache crop's 4-byte pixels lose their 4th byte)."""
    if image.flags.c_contiguous:
        return image
    four = _four_byte_pixels(image) if image.ndim == 3 and image.shape[2] == 3 else None
    return np.ascontiguousarray(image) if four is None else cv2.cvtColor(four, cv2.COLOR_BGRA2BGR)


INTERPOLATIONS = {"linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}
WINDOW_GROUP = 3  # channels per slice: a stacked neighbour slice is warped three channels at a time


def _by_groups(fn, image: np.ndarray) -> np.ndarray | None:
    """``fn`` applied to each run of ``WINDOW_GROUP`` channels of an image with more than 4
    (a stacked neighbour slice, :mod:`medseg.data.neighbours`), or None for any other image.
    OpenCV's warps take at most 4 channels, and its 9-channel resize rounds differently from the
    3-channel one, so each slice's windows go through the 2-D path, bit for bit."""
    if image.ndim != 3 or image.shape[2] <= 4:
        return None
    # cv2 splits and interleaves planes ~4x faster than numpy's strided channel copies (measured)
    h, w = image.shape[:2]
    planes = cv2.split(image)
    parts = [fn(cv2.merge(planes[c:c + WINDOW_GROUP]).reshape(h, w, -1)) for c in range(0, len(planes), WINDOW_GROUP)]
    out = cv2.merge([plane for part in parts for plane in cv2.split(part)])
    return out.reshape(*parts[0].shape[:2], image.shape[2])


def per_window(values: np.ndarray, channels: int, what: str) -> np.ndarray:
    """Per-channel ``values`` for ``channels`` channels: one value for all, one per channel, or one
    per window repeated for every neighbour of a stacked slice (``channels`` a multiple of their
    count); a clear error otherwise."""
    values = np.asarray(values).reshape(-1)
    if values.size in (1, channels):
        return np.broadcast_to(values, (channels,))
    if values.size and channels % values.size == 0:
        return np.tile(values, channels // values.size)
    raise ValueError(f"{what}: {values.size} values for {channels} channels (give 1, one per window, or {channels})")


def _warp(image: np.ndarray, matrix: np.ndarray, out_hw: tuple[int, int], interpolation: str = "linear") -> np.ndarray:
    """``cv2.warpAffine`` with zero padding; keeps a trailing channel axis of 1 that cv2 drops.

    A 3-channel uint8 image is warped as 4 channels: OpenCV vectorises the 4-channel bilinear
    warp and not the 3-channel one, so pad + warp + drop is ~45 % less CPU, bit for bit the same
    (measured on 512² CT crops to 224 px). A crop from the cache already has 4-byte pixels.
    Bicubic is the other way round (448 × 406 to 224 px: 3 channels ~0.43 ms, 4 channels + drop
    ~0.67 ms, the same bits), so a cubic warp takes the 3 channels. A stacked neighbour slice is
    warped one slice's channels at a time (:func:`_by_groups`)."""
    grouped = _by_groups(lambda part: _warp(part, matrix, out_hw, interpolation), image)
    if grouped is not None:
        return grouped
    if interpolation != "linear":
        out = cv2.warpAffine(contiguous_pixels(image), matrix, (out_hw[1], out_hw[0]),
                             flags=INTERPOLATIONS[interpolation], borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return out[..., None] if out.ndim == 2 and image.ndim == 3 else out
    padded = image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
    source = image
    if padded:
        source = _four_byte_pixels(image)
        if source is None:
            source = cv2.cvtColor(image, cv2.COLOR_BGR2BGRA)
    out = cv2.warpAffine(source, matrix, (out_hw[1], out_hw[0]), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if padded:
        return cv2.cvtColor(out, cv2.COLOR_BGRA2BGR)
    return out[..., None] if out.ndim == 2 and image.ndim == 3 else out


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Round and clip 0..255 values back to uint8 (what intensity transforms hand on)."""
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


class Transform(abc.ABC):
    """Base: ``sample`` draws the parameters (deterministic transforms draw nothing), ``apply``
    uses them. Calling a transform needs the random state explicitly."""

    def sample(self, rng: np.random.Generator) -> Any:
        return None

    @abc.abstractmethod
    def apply(self, image: np.ndarray, params: Any) -> np.ndarray:
        """Transform one ``H × W × C`` slice with drawn ``params``."""

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.apply(image, self.sample(rng))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class AffineTransform(Transform):
    """A geometric transform given by a matrix: ``affine(params, (h, w))`` → (3 × 3 matrix from
    input to output pixel coordinates, output (h, w)). ``keeps_canvas``: the output frame is the
    input frame mapped onto itself (flips, resize), so no content is cut at its edge."""

    keeps_canvas = False
    interpolation = "linear"  # a key of INTERPOLATIONS; a fused run is cubic if any member is

    @abc.abstractmethod
    def affine(self, params: Any, in_hw: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
        """Matrix and output size for one slice of size ``in_hw``."""

    def apply(self, image: np.ndarray, params: Any) -> np.ndarray:
        matrix, out_hw = self.affine(params, image.shape[:2])
        return _warp(image, matrix[:2], out_hw, self.interpolation)


def run_interpolation(run: Sequence[AffineTransform]) -> str:
    """The interpolation of one fused warp of ``run``: cubic when any transform asks for it."""
    return "cubic" if any(t.interpolation == "cubic" for t in run) else "linear"


_IDENTITY = np.eye(3)
_IDENTITY.flags.writeable = False  # shared: AffineTransform.affine may return it


def _scale_matrix(sy: float, sx: float, y0: float = 0.0, x0: float = 0.0) -> np.ndarray:
    """Pixel-centre scaling (cv2.resize's convention) of the box starting at (y0, x0)."""
    return np.array([[sx, 0.0, (0.5 - x0) * sx - 0.5], [0.0, sy, (0.5 - y0) * sy - 0.5], [0.0, 0.0, 1.0]])


@TRANSFORMS.add_component
class Resize(AffineTransform):
    """Resize to ``size`` (int or [height, width]); bilinear like the original eval path."""

    def __init__(self, size: int | Sequence[int] = 224):
        self.size = _as_hw(size)

    keeps_canvas = True

    def affine(self, params: Any, in_hw: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
        return _scale_matrix(self.size[0] / in_hw[0], self.size[1] / in_hw[1]), self.size

    def apply(self, image: np.ndarray, params: Any) -> np.ndarray:
        grouped = _by_groups(lambda part: self.apply(part, params), image)
        if grouped is not None:
            return grouped
        out = cv2.resize(image, (self.size[1], self.size[0]), interpolation=cv2.INTER_LINEAR)
        return out[..., None] if out.ndim == 2 and image.ndim == 3 else out


RELEASED_TRIES = 10  # the release's attempts before its centre-square fallback


class ReleasedCrop(NamedTuple):
    """The released sampler's box for one slice: half-open ``[y0, y0 + height) × [x0, x0 + width)``
    in whole pixels; ``tries`` attempts were made (``fallback``: all failed, the box is the centre
    square); ``swapped`` and ``aspect`` (w / h as drawn, before the swap) describe the accepted attempt."""

    y0: int
    x0: int
    height: int
    width: int
    tries: int
    fallback: bool
    swapped: bool
    aspect: float


@TRANSFORMS.add_component
class RandomResizedCrop(AffineTransform):
    """Crop a box of ``scale`` × the image area and aspect ``ratio``, resize it to ``size``.

    ``sampler="zoom"`` (default): unlike torchvision, ``scale`` may exceed 1 (the paper uses
    [0.8, 1.2]): the box is then larger than the image, which zooms out and pads with zeros; the
    aspect is log-uniform and the box is fractional. Done as one affine warp, so crop, pad and
    resize cost one interpolation.

    ``sampler="released"``: the released easymia sampler, which never zooms out. Up to 10 attempts
    of area ``uniform(scale)`` × H·W and aspect ``uniform(ratio)`` (uniform, not log-uniform),
    sides ``int(round(sqrt(area · aspect)))`` and ``int(round(sqrt(area / aspect)))``, swapped with
    probability 1/2; the first box that fits gets a uniform integer offset (both ends inclusive);
    if none fits, the centre square of side min(H, W). Then the integer box is resized to ``size``.
    The draws do not depend on the slice size (see :meth:`sample`), so ``per_slice: false`` still
    fits slices of different sizes.

    ``interpolation``: "linear" or "cubic" (the release: bicubic ``cv2.resize``). A fused run that
    contains a cubic transform is warped once with ``cv2.INTER_CUBIC``; the release interpolates
    twice (bicubic resize of the crop, then a bilinear rotation, which blurs a little more). On
    a real CT head crop (GE series slice 14, default windows, 415 × 402 px, released sampler and
    rotation centre, flips) the fused cubic warp differs from the release's two steps by a mean
    of 2.6 grey levels over 20 draws (2.3–3.0 per draw; ~4 on the noisy 40/80 window, ~2 on the
    others; ~6 within 2 px of the zeroed corners, where the release blends one pixel into zero);
    a fused bilinear warp differs by 2.0. Unfused (``Compose(fuse=False)``) the released sampler
    crops and resizes as the release does, and the result equals it bit for bit
    (tests/test_augment_parity.py measures both).
    """

    def __init__(self, size: int | Sequence[int] = 224, scale: Sequence[float] = (0.8, 1.2),
                 ratio: Sequence[float] = (3 / 4, 4 / 3), sampler: str = "zoom", interpolation: str = "linear"):
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"RandomResizedCrop: scale must satisfy 0 < min <= max, got {scale!r}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"RandomResizedCrop: ratio must satisfy 0 < min <= max, got {ratio!r}")
        if sampler not in ("zoom", "released"):
            raise ValueError(f"RandomResizedCrop: sampler must be 'zoom' or 'released', got {sampler!r}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"RandomResizedCrop: interpolation must be one of {sorted(INTERPOLATIONS)}, "
                             f"got {interpolation!r}")
        self.size = _as_hw(size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.sampler = sampler
        self.interpolation = interpolation

    def sample(self, rng: np.random.Generator) -> tuple[float, ...]:
        """zoom: (area fraction, aspect, y and x offset fractions). released: 32 uniforms in
        [0, 1), always all of them: per attempt (area, aspect, swap), then the y and x offsets.
        A fixed count keeps the random state's use independent of the slice size, which the
        release's lazy draws (and its size-bounded randint) are not."""
        if self.sampler == "released":
            return tuple(rng.random(3 * RELEASED_TRIES + 2).tolist())
        # One call for the four uniforms: the same numbers, bit for bit, as four rng.uniform
        # calls (low + (high - low) * u, in that order; tests/test_dataset.py checks it).
        u = rng.random(4).tolist()
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        area = self.scale[0] + (self.scale[1] - self.scale[0]) * u[0]
        return area, math.exp(lo + (hi - lo) * u[1]), u[2], u[3]

    def released_crop(self, height: int, width: int, params: Sequence[float]) -> ReleasedCrop:
        """The released sampler's box on a ``height`` × ``width`` slice from drawn ``params``.
        Floating-point steps as in the release (``uniform(a, b) = a + (b - a) · u``, Python
        ``round``); an offset ``floor(u · (n + 1))`` is uniform on 0..n like ``randint(0, n)``
        (``u`` has 53 random bits: a bias below 1e-13)."""
        if self.sampler != "released":
            raise ValueError("RandomResizedCrop.released_crop: this transform uses sampler 'zoom'")
        area = height * width
        (s0, s1), (r0, r1) = self.scale, self.ratio
        for k in range(RELEASED_TRIES):
            u_area, u_aspect, u_swap = params[3 * k:3 * k + 3]
            target = (s0 + (s1 - s0) * u_area) * area
            aspect = r0 + (r1 - r0) * u_aspect
            w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            swapped = u_swap < 0.5
            if swapped:
                w, h = h, w
            if w <= width and h <= height:
                fy, fx = params[3 * RELEASED_TRIES:3 * RELEASED_TRIES + 2]
                y0 = min(int(fy * (height - h + 1)), height - h)
                x0 = min(int(fx * (width - w + 1)), width - w)
                return ReleasedCrop(y0, x0, h, w, k + 1, False, swapped, aspect)
        side = min(height, width)
        return ReleasedCrop((height - side) // 2, (width - side) // 2, side, side, RELEASED_TRIES, True, False,
                            math.nan)

    def box(self, height: int, width: int, params: Sequence[float]) -> tuple[float, float, float, float]:
        """(y0, x0, box_h, box_w) in pixels; the box stays inside the image, or (zoom) covers it."""
        if self.sampler == "released":
            crop = self.released_crop(height, width, params)
            return float(crop.y0), float(crop.x0), float(crop.height), float(crop.width)
        area, aspect, fy, fx = params
        box_w = width * math.sqrt(area * aspect)
        box_h = height * math.sqrt(area / aspect)
        y0 = min(0.0, height - box_h) + fy * abs(height - box_h)
        x0 = min(0.0, width - box_w) + fx * abs(width - box_w)
        return y0, x0, box_h, box_w

    def affine(self, params: Sequence[float], in_hw: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
        y0, x0, box_h, box_w = self.box(in_hw[0], in_hw[1], params)
        return _scale_matrix(self.size[0] / box_h, self.size[1] / box_w, y0, x0), self.size

    def apply(self, image: np.ndarray, params: Sequence[float]) -> np.ndarray:
        """Alone (not fused): the released sampler crops and ``cv2.resize``s as the release does."""
        if self.sampler != "released":
            return super().apply(image, params)
        grouped = _by_groups(lambda part: self.apply(part, params), image)
        if grouped is not None:
            return grouped
        y0, x0, h, w = self.released_crop(image.shape[0], image.shape[1], params)[:4]
        out = cv2.resize(contiguous_pixels(image)[y0:y0 + h, x0:x0 + w], (self.size[1], self.size[0]),
                         interpolation=INTERPOLATIONS[self.interpolation])
        return out[..., None] if out.ndim == 2 and image.ndim == 3 else out


class _Flip(AffineTransform):
    """Mirror along ``axis`` (0 = rows, top-bottom; 1 = columns, left-right) with probability ``prob``."""

    axis = 1
    keeps_canvas = True

    def __init__(self, prob: float = 0.5):
        self.prob = float(prob)

    def sample(self, rng: np.random.Generator) -> bool:
        return bool(rng.uniform() < self.prob)

    def affine(self, params: bool, in_hw: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
        if not params:
            return _IDENTITY, tuple(in_hw)
        matrix = np.eye(3)
        # row 0 of the matrix maps x (columns), row 1 maps y (rows)
        row = 1 - self.axis
        matrix[row, row], matrix[row, 2] = -1.0, in_hw[self.axis] - 1.0
        return matrix, tuple(in_hw)

    def apply(self, image: np.ndarray, params: bool) -> np.ndarray:
        return np.ascontiguousarray(np.flip(image, axis=self.axis)) if params else image


@TRANSFORMS.add_component
class HorizontalFlip(_Flip):
    """Mirror left-right with probability ``prob``."""

    axis = 1


@TRANSFORMS.add_component
class VerticalFlip(_Flip):
    """Mirror top-bottom with probability ``prob``."""

    axis = 0


@TRANSFORMS.add_component
class RandomRotation(AffineTransform):
    """Rotate about the centre by an angle drawn from ``[-degrees, degrees]``; zero padding.

    ``centre="exact"`` (default) turns about the image's true centre ((w - 1) / 2, (h - 1) / 2)
    in cv2's pixel-centre coordinates; ``"released"`` about (w / 2, h / 2) as the release does,
    half a pixel off towards the bottom right."""

    def __init__(self, degrees: float = 180.0, centre: str = "exact"):
        if centre not in ("exact", "released"):
            raise ValueError(f"RandomRotation: centre must be 'exact' or 'released', got {centre!r}")
        self.degrees = float(degrees)
        self.centre = centre

    def sample(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(-self.degrees, self.degrees))

    def affine(self, params: float, in_hw: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
        height, width = in_hw
        matrix = np.array(_IDENTITY)
        if self.centre == "released":
            centre = (width / 2.0, height / 2.0)
        else:
            centre = ((width - 1) / 2.0, (height - 1) / 2.0)
        matrix[:2] = cv2.getRotationMatrix2D(centre, params, 1.0)
        return matrix, (height, width)


@TRANSFORMS.add_component
class Normalize(Transform):
    """uint8 → float32: ``(x / 255 - mean) / std`` per channel (defaults keep [0, 1]). A mean or std
    per window applies to that window of every neighbour of a stacked slice (:meth:`per_channel`)."""

    def __init__(self, mean: float | Sequence[float] = 0.0, std: float | Sequence[float] = 1.0):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        if np.any(self.std <= 0):
            raise ValueError(f"Normalize: std must be positive, got {std!r}")
        self._tables: dict[int, np.ndarray] = {}

    def per_channel(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, std)``, one float32 value per channel of a ``channels``-channel image."""
        return (per_window(self.mean, channels, "Normalize mean").astype(np.float32),
                per_window(self.std, channels, "Normalize std").astype(np.float32))

    def _table(self, channels: int) -> np.ndarray:
        if channels not in self._tables:
            values = np.arange(256, dtype=np.float32)[:, None] / np.float32(255.0)
            mean, std = self.per_channel(channels)
            table = np.broadcast_to(((values - mean) / std).astype(np.float32), (256, channels))
            self._tables[channels] = np.ascontiguousarray(table.reshape(1, 256, channels) if channels > 1 else table[:, :1].reshape(1, 256))
        return self._tables[channels]

    def apply(self, image: np.ndarray, params: Any) -> np.ndarray:
        channels = image.shape[2] if image.ndim == 3 else 1
        if image.dtype == np.uint8 and channels <= 4:
            # One table look-up per pixel (cv2.LUT keeps the table's float32 depth) instead of
            # three float passes: the loader's hottest step after the warps.
            return cv2.LUT(image, self._table(channels)).reshape(image.shape)
        if image.dtype == np.uint8:  # a stacked neighbour slice: the same table values, gathered
            return self._table(channels).reshape(256, channels)[image, np.arange(channels)]
        mean, std = self.per_channel(channels)
        return ((image.astype(np.float32) * np.float32(1 / 255.0)) - mean) / std

    def apply_chw(self, image: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``apply`` then ``ToCHW`` in one pass: one table look-up per channel plane, written
        straight into the C × H × W result (or ``out``); Compose uses it for ``[Normalize, ToCHW]``."""
        if image.dtype != np.uint8 or image.ndim != 3:
            result = ToCHW().apply(self.apply(image, None), None)
            if out is None:
                return result
            out[...] = result
            return out
        table = self._table(image.shape[2]).reshape(256, -1)
        if out is None:
            out = np.empty((image.shape[2], *image.shape[:2]), np.float32)
        for c, plane in enumerate(cv2.split(image)):
            cv2.LUT(plane, np.ascontiguousarray(table[:, c]).reshape(1, 256), dst=out[c])
        return out

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


@TRANSFORMS.add_component
class ToCHW(Transform):
    """``H × W × C`` → ``C × H × W`` float32 (the layout models take)."""

    def apply(self, image: np.ndarray, params: Any) -> np.ndarray:
        return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)


def affine_run(run: Sequence[AffineTransform], params: Sequence[Any], in_hw: tuple[int, int]
               ) -> tuple[np.ndarray, tuple[int, int], list[tuple[np.ndarray, tuple[int, int]]]]:
    """A run of affine transforms on a slice of size ``in_hw`` as one warp: (3 × 3 matrix from
    input to output pixels, output size, cuts). A cut is an intermediate canvas that the
    sequential version would have clipped, as (matrix from that canvas to the output, its size)."""
    shape = tuple(in_hw)
    matrices, shapes = [], []
    for t, p in zip(run, params):
        matrix, shape = t.affine(p, shape)
        matrices.append(matrix)
        shapes.append(tuple(shape))
    # The identity (a flip not drawn) is skipped: the same products, bit for bit (the loader
    # runs this for every slice).
    total = _IDENTITY
    for matrix in matrices:
        total = _times(matrix, total)
    cuts, suffix = [], _IDENTITY
    for k in range(len(run) - 2, -1, -1):  # canvases after each stage but the last
        suffix = _times(suffix, matrices[k + 1])
        if not run[k].keeps_canvas:
            cuts.append((suffix, shapes[k]))
    return total, shapes[-1], cuts


def _times(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for 3 × 3 matrices, without the work when one is the identity."""
    if a is _IDENTITY:
        return b
    return a if b is _IDENTITY else a @ b


def pixel_to_unit(hw: tuple[int, int]) -> np.ndarray:
    """3 × 3 matrix from pixel coordinates (centres at integers, cv2's convention) to the [-1, 1]
    coordinates of ``affine_grid``/``grid_sample`` with ``align_corners=False``."""
    h, w = hw
    return np.array([[2.0 / w, 0.0, 1.0 / w - 1.0], [0.0, 2.0 / h, 1.0 / h - 1.0], [0.0, 0.0, 1.0]])


def _normalised(output_to_input: np.ndarray, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """An output-pixel → input-pixel matrix as the 2 × 3 ``theta`` of ``affine_grid``."""
    return (pixel_to_unit(in_hw) @ output_to_input @ np.linalg.inv(pixel_to_unit(out_hw)))[:2]


@dataclass
class DevicePlan:
    """What the device needs to finish a series' slices: per slice the matrix from output to
    input pixels (``inverse``, float64 [S, 3, 3]; the input is the slice's own crop, placed at
    the top left of whatever canvas carries it), the cut masks as ``affine_grid`` thetas on the
    output (``cuts``, [S, K, 2, 3]: a pixel is kept where every cut maps it inside [-1, 1]), the
    output size, the normalisation, and the warp's interpolation ("linear" or "cubic",
    :func:`run_interpolation`)."""

    inverse: np.ndarray
    cuts: np.ndarray
    out_hw: tuple[int, int]
    mean: np.ndarray
    std: np.ndarray
    interpolation: str = "linear"


def _same_hwc(images: Sequence[np.ndarray]) -> bool:
    return bool(images) and images[0].ndim == 3 and all(img.shape == images[0].shape for img in images)


class Compose:
    """Apply ``transforms`` to every slice of a series with an explicit random state.

    ``per_slice=True`` draws each transform's parameters for every slice (the paper);
    ``per_slice=False`` draws once per series so all slices get the same geometry. ``fuse=True``
    warps each run of consecutive affine transforms once (see the module docstring).
    """

    def __init__(self, transforms: Sequence[Transform], per_slice: bool = True, fuse: bool = True):
        for t in transforms:
            if not isinstance(t, Transform):
                raise TypeError(f"Compose: {t!r} is not a medseg transform (built from a {{type: ...}} entry)")
        self.transforms = list(transforms)
        self.per_slice = bool(per_slice)
        self.fuse = bool(fuse)
        self._stages: list[list[Transform]] = []  # runs of affine transforms, or single others
        for t in self.transforms:
            last = self._stages[-1] if self._stages else None
            if fuse and last and isinstance(t, AffineTransform) and isinstance(last[0], AffineTransform):
                self._stages[-1].append(t)
            elif fuse and last and isinstance(t, ToCHW) and len(last) == 1 and isinstance(last[0], Normalize):
                self._stages[-1].append(t)
            else:
                self._stages.append([t])

    def __call__(self, slices: Sequence[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
        return self._run(slices, rng, stack=False)

    def stack(self, slices: Iterable[np.ndarray], rng: np.random.Generator, deferred: bool = False) -> np.ndarray:
        """The transformed series as one ``[S, …]`` array (a final ``[Normalize, ToCHW]`` writes
        into it directly, saving a copy of the whole series). ``deferred``: when that final stage
        meets uint8 slices of one size, it is left to the batch step: the result is the uint8
        ``[S, H, W, C]`` slices, to normalise with :meth:`final_normalize` and lay out as
        C × H × W there (:func:`medseg.data.device_augment.to_model_input`; a quarter of the
        bytes to move, and no per-pixel work left on the CPU)."""
        return self._run(slices, rng, stack=True, deferred=deferred)

    def final_normalize(self) -> Normalize | None:
        """The Normalize of a final ``[Normalize, ToCHW]`` stage, or None."""
        last = self._stages[-1] if self._stages else []
        return last[0] if len(last) == 2 and isinstance(last[0], Normalize) else None

    def _run(self, slices: Iterable[np.ndarray], rng: np.random.Generator, stack: bool, deferred: bool = False):
        # The first stage consumes an iterator as it comes (each slice transformed while still in
        # the CPU cache); the draws keep their order: stage by stage, slice by slice.
        out = slices if len(self._stages) > 1 else list(slices)
        for n, stage in enumerate(self._stages):
            last = n == len(self._stages) - 1
            if stack and last and len(stage) == 2 and isinstance(stage[0], Normalize) and _same_hwc(out):
                if deferred and out[0].dtype == np.uint8:
                    return np.stack(out)
                result = np.empty((len(out), out[0].shape[2], *out[0].shape[:2]), np.float32)
                for i, img in enumerate(out):  # Normalize draws nothing: no random state to consume
                    stage[0].apply_chw(img, out=result[i])
                return result
            out = self._apply_stage(stage, out, rng)
        return np.stack(out) if stack else out

    def _apply_stage(self, stage: list[Transform], images: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
        """One stage over every slice: parameters drawn per slice, or once (``per_slice=False``)."""
        if self.per_slice:
            return [self._apply(stage, img, [t.sample(rng) for t in stage]) for img in images]
        params = [t.sample(rng) for t in stage]
        return [self._apply(stage, img, params) for img in images]

    def _apply(self, stage: list[Transform], image: np.ndarray, params: list[Any]) -> np.ndarray:
        if len(stage) == 1:
            return stage[0].apply(image, params[0])
        if isinstance(stage[0], Normalize):
            return stage[0].apply_chw(image)
        return self._warp_run(image, stage, params)

    def _warp_run(self, image: np.ndarray, run: list[AffineTransform], params: list[Any]) -> np.ndarray:
        """One warp for the whole run, then zero what an intermediate canvas would have cut."""
        total, out_hw, cuts = affine_run(run, params, image.shape[:2])
        out = _warp(image, total[:2], out_hw, run_interpolation(run))
        mask = None
        for suffix, (h, w) in cuts:
            # The canvas (pixel edges at -0.5 and size - 0.5) maps to a parallelogram in the output.
            corners = np.array([[-0.5, -0.5, 1], [w - 0.5, -0.5, 1], [w - 0.5, h - 0.5, 1], [-0.5, h - 0.5, 1]])
            polygon = ((corners @ suffix[:2].T) * 16).round().astype(np.int32)  # 4 fractional bits
            inside = np.zeros(out_hw, np.uint8)
            cv2.fillConvexPoly(inside, polygon, 255, lineType=cv2.LINE_8, shift=4)
            mask = inside if mask is None else cv2.bitwise_and(mask, inside)
        if mask is not None:  # a hard edge where the sequential warps blend one pixel into zero
            # copyTo into a new (zeroed) array: the same pixels as bitwise_and with a mask, ~2.5x faster
            out = cv2.copyTo(out, mask).reshape(out.shape)
        return out

    def device_split(self) -> tuple[list[list[Transform]], list[AffineTransform], Normalize]:
        """For augmentation on the model's device: (stages run here on the CPU first, the affine
        run that becomes the device's warp, the Normalize after it). The transforms must end with
        one run of affine transforms whose output size is fixed (a Resize or RandomResizedCrop
        in it), then ``Normalize``, then ``ToCHW``."""
        stages = self._stages
        shape_ok = (self.fuse and len(stages) >= 2 and len(stages[-1]) == 2 and isinstance(stages[-1][0], Normalize)
                    and all(isinstance(t, AffineTransform) for t in stages[-2]))
        if not shape_ok or not any(isinstance(t, (Resize, RandomResizedCrop)) for t in stages[-2]):
            raise ValueError("augment_on_device: the transforms must end with affine transforms that include a Resize or "
                             f"RandomResizedCrop, then Normalize, then ToCHW; got {self.transforms!r}")
        return stages[:-2], stages[-2], stages[-1][0]

    def device_plan(self, slices: Sequence[np.ndarray], rng: np.random.Generator) -> tuple[list[np.ndarray], DevicePlan]:
        """The CPU half of ``stack`` for augmentation on the device: runs the leading non-affine
        stages, then draws the affine run's parameters exactly as ``stack`` would (same order,
        same random state) and returns (the uint8 slices, their warps). :mod:`medseg.data.device_augment`
        does the warp and the normalisation."""
        before, run, normalize = self.device_split()
        out = [contiguous_pixels(img) for img in slices]  # each converted while still in the CPU cache
        for stage in before:
            out = self._apply_stage(stage, out, rng)
        shared = None if self.per_slice else [t.sample(rng) for t in run]
        inverse, cuts, out_hw = [], [], None
        for img in out:
            total, out_hw, slice_cuts = affine_run(run, shared or [t.sample(rng) for t in run], img.shape[:2])
            inverse.append(np.linalg.inv(total))
            cuts.append([_normalised(np.linalg.inv(suffix), hw, out_hw) for suffix, hw in slice_cuts])
        plan = DevicePlan(inverse=np.asarray(inverse, np.float64).reshape(len(out), 3, 3), out_hw=tuple(out_hw),
                          cuts=np.asarray(cuts, np.float32).reshape(len(out), -1, 2, 3),
                          mean=normalize.per_channel(out[0].shape[2])[0], std=normalize.per_channel(out[0].shape[2])[1],
                          interpolation=run_interpolation(run))
        return out, plan

    def __repr__(self) -> str:
        return f"Compose(per_slice={self.per_slice}, fuse={self.fuse}, {self.transforms!r})"
