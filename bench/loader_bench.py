"""Loader throughput, one worker: our prepared cache vs the original project's loading method.

Same content both ways: synthetic head-CT-like series (512 × 512, 3 windows, black border and a
headrest line). Ours memory-maps the uncompressed ``.npy`` cache, crops by the box stored at
prepare time and runs the paper's per-slice transforms. The original loads a compressed ``.npz``,
finds the head on every slice with a morphological opening (5 × 5 ellipse, 3 iterations), crops,
then runs the same per-slice transforms one by one (ours fuses the geometric ones into a single
warp). Prints a table; target ≥ 4× series/s.

    python bench/loader_bench.py [--series 6] [--slices 40] [--size 512]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings

warnings.filterwarnings("ignore", message="No ccache found")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from medseg.constants import LABELS  # noqa: E402
from medseg.data.dataset import RSNASeriesDataset  # noqa: E402
from medseg.data.transforms import (Compose, HorizontalFlip, Normalize, RandomResizedCrop, RandomRotation,  # noqa: E402
                                    ToCHW, VerticalFlip)

KERNEL = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))


def paper_transforms() -> list:
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    return [RandomResizedCrop(224, (0.8, 1.2)), HorizontalFlip(), VerticalFlip(), RandomRotation(180),
            Normalize(mean, std), ToCHW()]


def synthetic_series(rng: np.random.Generator, slices: int, size: int) -> np.ndarray:
    """Windowed uint8 [S, H, W, 3]: an elliptic head with texture, skull rim, headrest, black border."""
    yy, xx = np.mgrid[:size, :size]
    out = np.zeros((slices, size, size, 3), np.uint8)
    for s in range(slices):
        ry, rx = size * (0.30 + 0.08 * np.sin(s / slices * np.pi)), size * 0.27
        cy, cx = size * 0.48 + rng.normal(0, 3), size * 0.5 + rng.normal(0, 3)
        r = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        brain = (r < 1).astype(np.float32)
        texture = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), 3)
        base = brain * (90 + 25 * texture) + ((r >= 1) & (r < 1.12)) * 250
        base[int(size * 0.88):int(size * 0.9), int(size * 0.2):int(size * 0.8)] = 180  # headrest line
        for c, gain in enumerate((1.0, 0.7, 0.45)):
            out[s, ..., c] = np.clip(base * gain, 0, 255).astype(np.uint8)
    return out


def head_box(image: np.ndarray) -> tuple[int, int, int, int]:
    """The original's per-slice head finding: threshold, open (5×5 ellipse, ×3), bounding box."""
    mask = (image[..., 0] > 0).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, KERNEL, iterations=3)
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return 0, image.shape[0], 0, image.shape[1]
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def write_both(root: str, n_series: int, slices: int, size: int) -> list[str]:
    """The same content as our prepared dataset (npy + meta) and as the original's npz files."""
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, "cache"), exist_ok=True)
    rows, npz_files = [], []
    for k in range(n_series):
        volume = synthetic_series(rng, slices, size)
        np.save(os.path.join(root, "cache", f"S{k}.npy"), volume)
        npz = os.path.join(root, f"S{k}.npz")
        np.savez_compressed(npz, image=volume)
        npz_files.append(npz)
        for i in range(slices):
            y0, y1, x0, x1 = head_box(volume[i])  # computed once, at prepare time
            rows.append({"slice_id": f"S{k}_{i}", "series_id": f"S{k}", "slice_idx": i, **{n: 0.0 for n in LABELS},
                         "crop_y0": y0, "crop_y1": y1, "crop_x0": x0, "crop_x1": x1, "cache": f"cache/S{k}.npy"})
    pd.DataFrame(rows).to_csv(os.path.join(root, "train_meta.csv"), index=False)
    return npz_files


def original_item(npz: str, compose: Compose, rng: np.random.Generator) -> np.ndarray:
    volume = np.load(npz)["image"]
    crops = []
    for image in volume:
        y0, y1, x0, x1 = head_box(image)
        crops.append(image[y0:y1, x0:x1])
    return np.stack(compose(crops, rng))


def interleaved(fns: list, n: int) -> list[float]:
    """Median seconds per call of each function, calling them in turn so that both see the
    same machine load (the bench often shares its cores)."""
    times: list[list[float]] = [[] for _ in fns]
    for i in range(n):
        for k, fn in enumerate(fns):
            start = time.perf_counter()
            fn(i)
            times[k].append(time.perf_counter() - start)
    return [float(np.median(t)) for t in times]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--series", type=int, default=6)
    p.add_argument("--slices", type=int, default=40)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3, help="passes over the series per method")
    args = p.parse_args(argv)
    cv2.setNumThreads(1)  # one worker means one core
    with tempfile.TemporaryDirectory(prefix="loader_bench_") as root:
        npz_files = write_both(root, args.series, args.slices, args.size)
        ours = RSNASeriesDataset(root, "train", paper_transforms(), per_slice=True)
        compose = Compose(paper_transforms(), per_slice=True, fuse=False)  # the original: one warp per transform
        ours[0], original_item(npz_files[0], compose, np.random.default_rng(0))  # warm-up
        n = args.series * args.repeats
        t_ours, t_orig = interleaved([lambda i: ours[(i % args.series, i)],
                                      lambda i: original_item(npz_files[i % args.series], compose, np.random.default_rng(i))], n)
        mb_npy = sum(os.path.getsize(os.path.join(root, "cache", f)) for f in os.listdir(os.path.join(root, "cache"))) / 2**20
        mb_npz = sum(os.path.getsize(f) for f in npz_files) / 2**20
    rows = [("ours: mmap .npy + stored crop + per-slice transforms", t_ours, mb_npy),
            ("original: .npz + per-slice open 5x5x3 + crop + transforms", t_orig, mb_npz)]
    print(f"{args.series} series x {args.slices} slices of {args.size}x{args.size}x3, 224 px output, 1 worker, "
          f"median of {n} items per method (interleaved)")
    print(f"{'method':60s} {'series/s':>9s} {'slices/s':>9s} {'ms/series':>10s} {'disk MB':>8s} {'speed-up':>9s}")
    for name, seconds, mb in rows:
        print(f"{name:60s} {1 / seconds:9.2f} {args.slices / seconds:9.1f} {1000 * seconds:10.1f} "
              f"{mb:8.1f} {t_orig / seconds:8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
