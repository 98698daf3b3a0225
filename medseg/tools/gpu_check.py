"""The measuring half of ``script/gpu_check.sh`` (the script launches, this module runs and reports).

    python -m medseg.tools.gpu_check setup --work DIR [--config X]   # tiny data (+ a tiny config on a CPU)
    python -m medseg.tools.gpu_check cases                            # the cases for this machine
    python medseg/tools/gpu_check.py case --work DIR --name N --config X [train.py flags]   (under launch)
    python -m medseg.tools.gpu_check infer --work DIR --name N --config X --model DIR
    python -m medseg.tools.gpu_check table --work DIR

Every case writes ``DIR/results/<name>.rank<r>.json`` (ok, peak GPU memory, slices/s, error); the
table has one row per case, and a case whose processes wrote nothing (a crash, a hang killed by the
script) is a failure with its log path.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import sys
import time
import traceback

import numpy as np
import pandas as pd

from medseg.constants import DEFAULT_WINDOWS, LABELS
from medseg.data.cache import SUFFIX, write_cache_file
from medseg.data.meta import meta_path, write_meta
from medseg.utils.atomic import atomic_write_json

TINY_CONFIG = """\
# gpu_check on a CPU: the paper config ({base}) with a toy encoder and sequence head.
_base_: {base}
iters: 4
model:
  encoder: {{_inherited_: false, type: CNNEncoder, arch: mobilenet_v3_small, scale: 0.5, chunk_size: 2, recompute: false}}
  head: {{num_layers: 1, dim_feedforward: 16}}
train_dataset: {{dataset_root: {root}}}
val_dataset: {{dataset_root: {root}}}
lr_scheduler: {{warmup_iters: 1}}
"""


def on_gpu() -> bool:
    import paddle

    return paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0


def write_series_data(root: str, slices: int, size: int, series: dict[str, int], seed: int = 0) -> str:
    """A prepared dataset (meta tables + head-crop caches, as ``medseg.data.prepare`` writes) of
    random series with ``slices`` slices each: enough to run every code path and measure memory
    and speed at a realistic series length, nothing to learn from."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "cache"), exist_ok=True)
    index = np.arange(slices)
    for split, count in series.items():
        frames = []
        for k in range(count):
            sid = f"ID_{split}{k:03d}"
            cache = f"cache/{sid}{SUFFIX}"
            volume = rng.integers(0, 255, size=(slices, size, size, 3), dtype=np.uint8)
            write_cache_file(os.path.join(root, cache), (size, size), DEFAULT_WINDOWS,
                             (((0, size, 0, size), image, None) for image in volume))
            labels = (rng.uniform(size=(slices, len(LABELS))) < 0.2).astype(float)
            labels[:, -1] = labels[:, :-1].max(axis=1)
            frame = pd.DataFrame(np.full_like(labels, np.nan) if split == "test" else labels, columns=list(LABELS))
            frames.append(frame.assign(
                slice_id=[f"{sid}s{i:03d}" for i in index], series_id=sid, study_id=f"ST_{sid}", patient_id=f"P_{sid}",
                slice_idx=index, position=5.0 * index, spacing=5.0, fold=-1 if split == "test" else k % 5,
                crop_y0=0, crop_y1=size, crop_x0=0, crop_x1=size, cache=cache))
        write_meta(meta_path(root, split), pd.concat(frames, ignore_index=True))
    return root


def setup(work: str, config: str, slices: int | None) -> None:
    """Write the data (and on a CPU the tiny config); print shell assignments for the script."""
    gpu = on_gpu()
    slices = slices or (40 if gpu else 5)
    data = write_series_data(os.path.join(work, "data"), slices, 64 if gpu else 40, {"train": 4, "val": 2, "test": 2})
    if not gpu:
        tiny = os.path.join(work, "tiny.yml")
        with open(tiny, "w", encoding="utf-8") as fh:
            fh.write(TINY_CONFIG.format(base=os.path.abspath(config), root=os.path.abspath(data)))
        config = tiny
    print(f"CHECK_CONFIG={shlex.quote(config)}")
    print(f"CHECK_DATA={shlex.quote(data)}")
    print(f"CHECK_DEVICE={'gpu' if gpu else 'cpu'}")


def cases() -> list[tuple[str, int, str, str, bool]]:
    """(name, processes, amp level, amp dtype, recompute) for this machine: float32 on a CPU;
    float32, O1 and O2 in float16 (and bfloat16 where the GPU has it) on a GPU."""
    import paddle

    if not on_gpu():
        precisions = [("O0", "float16")]
        procs = [1, 2]
    else:
        precisions = [("O0", "float16"), ("O1", "float16"), ("O2", "float16")]
        if paddle.device.cuda.get_device_capability() >= (8, 0):
            precisions += [("O1", "bfloat16"), ("O2", "bfloat16")]
        count = paddle.device.cuda.device_count()
        procs = [1] + ([count] if count > 1 else [])
    out = []
    for n in procs:
        for level, dtype in precisions:
            for recompute in (False, True):
                precision = "fp32" if level == "O0" else f"{level}-{'bf16' if dtype == 'bfloat16' else 'fp16'}"
                out.append((f"{precision}_{n}p{'_rc' if recompute else ''}", n, level, dtype, recompute))
    return out


def _result_path(work: str, name: str, rank: int) -> str:
    return os.path.join(work, "results", f"{name}.rank{rank}.json")


