"""Geometric augmentation and normalisation on the model's device (``augment_on_device: true``).

The CPU loader then only decodes and crops: a worker hands over uint8 head crops (each at the top
left of a zero canvas as large as the batch's largest crop) and, per slice, the warp its
transforms drew (:meth:`medseg.data.transforms.Compose.device_plan`, the same draws from the same
``(seed, epoch, index)`` random state as the CPU path). Here one batched ``affine_grid`` +
``grid_sample`` does every slice's RandomResizedCrop / flips / rotation at once, then the cut
masks and the normalisation, a handful of batched ops on the GPU instead of a warp per slice on
a CPU core (``bench/loader_bench.py``: the worker's share drops from ~0.43 to ~0.33 ms per slice).
Bilinear sampling with zero padding and cv2's pixel convention, so the result equals the CPU
path's within interpolation rounding (the CPU rounds the warped image to uint8 before
normalising; this path does not). A run planned as cubic (``RandomResizedCrop(interpolation=
"cubic")``) is sampled bicubically like ``cv2.INTER_CUBIC`` (:func:`grid_sample_bicubic`; Paddle's
``grid_sample`` has no bicubic mode). On a CPU-only machine Paddle's grid_sample is ~10x slower
than cv2: CPU runs keep ``augment_on_device: false``.

The batch comes from :func:`medseg.data.collate.collate_series`. A batch made on the CPU path
holds uint8 warped slices, which :func:`to_model_input` normalises (:func:`normalize_batch`); a
float32 batch passes through unchanged. Trainers and evaluators call it on every batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import paddle
import paddle.nn.functional as F

from medseg.data.transforms import Normalize, pixel_to_unit

DEVICE_KEYS = ("theta", "cuts", "norm", "out_hw", "interpolation")
CUBIC_A = -0.75  # OpenCV's INTER_CUBIC kernel (Keys' a)


def _on_device(tensor: Any) -> paddle.Tensor:
    """A batch field on the model's device (the loader leaves tensors in host memory)."""
    if not isinstance(tensor, paddle.Tensor):
        tensor = paddle.to_tensor(tensor)
    device = paddle.get_device()
    if device.startswith("gpu") and not tensor.place.is_gpu_place():  # host or pinned memory
        tensor = tensor.to(device, blocking=False)
    return tensor


def _cubic_weights(t: paddle.Tensor) -> list[paddle.Tensor]:
    """The four tap weights at offsets -1, 0, 1, 2 for a fraction ``t`` in [0, 1) (OpenCV's
    ``interpolateCubic``)."""
    a = CUBIC_A
    w0 = ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a
    w1 = ((a + 2) * t - (a + 3)) * t * t + 1
    s = 1 - t
    w2 = ((a + 2) * s - (a + 3)) * s * s + 1
    return [w0, w1, w2, 1 - w0 - w1 - w2]


def grid_sample_bicubic(x: paddle.Tensor, grid: paddle.Tensor) -> paddle.Tensor:
    """``grid_sample(x, grid, align_corners=False, padding_mode="zeros")`` with OpenCV's bicubic
    kernel: ``x`` float32 [N, C, H, W], ``grid`` [N, h, w, 2] (x, y in [-1, 1]) → [N, C, h, w].
    Taps outside the image count as 0, as ``cv2.warpAffine`` with a zero constant border does.
    Sixteen row gathers from a pixel table (the image with a ring of zeros around it, one row of
    C values per pixel; an out-of-range tap is clamped onto the ring), each weighted by its row
    and column weights. Gathering whole pixels is ~2.3x faster on a CPU than gathering per
    channel with ``take_along_axis`` (same values)."""
    n, channels, height, width = x.shape
    out_h, out_w = grid.shape[1], grid.shape[2]
    px = ((grid[..., 0] + 1) * width - 1) * 0.5  # pixel coordinates, centres at integers
    py = ((grid[..., 1] + 1) * height - 1) * 0.5
    fx, fy = paddle.floor(px), paddle.floor(py)
    wx, wy = _cubic_weights(px - fx), _cubic_weights(py - fy)
    stride, plane = width + 2, (height + 2) * (width + 2)
    table = F.pad(x, [1, 1, 1, 1], data_format="NCHW").transpose([0, 2, 3, 1]).reshape([n * plane, channels])
    first = (paddle.arange(n, dtype="int64") * plane).reshape([n, 1, 1])  # each slice's first row
    # +1: the zero ring shifts indices; the clip keeps far taps on it (floats first: no int overflow)
    cols = [paddle.clip(fx + k, 0, width + 1).astype("int64") for k in range(4)]
    rows = [paddle.clip(fy + k, 0, height + 1).astype("int64") * stride + first for k in range(4)]
    out = None
    for i in range(4):
        row = None
        for j in range(4):
            term = paddle.gather(table, (rows[i] + cols[j]).reshape([-1])) * wx[j].reshape([-1, 1])
            row = term if row is None else row + term
        term = row * wy[i].reshape([-1, 1])
        out = term if out is None else out + term
    return out.reshape([n, out_h, out_w, channels]).transpose([0, 3, 1, 2])


