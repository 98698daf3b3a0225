"""Loader bench, one core: our series cache and loader vs the published method's, side by side.

Data: a synthetic Kaggle-layout cohort (``medseg.data.synthetic``: 512² slices, quantum noise,
headrest, heads of varying size; generated once and reused), or any Kaggle-layout folder
(``--raw DIR``, e.g. a real RSNA subset); files the header scan cannot read are left out of both.

- ours: ``medseg.data.prepare`` (head crop per slice, zstd, ``.hcc``) read by ``RSNASeriesDataset``;
  (a) our augmentation (the paper config's: zoom-out crop sampler, bilinear, one fused warp per
  slice) on the CPU, uint8 out: normalisation and the C × H × W layout are the batch step's
  (``to_model_input``, timed apart for information);
  (a') the same cache and loader with the released augmentation's semantics (``RELEASED_AUG``:
  the released crop sampler, bicubic, rotation about (w/2, h/2)), also one fused warp per slice;
  for information, the same unfused (``fuse: false``: the release's steps, a bicubic resize then
  a bilinear rotation);
  (b) ``augment_on_device``: the CPU part (decode, crop, draw the warps, uint8 canvas, collate),
  and (c) the device part (batched affine_grid + grid_sample + normalise) timed on this CPU.
- published (PaddlePaddle/Research, easymia ``rsna_ihd.py``), re-implemented faithfully: its
  preprocess (``bench/released_preprocess.py``: SimpleITK read, float64 windows, the series'
  union box of nonzero pixels, ``np.savez_compressed``); its loader inflates the whole series,
  removes the black edge of every slice (5×5 elliptical opening ×3 on channel 0, bounds by
  ``np.where``), then RandomResizedCrop (crop + bicubic resize, up to 10 draws), cv2 flips and a
  rotation ``warpAffine`` at 224, uint8 out (it normalises elsewhere). Nothing is done that the
  original does not do.

(a) against published mixes two changes, so the ratio is split: published / (a') is the cache and
loader's gain at equal augmentation semantics (it includes fusing the release's two
interpolations, bicubic resize then bilinear rotation, into one cubic warp), (a') / (a) the
augmentation's; their product is the whole ratio.

Every arm runs on one thread (cv2 and Paddle), items interleaved so that all see the same
machine load; each arm is warmed up once on the first series (cold start excluded for all).
Rates are slices per CPU second of this process (per core, whatever else shares the machine).
Targets: ours bytes/slice <= 1.0x published; ours (a) >= 4x published slices/s, checked on the
whole ratio (a) / published, as before the split; CPU part (b) >= 1500 slices/s. Exits 1 when one
is missed (``--no_fail`` or ``BENCH_NO_FAIL=1`` to only print). The first line printed is the
provenance (``bench/provenance.py``); ``--toy`` (or ``BENCH_TOY=1``) runs a few tiny series once,
to check the bench runs (its numbers mean nothing).

    python bench/loader_bench.py [--series 6] [--slices 32] [--size 512] [--raw DIR] [--repeats 2] [--toy]
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # one core per arm, Paddle included (before any import of it)

import argparse  # noqa: E402
import copy  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import pydicom  # noqa: E402

from medseg.data.collate import collate_series  # noqa: E402
from medseg.data.dataset import RSNASeriesDataset  # noqa: E402
from medseg.data.device_augment import to_model_input  # noqa: E402
from medseg.data.meta import meta_files, meta_path, read_meta_file, write_meta  # noqa: E402
from medseg.data.prepare import prepare  # noqa: E402
from medseg.data.scan import list_dicom_files, scan_header  # noqa: E402
from medseg.dicom.errors import DicomReadError  # noqa: E402
from medseg.dicom.validation import disable_value_validation  # noqa: E402
from medseg.registry import TRANSFORMS, build  # noqa: E402
from medseg.utils.logger import setup_logger  # noqa: E402
from provenance import provenance_line  # noqa: E402  (bench/*.py: this script's folder is on sys.path)
from released_preprocess import run_released  # noqa: E402
from targets import finish, no_fail_default, toy_default  # noqa: E402

TARGET_BYTES, TARGET_SPEEDUP, TARGET_CPU_PART = 1.0, 4.0, 1500.0
KERNEL = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
FULL = {"series": 6, "slices": 32, "size": 512, "repeats": 2}
TOY = {"series": 4, "slices": 6, "size": 64, "repeats": 1}  # --toy / BENCH_TOY=1; a flag given wins
# (a): this project's own augmentation (the transforms' defaults: zoom-out sampler, bilinear, exact
# centre; the paper config's until it took the released semantics in commit 963d0ae)
OURS_AUG = [{"type": "RandomResizedCrop", "size": 224, "scale": [0.8, 1.2]},
            {"type": "HorizontalFlip", "prob": 0.5}, {"type": "VerticalFlip", "prob": 0.5},
            {"type": "RandomRotation", "degrees": 180},
            {"type": "Normalize", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}, {"type": "ToCHW"}]
# (a'): the released augmentation's semantics in our loader, as config/_base_/rsna_224.yml now trains
# (the normalisation is the batch step's in both arms, so its constants do not change their work)
RELEASED_AUG = [{"type": "RandomResizedCrop", "size": 224, "scale": [0.8, 1.2], "sampler": "released", "interpolation": "cubic"},
                {"type": "HorizontalFlip", "prob": 0.5}, {"type": "VerticalFlip", "prob": 0.5},
                {"type": "RandomRotation", "degrees": 180, "centre": "released"},
                {"type": "Normalize"}, {"type": "ToCHW"}]


def build_transforms(spec: list[dict], where: str) -> list:
    """A transform list from its config form, through the registry as a YAML config would."""
    return build(copy.deepcopy(spec), TRANSFORMS, where)


# ---- the published loader, re-implemented from its code (easymia rsna_ihd.py, transforms)
def published_black_edge(image: np.ndarray) -> np.ndarray:
    opened = cv2.morphologyEx(image[..., 0], cv2.MORPH_OPEN, KERNEL, iterations=3)
    if not opened.any():
        return np.zeros_like(image)
    ys, xs = np.where(opened > 0)
    return image[ys.min():ys.max(), xs.min():xs.max()]


def published_augment(image: np.ndarray, rand: random.Random, size: int = 224) -> np.ndarray:
    """RandomResizedCrop(224, scale [0.8, 1.2], bicubic; up to 10 draws, else a centre square),
    RandomHorizontalFlip, RandomVerticalFlip, RandomRotation(180) about (w/2, h/2)."""
    height, width = image.shape[:2]
    for _ in range(10):
        area = rand.uniform(0.8, 1.2) * height * width
        aspect = rand.uniform(3 / 4, 4 / 3)
        w, h = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
        if rand.random() < 0.5:
            w, h = h, w
        if w <= width and h <= height:
            i, j = rand.randint(0, height - h), rand.randint(0, width - w)
            break
    else:
        h = w = min(height, width)
        i, j = (height - w) // 2, (width - w) // 2
    out = cv2.resize(image[i:i + h, j:j + w], (size, size), interpolation=cv2.INTER_CUBIC)
    if rand.random() < 0.5:
        out = cv2.flip(out, 1)
    if rand.random() < 0.5:
        out = cv2.flip(out, 0)
    matrix = cv2.getRotationMatrix2D((size / 2, size / 2), rand.uniform(-180, 180), 1)
    return cv2.warpAffine(out, matrix, (size, size))


def published_item(path: str, seed: int, parts: dict[str, float] | None = None) -> np.ndarray:
    rand = random.Random(seed)
    t0 = time.process_time()
    volume = np.load(path)["arr_0"]
    t1 = time.process_time()
    crops = [published_black_edge(image) for image in volume]
    t2 = time.process_time()
    out = np.array([published_augment(c, rand) for c in crops]).transpose(0, 3, 1, 2)
    if parts is not None:
        t3 = time.process_time()
        for key, value in (("inflate", t1 - t0), ("black edge", t2 - t1), ("augment", t3 - t2)):
            parts[key] = parts.get(key, 0.0) + value
    return out


# ---- data
def make_data(raw: str, work: str) -> tuple[str, str, tuple[int, int]]:
    """Our prepared dataset (``work/ours``), the released preprocess's npz folder, the DICOM frame (h, w)."""
    setup_logger(level=40)
    ours, published = os.path.join(work, "ours"), os.path.join(work, "published")
    prepare(raw, ours, workers=1, val_fraction=0.2, seed=0)
    files = [p for paths in list_dicom_files(raw).values() for p in paths]
    unreadable = {p for p in files if isinstance(scan_header(p), DicomReadError)}  # the release would stop on them
    run_released(raw, published, workers=1, skip=unreadable)
    with disable_value_validation():  # RSNA-style ids are not valid UIDs
        header = pydicom.dcmread(next(p for p in files if p not in unreadable), stop_before_pixels=True)
    return ours, os.path.join(published, "imgdata"), (int(header.Rows), int(header.Columns))