def _record(work: str, name: str, rank: int, **fields) -> None:
    os.makedirs(os.path.join(work, "results"), exist_ok=True)
    atomic_write_json(_result_path(work, name, rank), fields)


def run_case(work: str, name: str, config: str, overrides: list[str], flags: list[str]) -> int:
    """Train ``config`` with train.py's flags in this process; record the outcome for the table."""
    from medseg.config import Config
    from medseg.engine import distributed as dist
    from medseg.engine.trainer import TrainOptions, Trainer
    from medseg.tools import train

    dist.init_distributed()
    args = train.parse_args(["--config", config, *sum((["-o", o] for o in overrides), []), *flags])
    try:
        cfg = Config(config, overrides + ([f"iters={args.iters}"] if args.iters else []))
        opts = TrainOptions(save_dir=args.save_dir, save_interval=args.save_interval, num_workers=args.num_workers,
                            log_iters=args.log_iters, do_eval=args.do_eval, overwrite_save_dir=True, amp=args.amp,
                            amp_dtype=args.amp_dtype, resume_model=args.resume_model)
        result = Trainer(cfg, opts).run()
    except Exception as err:  # recorded, then re-raised: the launch fails as it would for a user
        _record(work, name, dist.get_rank(), ok=False, error=f"{type(err).__name__}: {err}".splitlines()[0],
                trace=traceback.format_exc())
        raise
    _record(work, name, dist.get_rank(), ok=True, peak_gpu_mb=result["peak_gpu_mb"],
            slices_per_s=result["slices_per_s"], checkpoint=result["checkpoint"])
    return 0


def run_infer(work: str, name: str, config: str, overrides: list[str], model: str, split: str) -> int:
    """Predict ``split`` with the checkpoint ``model`` (float32 on disk whatever the training's AMP)."""
    import paddle

    from medseg.config import Config
    from medseg.engine.infer_split import infer_split
    from medseg.engine.trainer import peak_gpu_memory_mb

    start = time.time()
    try:
        frame, _ = infer_split(Config(config, overrides), model, split, os.path.join(work, f"{name}.csv"))
        if not np.isfinite(frame[list(LABELS)].to_numpy()).all():
            raise ValueError(f"{model}: non-finite probabilities")
        states = paddle.load(os.path.join(model, "model.pdparams"))
        dtypes = sorted({str(v.dtype).replace("paddle.", "") for v in states.values()})
        if dtypes != ["float32"]:
            raise ValueError(f"{model}: checkpoint holds {dtypes}, expected float32 only")
    except Exception as err:
        _record(work, name, 0, ok=False, error=f"{type(err).__name__}: {err}".splitlines()[0], trace=traceback.format_exc())
        return 1
    _record(work, name, 0, ok=True, peak_gpu_mb=peak_gpu_memory_mb(), slices_per_s=len(frame) / (time.time() - start))
    return 0


def table(work: str, expected: list[str]) -> tuple[str, bool]:
    """A markdown table, one row per expected case; False if any case failed or wrote nothing.
    Peak memory is the largest over a case's ranks, slices/s their sum."""
    lines = ["| case | result | peak GPU memory (MB) | slices/s | note |", "|---|---|---|---|---|"]
    all_ok = True
    for name in expected:
        records = []
        for path in sorted(glob.glob(os.path.join(work, "results", f"{name}.rank*.json"))):
            with open(path, encoding="utf-8") as fh:
                records.append(json.load(fh))
        ok = bool(records) and all(r.get("ok") for r in records)
        all_ok &= ok
        peaks = [r["peak_gpu_mb"] for r in records if r.get("peak_gpu_mb") is not None]
        speeds = [r["slices_per_s"] for r in records if r.get("slices_per_s") is not None]
        note = "" if ok else next((r["error"] for r in records if not r.get("ok")), f"no result; see {work}/logs/{name}")
        peak = f"{max(peaks):.0f}" if peaks else "-"
        speed = f"{sum(speeds):.1f}" if speeds else "-"
        lines.append(f"| {name} | {'pass' if ok else 'FAIL'} | {peak} | {speed} | {note} |")
    return "\n".join(lines), all_ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("setup")
    s.add_argument("--work", required=True)
    s.add_argument("--config", required=True, help="the config to check (on a CPU: its toy-size version)")
    s.add_argument("--slices", type=int)
    sub.add_parser("cases")
    c = sub.add_parser("case")
    c.add_argument("--work", required=True)
    c.add_argument("--name", required=True)
    c.add_argument("--config", required=True)
    c.add_argument("-o", "--opts", dest="overrides", action="append", default=[])
    i = sub.add_parser("infer")
    for flag in ("--work", "--name", "--config", "--model"):
        i.add_argument(flag, required=True)
    i.add_argument("--split", default="test")
    i.add_argument("-o", "--opts", dest="overrides", action="append", default=[])
    t = sub.add_parser("table")
    t.add_argument("--work", required=True)
    t.add_argument("names", nargs="+")
    args, rest = p.parse_known_args(argv)
    if args.command == "setup":
        setup(args.work, args.config, args.slices)
    elif args.command == "cases":
        for name, n, level, dtype, recompute in cases():
            print(name, n, level, dtype, str(recompute).lower())
    elif args.command == "case":
        return run_case(args.work, args.name, args.config, args.overrides, rest)
    elif args.command == "infer":
        return run_infer(args.work, args.name, args.config, args.overrides, args.model, args.split)
    elif args.command == "table":
        text, ok = table(args.work, args.names)
        print(text)
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