def warp_batch(image: paddle.Tensor, theta: paddle.Tensor, cuts: paddle.Tensor, out_hw: tuple[int, int],
               norm: paddle.Tensor, interpolation: str = "linear") -> paddle.Tensor:
    """uint8 canvases ``[N, H, W, C]`` → normalised float32 ``[N, C, h, w]``: one warp per slice
    (``theta`` [N, 2, 3]; bilinear, or bicubic clipped to 0..255 as cv2 saturates uint8), then
    zero where a cut (``cuts`` [N, K, 2, 3]) maps a pixel outside its canvas, then
    ``(x / 255 - mean) / std`` (``norm`` [2, C])."""
    if interpolation not in ("linear", "cubic"):
        raise ValueError(f"warp_batch: interpolation must be 'linear' or 'cubic', got {interpolation!r}")
    n, _, _, channels = image.shape
    height, width = int(out_hw[0]), int(out_hw[1])
    x = image.transpose([0, 3, 1, 2]).astype("float32")
    grid = F.affine_grid(theta.astype("float32"), [n, channels, height, width], align_corners=False)
    if interpolation == "cubic":
        out = grid_sample_bicubic(x, grid).clip(0.0, 255.0)
    else:
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    cut_count = cuts.shape[1]
    if cut_count:
        unit = F.affine_grid(cuts.reshape([n * cut_count, 2, 3]).astype("float32"), [n * cut_count, 1, height, width],
                             align_corners=False)
        inside = (unit.abs() <= 1.0).all(axis=-1).reshape([n, cut_count, height, width]).all(axis=1)
        out = out * inside.astype("float32").unsqueeze(1)
    scale = (1.0 / (255.0 * norm[1])).reshape([1, channels, 1, 1])
    shift = (norm[0] / norm[1]).reshape([1, channels, 1, 1])
    return out * scale - shift


def normalize_batch(image: paddle.Tensor, norm: paddle.Tensor, mask: paddle.Tensor) -> paddle.Tensor:
    """uint8 ``[B, S, H, W, C]`` → float32 ``[B, S, C, H, W]``, ``(x / 255 - mean) / std``
    (``norm`` [2, C]), padded slices 0. The same float32 operations, each rounded once, as the
    CPU's :class:`medseg.data.transforms.Normalize` table, so the result is bit for bit the same."""
    if paddle.get_device() == "cpu":
        # Paddle's element-wise ops take ~2.7 ms per 224² slice on one core (bench/loader_bench.py);
        # the cv2 look-up table of the CPU path does it in a few dozen µs, with the same bits.
        return paddle.to_tensor(_normalize_on_host(_host(image), _host(norm), _host(mask)))
    shape = [1, 1, int(norm.shape[1]), 1, 1]
    x = image.transpose([0, 1, 4, 2, 3]).astype("float32") / paddle.full([], 255.0, "float32")
    out = (x - norm[0].reshape(shape)) / norm[1].reshape(shape)
    keep = mask.astype("bool").reshape([*mask.shape, 1, 1, 1])
    return paddle.where(keep, out, paddle.zeros([], "float32"))