def interleaved(arms: dict, n: int) -> tuple[dict[str, float], dict[str, float]]:
    """(CPU seconds, wall seconds) per arm over ``n`` items, calling the arms in turn. CPU time
    of this process is what "per core" means and does not count the time other processes hold
    the core (the bench often shares its machine); wall time is printed for information."""
    cpu, wall = dict.fromkeys(arms, 0.0), dict.fromkeys(arms, 0.0)
    for i in range(n):
        for name, fn in arms.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn(i)
            cpu[name] += time.process_time() - start_cpu
            wall[name] += time.perf_counter() - start
    return cpu, wall


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--series", type=int, help=f"default {FULL['series']} (--toy {TOY['series']})")
    p.add_argument("--slices", type=int, help=f"default {FULL['slices']} (--toy {TOY['slices']})")
    p.add_argument("--size", type=int, help=f"default {FULL['size']} (--toy {TOY['size']})")
    p.add_argument("--raw", help="an existing Kaggle-layout folder to use instead of the synthetic cohort")
    p.add_argument("--repeats", type=int, help=f"passes over the series per arm (default {FULL['repeats']}, --toy {TOY['repeats']})")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "medseg_loader_bench"))
    p.add_argument("--toy", action="store_true", default=toy_default(),
                   help="toy size (also BENCH_TOY=1): checks the bench runs, its numbers mean nothing")
    p.add_argument("--no_fail", action="store_true", default=no_fail_default(), help="print only; exit 0 even when a target is missed")
    args = p.parse_args(argv)
    print(provenance_line(), flush=True)
    for key, value in (TOY if args.toy else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    cv2.setNumThreads(1)
    import paddle

    paddle.set_device("cpu")
    ours_aug = build_transforms(OURS_AUG, "loader_bench OURS_AUG")
    released_aug = build_transforms(RELEASED_AUG, "loader_bench RELEASED_AUG")
    raw = args.raw
    if raw is None:
        from medseg.data.synthetic import generate_cohort

        raw = os.path.join(args.work, f"raw_{args.series}x{args.slices}_{args.size}")
        generate_cohort(raw, args.series, seed=0, size=args.size, test_fraction=0.2, n_slices=args.slices)
    out = os.path.join(args.work, "out")
    shutil.rmtree(out, ignore_errors=True)
    ours_root, npz_dir, frame = make_data(raw, out)
    tag = "all"  # every prepared series (train, val and test) in one table
    write_meta(meta_path(ours_root, tag), pd.concat([read_meta_file(f) for f in meta_files(ours_root)]))
    cpu = RSNASeriesDataset(ours_root, tag, ours_aug, per_slice=True)
    released = RSNASeriesDataset(ours_root, tag, released_aug, per_slice=True)
    unfused = RSNASeriesDataset(ours_root, tag, released_aug, per_slice=True, fuse=False)
    dev = RSNASeriesDataset(ours_root, tag, ours_aug, per_slice=True, augment_on_device=True)
    npz = [os.path.join(npz_dir, f"{s}.npz") for s in cpu.series_ids]  # the same series in the same order
    missing = [f for f in npz if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: the released preprocess wrote no file for this series ({len(missing)} missing)")
    slices = np.array([cpu.num_slices(i) for i in range(len(cpu))])
    pub_shapes = [np.load(f)["arr_0"].shape for f in npz]
    pub_slices = np.array([shape[0] for shape in pub_shapes])
    count = len(cpu)
    batches: dict[int, dict] = {}
    items: dict[int, dict] = {}

    def ours_cpu(i: int) -> None:
        items[i % count] = cpu[(i % count, i)]

    def ours_released_aug(i: int) -> None:
        released[(i % count, i)]

    def ours_released_unfused(i: int) -> None:
        unfused[(i % count, i)]

    def batch_step(i: int) -> None:  # what the training process adds to (a): normalise + layout
        to_model_input(collate_series([items[i % count]]))["image"].numpy()

    def cpu_part(i: int) -> None:
        batches[i % count] = collate_series([dev[(i % count, i)]])

    def device_part(i: int) -> None:
        to_model_input(batches[i % count])["image"].numpy()  # includes the copy back, as a sync

    parts: dict[str, float] = {}
    arms = {
        "published": lambda i: published_item(npz[i % count], i, parts),
        "ours_cpu": ours_cpu,
        "ours_released_aug": ours_released_aug,
        "ours_released_unfused": ours_released_unfused,
        "ours_cpu_batch_step": batch_step,
        "ours_cpu_part": cpu_part,
        "ours_device_part": device_part,
    }
    for fn in arms.values():  # warm-up: first call of every arm (imports, page faults), excluded for all
        fn(0)
    parts.clear()
    n = count * args.repeats
    totals, walls = interleaved(arms, n)
    total_slices = int(sum(slices[i % count] for i in range(n)))
    arm_slices = {name: total_slices for name in arms}
    arm_slices["published"] = int(sum(pub_slices[i % count] for i in range(n)))  # its own series lengths
    rate = {name: arm_slices[name] / seconds for name, seconds in totals.items()}
    wall_rate = {name: arm_slices[name] / seconds for name, seconds in walls.items()}

    ours_bytes = sum(os.path.getsize(os.path.join(ours_root, c)) for c in set(cpu.cache_paths)) / slices.sum()
    pub_bytes = sum(os.path.getsize(f) for f in npz) / pub_slices.sum()
    pub_hw = np.mean([shape[1:3] for shape in pub_shapes], axis=0)
    meta = read_meta_file(meta_path(ours_root, tag))
    ours_hw = ((meta.crop_y1 - meta.crop_y0).mean(), (meta.crop_x1 - meta.crop_x0).mean())
    print(f"{count} series, {int(slices.sum())} slices of {frame[0]}x{frame[1]} ({'--raw ' + args.raw if args.raw else 'synthetic cohort'}); "
          f"one core, slices per CPU second; {args.repeats} interleaved passes after one warm-up item per arm"
          + (" -- toy size: checks the bench runs, the numbers mean nothing" if args.toy else ""))
    print(f"crop per slice: ours {ours_hw[0]:.0f}x{ours_hw[1]:.0f} (per-slice head box), published {pub_hw[0]:.0f}x{pub_hw[1]:.0f} (series union box)")
    print(f"{'':44s}{'ours':>12s}{'published':>12s}{'ratio':>9s}")
    print(f"{'cache KiB per slice':44s}{ours_bytes / 1024:12.1f}{pub_bytes / 1024:12.1f}{ours_bytes / pub_bytes:8.2f}x  (target <= {TARGET_BYTES})")
    for label, transforms in (("(a)", ours_aug), ("(a_released)", released_aug)):  # what each arm ran
        print(f"augmentation {label}: " + ", ".join(map(repr, transforms)))
    print("loader slices/s, augmentation on the CPU, uint8 out:")
    print(f"{'  (a) ours (our augmentation)':44s}{rate['ours_cpu']:12.0f}")
    print(f"{'  (a_released) ours, released augmentation':44s}{rate['ours_released_aug']:12.0f}")
    print(f"{'  (a_released) unfused (fuse: false)':44s}{rate['ours_released_unfused']:12.0f}  "
          "(for information: the release's two interpolations)")
    print(f"{'  published (released loader)':44s}{rate['published']:12.0f}")
    whole = rate["ours_cpu"] / rate["published"]
    cache_gain = rate["ours_released_aug"] / rate["published"]
    aug_gain = rate["ours_cpu"] / rate["ours_released_aug"]
    print(f"speed-up published -> ours: whole {whole:.2f}x = cache and loader {cache_gain:.2f}x (published / a_released, "
          f"equal augmentation semantics) x augmentation {aug_gain:.2f}x (a_released / a)")
    print(f"{'CPU part with augment_on_device, slices/s':44s}{rate['ours_cpu_part']:12.0f}{rate['published']:12.0f}"
          f"{rate['ours_cpu_part'] / rate['published']:8.2f}x  (target >= {TARGET_CPU_PART:.0f} slices/s)")
    print(f"{'device part on this CPU, slices/s':44s}{rate['ours_device_part']:12.0f}")
    per_slice = {k: 1000 * v / arm_slices["published"] for k, v in parts.items()}
    print("published loader, ms per slice: " + ", ".join(f"{k} {v:.2f}" for k, v in per_slice.items())
          + f"; total {1000 / rate['published']:.2f}")
    print(f"ours, ms per slice: CPU augmentation {1000 / rate['ours_cpu']:.2f} (+ batch step {1000 / rate['ours_cpu_batch_step']:.2f} "
          "in the training process: collate, normalise, to a Paddle tensor); released augmentation "
          f"{1000 / rate['ours_released_aug']:.2f} (unfused {1000 / rate['ours_released_unfused']:.2f}); augment_on_device CPU part "
          f"{1000 / rate['ours_cpu_part']:.2f} + device part {1000 / rate['ours_device_part']:.2f} (on this CPU)")
    print("wall-clock slices/s (machine load included, for information): " + ", ".join(f"{k} {v:.0f}" for k, v in wall_rate.items()))
    full = np.load(npz[0])["arr_0"]  # what the previous bench's reference inflated: whole frames
    frame_npz = os.path.join(out, "full_frame.npz")
    full_volume = np.zeros((len(full), *frame, full.shape[3]), np.uint8)
    full_volume[:, :full.shape[1], :full.shape[2]] = full
    np.savez_compressed(frame_npz, full_volume)
    t0 = time.process_time()
    np.load(frame_npz)["arr_0"]
    t1 = time.process_time()
    np.load(npz[0])["arr_0"]
    t2 = time.process_time()
    print(f"inflating a series as full {frame[0]}x{frame[1]} frames (the previous bench's reference) vs its union crop: "
          f"{1000 * (t1 - t0) / len(full):.2f} vs {1000 * (t2 - t1) / len(full):.2f} ms per slice; "
          f"uncompressed full-frame .npy (our previous cache): {frame[0] * frame[1] * full.shape[3] / 1024:.0f} KiB per slice")
    shutil.rmtree(out, ignore_errors=True)
    checks = [
        (f"cache bytes per slice ours / published {ours_bytes / pub_bytes:.2f}x <= {TARGET_BYTES}", ours_bytes / pub_bytes <= TARGET_BYTES),
        (f"loader speed-up (a) / published {whole:.2f}x >= {TARGET_SPEEDUP} (on the whole ratio: cache and loader x "
         "augmentation)", whole >= TARGET_SPEEDUP),
        (f"CPU part {rate['ours_cpu_part']:.0f} slices/s >= {TARGET_CPU_PART:.0f}", rate["ours_cpu_part"] >= TARGET_CPU_PART),
    ]
    return finish(checks, args.no_fail)


if __name__ == "__main__":
    sys.exit(main())
