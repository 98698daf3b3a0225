"""bench/workflow.sh's second-stage parts, for one seed's folder (its prepared root and fold-0
stage-1 encoder): the saved-embeddings stage 2 against the frozen-encoder one, and bagged heads.

``speed``: both stage 2s from the same weights (the stage-1 encoder and one random head), the same
data, batch, steps and seed, augmentation and the head's dropout off in both (the image arm's
training transforms are its eval transforms, so each slice has one feature vector as in the
embeddings); seconds per iteration of each (the trainer's ``batch_cost`` after its first logging
window) and the largest difference of their test-split probabilities. The embeddings are float32
here: float16 alone moves probabilities by about 6e-4 (docs/design.md, "Saved embeddings"), and
the arms should differ only by where the features come from.

``bagging``: ``train.py --bag N`` on the embeddings (heads seeded seed … seed+N-1, each its last
checkpoint); member 0 is the single head of the same seed, so the bag and one head differ only by
the N-1 other heads. Test-split predictions of both.

Each part writes ``<folder>/<part>.json`` (what the summary of bench/workflow.sh reads, which
skips a part whose file exists) and reuses the embeddings and bag an earlier run finished.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from medseg.constants import LABELS  # noqa: E402
from medseg.data.embeddings import split_record  # noqa: E402
from medseg.data.split import fold_tags  # noqa: E402
from medseg.outputs.predictions import read_table  # noqa: E402
from medseg.utils.atomic import atomic_write_json, atomic_write_text  # noqa: E402

BATCH_COST = re.compile(r"\[TRAIN\] iter (\d+)/\d+ .* batch_cost ([0-9.]+) s")


def run(args: list[str], log: str) -> None:
    """A tool of this repository in its own process (as a user runs it); its output in ``log``."""
    with open(log, "w") as fh:
        code = subprocess.call([sys.executable, *args], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    if code:
        sys.exit(f"{' '.join(args[:3])} … failed (exit {code}); see {log}")


def embed(folder: str, config: str, encoder: str, out: str, splits: list[str]) -> float:
    """float32 embeddings of ``splits`` (reused when present); the seconds their extraction took
    (each split's record keeps it, so a rerun that reuses them reports the same)."""
    args = ["-m", "medseg.tools.embed", "--config", config, "-o", f"val_dataset.dataset_root={folder}/prepared",
            "--model", encoder, "--out", out, "--dtype", "float32", "--no_progress", "--num_workers", "1"]
    for split in splits:
        args += ["--split", split]
    run(args, out + ".log")
    return float(sum(split_record(out, split)["extract_seconds"] for split in splits))


def fold_embeddings(a: argparse.Namespace) -> tuple[str, float]:
    """Fold 0's train and validation splits and the test split, embedded once for both parts."""
    out = os.path.join(a.folder, "embeddings_fold0")
    return out, embed(a.folder, a.config, a.encoder, out, [*fold_tags(0, a.folds), "test"])


def embedded(out: str, folds: int) -> list[str]:
    """Overrides: fold 0's train and validation splits of the embeddings folder ``out``."""
    train, val = fold_tags(0, folds)
    return ["-o", f"train_dataset.embeddings={out}", "-o", f"train_dataset.split={train}",
            "-o", f"val_dataset.embeddings={out}", "-o", f"val_dataset.split={val}"]


def seconds_per_iteration(log: str) -> float:
    """Mean ``batch_cost`` of the logging windows after the first (which builds kernels)."""
    costs = [float(m.group(2)) for m in BATCH_COST.finditer(open(log).read())][1:]
    if not costs:
        sys.exit(f"{log}: fewer than two [TRAIN] logging windows; run more iterations")
    return float(np.mean(costs))


def probabilities(path: str) -> np.ndarray:
    frame = read_table(path)[0].set_index("slice_id").sort_index()
    return frame[list(LABELS)].to_numpy(np.float64)


def last_checkpoint(save_dir: str) -> str:
    its = sorted((int(d.split("_")[1]), d) for d in os.listdir(save_dir) if re.fullmatch(r"iter_\d+", d))
    if not its:
        sys.exit(f"{save_dir}: no iter_N checkpoint")
    return os.path.join(save_dir, its[-1][1])


def same_start(config: str, encoder: str, out: str, seed: int) -> str:
    """One checkpoint both arms start from: the stage-1 encoder (and slice head) with a sequence head
    initialised once, so the arms' heads start equal (models of different encoders draw their
    initial heads from different points of the random stream)."""
    import paddle

    from medseg.config import Config
    from medseg.engine import checkpoint as ckpt

    path = os.path.join(out, "model.pdparams")
    if not os.path.isfile(path):
        paddle.seed(seed)
        model = Config(config).build("model")
        ckpt.load_params(encoder, model, strict=False)
        os.makedirs(out, exist_ok=True)
        paddle.save(model.state_dict(), path + ".tmp")
        os.replace(path + ".tmp", path)
    return out


def speed(a: argparse.Namespace) -> dict:
    out = os.path.join(a.folder, "embed_speed")
    os.makedirs(out, exist_ok=True)
    from medseg.config import Config

    image_cfg = Config(a.config)
    image_cfg.dict["train_dataset"]["transforms"] = image_cfg.dict["val_dataset"]["transforms"]  # augmentation off
    image_cfg.dict["batch_size"] = Config(a.embed_config).get("batch_size")  # the same batch in both arms
    image_config = os.path.join(out, "image_noaug.yml")
    atomic_write_text(image_config, image_cfg.dump())
    embeddings, extract = fold_embeddings(a)
    start = same_start(a.config, a.encoder, os.path.join(out, "start"), a.seed)
    log_iters = max(1, a.iters // 4)  # four logging windows: the first (kernel building) is left out of the timing
    # Dropout off in both: the two models draw their masks from different points of the random
    # stream (the image model's construction draws the encoder's initial weights first).
    common = ["-o", "model.head.dropout=0.0", "--pretrained", start, "--seed", str(a.seed), "--iters", str(a.iters), "--log_iters", str(log_iters),
              "--save_interval", str(a.iters), "--overwrite_save_dir", "--num_workers", "1"]
    data = ["-o", f"train_dataset.dataset_root={a.folder}/prepared", "-o", f"train_dataset.split={fold_tags(0, a.folds)[0]}",
            "-o", f"val_dataset.dataset_root={a.folder}/prepared"]
    arms = {"image": (image_config, data), "embeddings": (a.embed_config, embedded(embeddings, a.folds))}
    record = {"extract_seconds": extract, "iters": a.iters}
    preds = {}
    for arm, (config, extra) in arms.items():
        save = os.path.join(out, arm)
        run(["train.py", "--config", config, *extra, "--save_dir", save, *common], save + ".log")
        record[f"{arm}_s_per_iter"] = seconds_per_iteration(os.path.join(save, "train.log"))
        pred = os.path.join(out, f"{arm}_test.csv")
        run(["infer.py", "--config", config, *extra, "--resume_model", last_checkpoint(save), "--split", "test",
             "--num_workers", "1", "--output", pred], pred + ".log")
        preds[arm] = probabilities(pred)
    record["max_abs_diff"] = float(np.abs(preds["image"] - preds["embeddings"]).max())
    record["ratio"] = record["image_s_per_iter"] / record["embeddings_s_per_iter"]
    return record


def bagging(a: argparse.Namespace) -> dict:
    out = os.path.join(a.folder, "bagging")
    os.makedirs(out, exist_ok=True)
    embeddings, extract = fold_embeddings(a)
    save = os.path.join(out, "heads")
    done = os.path.join(save, "bagged", "model.pdparams")
    if not os.path.isfile(done):
        run(["train.py", "--config", a.embed_config, *embedded(embeddings, a.folds), "--pretrained", a.encoder,
             "--seed", str(a.seed), "--bag", str(a.bag), "--save_dir", save, "--overwrite_save_dir",
             "--save_interval", "1000000", "--num_workers", "0", *(["--iters", str(a.iters)] if a.iters else [])],
            save + ".log")
    record = {"extract_seconds": extract, "bag": a.bag}
    bagged = os.path.join(save, "bagged")  # with its own config: the head section is the bag
    for arm, model, config in (("one", last_checkpoint(os.path.join(save, "bag_0")), a.embed_config),
                               ("bag", bagged, os.path.join(bagged, "config.yml"))):
        pred = os.path.join(out, f"{arm}_test.csv")
        run(["infer.py", "--config", config, *embedded(embeddings, a.folds), "--resume_model", model,
             "--split", "test", "--num_workers", "0", "--output", pred], pred + ".log")
        record[f"{arm}_predictions"] = pred
    return record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=("speed", "bagging"))
    p.add_argument("--folder", required=True, help="the seed's folder of bench/workflow.sh (prepared/ inside)")
    p.add_argument("--encoder", required=True, help="fold 0's stage-1 checkpoint")
    p.add_argument("--config", default="config/demo_cpu.yml", help="the image stage 2")
    p.add_argument("--embed_config", default="config/demo_cpu_embed.yml", help="the stage 2 on embeddings")
    p.add_argument("--folds", type=int, required=True, help="K of the prepared root's patient folds (fold 0 is used)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iters", type=int, default=None, help="speed: steps of both arms; bagging: each head's (default: the config's)")
    p.add_argument("--bag", type=int, default=5)
    a = p.parse_args()
    a.folder = os.path.abspath(a.folder)
    if a.part == "speed" and not a.iters:
        p.error("speed needs --iters")
    record = speed(a) if a.part == "speed" else bagging(a)
    atomic_write_json(os.path.join(a.folder, f"{a.part}.json"), record)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