def _host(array: Any) -> np.ndarray:
    return array.numpy() if isinstance(array, paddle.Tensor) else np.asarray(array)


def _normalize_on_host(image: np.ndarray, norm: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """:func:`normalize_batch` with numpy and cv2 (:meth:`Normalize.apply_chw`, one table look-up
    per pixel straight into the C × H × W result)."""
    normalize = Normalize(norm[0], norm[1])
    b, s, h, w, c = image.shape
    out = np.zeros((b, s, c, h, w), np.float32)
    for i, j in zip(*np.nonzero(mask)):
        normalize.apply_chw(image[i, j], out=out[i, j])
    return out


def to_model_input(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch the model takes: a device-augmentation batch (uint8 canvases + warps) is warped
    and normalised here, on the device; a CPU-path batch of uint8 slices is normalised here; a
    float32 batch is returned as it is."""
    if "theta" not in batch:
        if "norm" not in batch:
            return batch
        result = {k: v for k, v in batch.items() if k != "norm"}
        result["image"] = normalize_batch(_on_device(batch["image"]), _on_device(batch["norm"]), _on_device(batch["mask"]))
        return result
    image = _on_device(batch["image"])
    b, s = image.shape[:2]
    theta, cuts = _on_device(batch["theta"]), _on_device(batch["cuts"])
    out = warp_batch(image.reshape([b * s, *image.shape[2:]]), theta.reshape([b * s, 2, 3]),
                     cuts.reshape([b * s, *cuts.shape[2:]]), batch["out_hw"], _on_device(batch["norm"]),
                     batch.get("interpolation", "linear"))
    mask = _on_device(batch["mask"])
    out = out.reshape([b, s, *out.shape[1:]]) * mask.astype("float32").reshape([b, s, 1, 1, 1])  # padding stays 0
    result = {k: v for k, v in batch.items() if k not in DEVICE_KEYS}
    result["image"] = out
    return result


def collate_device(items: list[dict[str, Any]], longest: int) -> dict[str, Any]:
    """The device-path fields of a batch: canvases padded to the batch's largest crop, and each
    slice's warp as the ``affine_grid`` theta on that canvas (padded slices: zeros), and the
    warp's interpolation (an item without one is bilinear)."""
    height = max(item["image"].shape[1] for item in items)
    width = max(item["image"].shape[2] for item in items)
    channels = items[0]["image"].shape[3]
    out_hw = tuple(items[0]["out_hw"])
    cut_count = items[0]["cuts"].shape[1]
    interpolation = items[0].get("interpolation", "linear")
    if any(tuple(item["out_hw"]) != out_hw or item["cuts"].shape[1] != cut_count
           or item.get("interpolation", "linear") != interpolation for item in items):
        raise ValueError("collate_series: items of one batch were planned by different transforms")
    batch = len(items)
    if batch == 1:  # the paper's one series per step: the item's canvas is the batch, no copy
        image = items[0]["image"][None]
    else:
        image = np.zeros((batch, longest, height, width, channels), np.uint8)
    theta = np.zeros((batch, longest, 2, 3), np.float32)
    # Paddle's DataLoader workers cannot hand over zero-size arrays ("Tensor holds no memory"), so
    # without cuts the batch carries one all-zero cut: it maps every pixel inside (a no-op in warp_batch).
    cuts = np.zeros((batch, longest, max(cut_count, 1), 2, 3), np.float32)
    to_unit = pixel_to_unit((height, width))
    from_out = np.linalg.inv(pixel_to_unit(out_hw))
    for b, item in enumerate(items):
        n, h, w = item["image"].shape[:3]
        if batch > 1:
            image[b, :n, :h, :w] = item["image"]
        theta[b, :n] = (to_unit @ item["inverse"] @ from_out)[:, :2]
        if cut_count:
            cuts[b, :n] = item["cuts"]
    norm = np.stack([items[0]["mean"], items[0]["std"]]).astype(np.float32)
    return {"image": image, "theta": theta, "cuts": cuts, "norm": norm, "out_hw": out_hw,
            "interpolation": interpolation}
