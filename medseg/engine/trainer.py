"""The training loop (``train.py`` only parses flags and calls :func:`train`).

Reproducibility is the design constraint: the data order of an epoch is a function of
``(seed, epoch)``, each series' augmentation a function of ``(seed, epoch, index)``, and every
checkpoint holds the optimizer, scheduler, loss scaler and RNG states, so that a run stopped at
iteration N and resumed produces the same losses as one that never stopped.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import paddle

from medseg.config import Config
from medseg.data.device_augment import to_model_input
from medseg.data.build import build_dataset
from medseg.data.embeddings import check_embedding_run
from medseg.data.sampler import SeriesBatchSampler
from medseg.engine import checkpoint as ckpt
from medseg.engine import distributed as dist
from medseg.engine import loader as loaders
from medseg.engine.evaluator import evaluate
from medseg.engine.metrics import WeightedLogLoss
from medseg.utils.atomic import atomic_write_text
from medseg.utils.cli import ToolError
from medseg.utils.logger import get_logger, setup_logger

logger = get_logger("train")

LOSS_HISTORY = "loss_history.csv"
_RUN_FILES = ("train.log", LOSS_HISTORY, "config.yml", "vdl", ckpt.BEST_DIR)


class SaveDirError(ValueError):
    """The save directory would be overwritten without ``--overwrite_save_dir``."""


class NonFiniteLossError(ToolError, RuntimeError):
    """The loss became NaN/inf; training stops rather than writing a broken checkpoint."""

    exit_code = 3


@dataclass
class TrainOptions:
    """Run-time options (flags); the experiment itself (data, model, loss, schedule) is the config."""

    save_dir: str = "output"
    save_interval: int = 1000
    keep_checkpoint_max: int = 5
    keep_checkpoint_iter: list[int] = field(default_factory=list)
    num_workers: int | None = None  # None: from the cores per process (loader.default_num_workers)
    use_shared_memory: bool = True
    log_iters: int = 10
    do_eval: bool = False
    use_vdl: bool = False
    overwrite_save_dir: bool = False
    amp: str = "O0"
    amp_dtype: str = "float16"
    seed: int = 0
    resume_model: str | None = None
    pretrained: str | None = None
    scale_lr: str = "none"  # none | linear | sqrt: scale the config's learning rate by the number of processes


def _inspect_save_dir(opts: TrainOptions) -> bool:
    save_dir = opts.save_dir
    if os.path.exists(save_dir) and not os.path.isdir(save_dir):
        raise SaveDirError(f"{save_dir}: save_dir exists and is not a directory")
    # A run's results (not a log left by a run that failed on bad input) make a save_dir occupied.
    occupied = os.path.isdir(save_dir) and any(
        name.startswith("iter_") or name in (ckpt.BEST_DIR, LOSS_HISTORY) for name in os.listdir(save_dir))
    if occupied and not opts.resume_model and not opts.overwrite_save_dir:
        raise SaveDirError(f"{save_dir}: save_dir already holds a run; pass --overwrite_save_dir to replace it "
                           "or --resume_model to continue it")
    return occupied


def check_save_dir(opts: TrainOptions) -> bool:
    """Refuse to overwrite a previous run unless asked; True if a run's results are there.

    Only checks: nothing is removed until the whole run has been built and validated. Rank 0
    decides and every rank takes its answer (or its error): on node-local disks the ranks of
    other nodes would see an empty save_dir and decide differently, then hang at the next
    collective. Input files (checkpoint, weights) must be readable by every rank.
    """
    for path, what in ((opts.resume_model, "checkpoint"), (opts.pretrained, "pretrained weights")):
        if not path:
            continue
        seen = dist.all_gather_objects(os.path.exists(path))
        if not all(seen):
            missing = [rank for rank, ok in enumerate(seen) if not ok]
            where = "" if len(seen) == 1 else f" on rank(s) {missing} (put it on storage every node can read)"
            raise ckpt.CheckpointError(f"{path}: {what} not found{where}")
    decision: tuple[str, Any] = ("ok", False)
    if dist.is_main():
        try:
            decision = ("ok", _inspect_save_dir(opts))
        except SaveDirError as err:
            decision = ("error", str(err))
    kind, value = dist.broadcast_object(decision)
    if kind == "error":
        raise SaveDirError(value)
    return bool(value)


def claim_save_dir(opts: TrainOptions, occupied: bool) -> None:
    """Create the save_dir (rank 0), clearing a previous run's files if ``--overwrite_save_dir``."""
    dist.barrier()
    if dist.is_main():
        save_dir = opts.save_dir
        if occupied and opts.overwrite_save_dir and not opts.resume_model:
            # Remove only what a run writes, never unrelated files a user put there.
            for name in os.listdir(save_dir):
                path = os.path.join(save_dir, name)
                if name in _RUN_FILES or name.startswith(("iter_", "train.rank", ".iter_")):
                    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        os.makedirs(save_dir, exist_ok=True)
    dist.barrier()


def parameter_checksum(model: paddle.nn.Layer) -> str:
    """SHA-256 over all parameters: equal on every rank iff the replicas stayed in sync."""
    digest = hashlib.sha256()
    for name, value in sorted(dist.unwrap_model(model).state_dict().items()):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(value.numpy()).tobytes())
    return digest.hexdigest()


class Trainer:
    """Builds everything from the config, restores a checkpoint if asked, runs the loop."""

    def __init__(self, cfg: Config, opts: TrainOptions):
        self.cfg, self.opts = cfg, opts
        dist.init_distributed()
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        dist.check_paddle_build()
        occupied = check_save_dir(opts)
        setup_logger(rank=self.rank)  # console until the save_dir is claimed
        self.iters = int(cfg.section("iters"))
        self.batch_size = int(cfg.get("batch_size", 1))
        if self.iters < 1 or self.batch_size < 1:
            raise ValueError(f"{cfg.path}: iters ({self.iters}) and batch_size ({self.batch_size}) must be >= 1")
        random.seed(opts.seed)
        np.random.seed(opts.seed)
        paddle.seed(opts.seed)

        self.train_dataset = build_dataset(cfg, "train_dataset", seed=opts.seed)
        self.val_dataset = build_dataset(cfg, "val_dataset") if opts.do_eval else None
        self.model = cfg.build("model")
        if opts.pretrained:
            ckpt.load_params(opts.pretrained, self.model, strict=False)
        elif getattr(self.model, "freeze_encoder", False) and not opts.resume_model and not cfg.get("model.encoder.pretrained"):
            raise ValueError(f"{cfg.path}: model.freeze_encoder is set but no weights are given (--pretrained or "
                             "model.encoder.pretrained): the frozen encoder would stay random")
        # The schedule spans ``iters`` unless the config pins ``total_iters`` (then a run can be
        # stopped early with a smaller --iters and resumed on the same schedule).
        span = {} if cfg.get("lr_scheduler.total_iters") is not None else {"total_iters": self.iters}
        self.lr_factor = lr_scale_factor(opts.scale_lr, self.world)
        if self.lr_factor != 1.0:
            span["learning_rate"] = float(cfg.section("lr_scheduler.learning_rate")) * self.lr_factor
        self.scheduler = cfg.build("lr_scheduler", **span)
        self.optimizer = cfg.build("optimizer", parameters=self.model.parameters(), learning_rate=self.scheduler)
        self.loss_fn = cfg.build("loss")
        self.metric = cfg.build("metric") if "metric" in cfg else WeightedLogLoss()

        self.start_iter, self.best = 0, math.inf
        if self.world > 1:
            paddle.seed(opts.seed + self.rank)  # replicas start equal, then draw their own dropout
        # Resume into the float32 model before AMP O2 casts it (checkpoints hold float32 weights and
        # the optimizer's float32 master weights), as PaddleSeg/PaddleClas do.
        state = self._resume(opts.resume_model) if opts.resume_model else {}
        check_embedding_run(self.model, self.train_dataset, self.val_dataset)  # saved embeddings: one encoder
        self._setup_amp()
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        # Everything is built and every input validated: only now touch the save_dir.
        claim_save_dir(opts, occupied)
        setup_logger(os.path.join(opts.save_dir, "train.log"), self.rank)
        if self.amp_note:
            logger.warning(self.amp_note)
        if opts.resume_model:
            logger.info("resumed from %s at iteration %d", opts.resume_model, self.start_iter)
        self.model = dist.wrap_model(self.model)
        self.sampler = SeriesBatchSampler(len(self.train_dataset), self.batch_size, shuffle=True, seed=opts.seed,
                                          rank=self.rank, world_size=self.world, pad_shards=True)
        # A dataset served from memory (saved embeddings) gains nothing from worker processes but their IPC.
        default_workers = loaders.default_num_workers() if getattr(self.train_dataset, "use_workers", True) else 0
        self.num_workers = default_workers if opts.num_workers is None else int(opts.num_workers)
        if opts.use_shared_memory and self.num_workers > 0 and len(self.train_dataset):
            loaders.check_shared_memory(self.num_workers, loaders.batch_nbytes(self.train_dataset, self.batch_size))
        self.loader = loaders.make_loader(self.train_dataset, self.sampler, self.num_workers, opts.use_shared_memory)
        self.vdl = self._vdl_writer() if opts.use_vdl and dist.is_main() else None
        if dist.is_main():
            atomic_write_text(os.path.join(opts.save_dir, "config.yml"), cfg.dump())

    def _setup_amp(self) -> None:
        level, dtype = self.opts.amp, self.opts.amp_dtype
        if level not in ("O0", "O1", "O2") or dtype not in ("float16", "bfloat16"):
            raise ValueError(f"--amp must be O0/O1/O2 and --amp_dtype float16/bfloat16, got {level}/{dtype}")
        on_gpu = paddle.device.is_compiled_with_cuda() and paddle.get_device().startswith("gpu")
        self.amp_on = level != "O0" and on_gpu
        self.amp_note = None
        if level != "O0" and not on_gpu:  # logged once the run's log file exists
            self.amp_note = f"--amp {level} asked for but running on {paddle.get_device()}: AMP is GPU-only, training in float32"
        self.scaler = None
        # One set of auto_cast arguments for the training step and for evaluation: O2 weights are
        # float16/bfloat16, and evaluating them on float32 inputs outside auto_cast fails.
        self.amp_args = {"enable": self.amp_on, "level": level, "dtype": dtype}
        if self.amp_on:
            dist.check_amp_dtype(dtype)
            if level == "O2":
                # Checkpoints stay float32 all the same: checkpoint.float32_state_dict saves the
                # optimiser's float32 master weights (decorate's save_dtype would only cast the
                # rounded 16-bit weights back).
                self.model, self.optimizer = paddle.amp.decorate(models=self.model, optimizers=self.optimizer,
                                                                 level="O2", dtype=dtype)
            if dtype == "float16":  # bf16 has float32's range: no loss scaling needed
                self.scaler = paddle.amp.GradScaler(init_loss_scaling=2.0 ** 15)

    def _resume(self, path: str) -> dict[str, Any]:
        state = ckpt.load_checkpoint(path, self.model, self.optimizer)
        self.start_iter = int(state["iteration"])
        self.scheduler.set_state_dict(state["scheduler"])
        self.best = float(state.get("best", math.inf))
        rng = state.get("rng", [])
        if len(rng) == self.world:
            ckpt.restore_rng(rng[self.rank])
        else:
            logger.warning("%s: saved with %d processes, resumed with %d: random streams restart", path, len(rng), self.world)
        return state

    def _vdl_writer(self):
        from visualdl import LogWriter  # optional at import time: only --use_vdl needs it

        return LogWriter(logdir=os.path.join(self.opts.save_dir, "vdl"))

    def _train_state(self) -> dict[str, Any]:
        rng = dist.all_gather_objects(ckpt.capture_rng())  # every rank's stream, for exact resume
        return {"scheduler": self.scheduler.state_dict(), "best": self.best, "rng": rng,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None, "seed": self.opts.seed,
                "world_size": self.world}

    def _step(self, batch: dict[str, Any]) -> tuple[paddle.Tensor, list[paddle.Tensor]]:
        """One optimiser step. The loss stays on the device: reading it back every step would make
        the host wait for the GPU each iteration; :meth:`_flush` checks it every ``log_iters``."""
        with paddle.amp.auto_cast(**self.amp_args):
            batch = to_model_input(batch)  # augment_on_device: warp + normalise here
            outputs = self.model(batch["image"], batch["mask"])
        loss, parts = self.loss_fn(outputs, batch["label"], batch["mask"])
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.optimizer.clear_grad()
        self.scheduler.step()
        return loss.detach(), [p.detach() for p in parts]

    def _flush(self, pending: list[tuple[int, float, paddle.Tensor, list[str]]], history: Any,
               last_ckpt: str | None) -> list[float]:
        """The losses of the steps since the last flush, averaged over ranks in one all-reduce and
        one copy to the host; written to the history, and training stops (on every rank alike) at
        the first non-finite one. A flush precedes every save, so no checkpoint holds a diverged model."""
        if not pending:
            return []
        values = dist.mean_across_ranks(paddle.stack([loss.reshape([]) for _, _, loss, _ in pending]))
        for (iteration, lr, _, series), value in zip(pending, values):
            if not math.isfinite(value):
                raise NonFiniteLossError(f"non-finite loss ({value}) at iteration {iteration} (lr {lr:.3e}, series "
                                         f"{', '.join(series)}); stopping, last checkpoint: {last_ckpt or 'none'}")
            if history:
                history.write(f"{iteration},{float(value)!r}\n")
        if history:
            history.flush()
        pending.clear()
        return [float(v) for v in values]

    def _batches(self, iteration: int):
        """Batches from ``iteration`` (0-based) on, across epoch boundaries."""
        per_epoch = len(self.sampler)
        if per_epoch == 0:
            raise ValueError("the training set gives no batch (fewer series than one batch per process)")
        epoch, skip = divmod(iteration, per_epoch)
        while True:
            self.sampler.set_epoch(epoch, skip)
            with loaders.worker_batches(self.loader) as batches:  # closing this generator stops the workers
                yield from ((epoch, batch) for batch in batches)
            epoch, skip = epoch + 1, 0

    def _history(self) -> Any:
        """``loss_history.csv`` (rank 0): one line per iteration; rows after a resume point are dropped."""
        path = os.path.join(self.opts.save_dir, LOSS_HISTORY)
        kept = ["iteration,loss\n"]
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as fh:
                kept += [ln for ln in fh.readlines()[1:] if ln.strip() and int(ln.split(",")[0]) <= self.start_iter]
        atomic_write_text(path, "".join(kept))
        return open(path, "a", encoding="utf-8")

    def run(self) -> dict[str, Any]:
        opts = self.opts
        if self.start_iter >= self.iters:
            logger.info("checkpoint is at iteration %d >= iters %d: nothing to train", self.start_iter, self.iters)
            return {"iteration": self.start_iter, "checksum": parameter_checksum(self.model)}
        logger.info("training %d iterations from %d: %d series, batch %d series x %d process(es), %d batches/epoch",
                    self.iters, self.start_iter, len(self.train_dataset), self.batch_size, self.world, len(self.sampler))
        logger.info("global batch %d series per step (%d per process x %d processes); learning rate x %g (--scale_lr %s); "
                    "%d loader worker(s) per process", self.batch_size * self.world, self.batch_size, self.world,
                    self.lr_factor, opts.scale_lr, self.num_workers)
        history = self._history() if dist.is_main() else None
        dist.set_train_mode(self.model, True)
        pending: list[tuple[int, float, paddle.Tensor, list[str]]] = []
        window: list[float] = []
        reader_cost = batch_cost = 0.0
        last_ckpt, last_metrics = None, None
        timed_slices, timed_seconds = 0, 0.0  # throughput after the first step (which builds kernels and caches)
        batches = self._batches(self.start_iter)
        tic = time.time()
        try:
            for iteration, (epoch, batch) in enumerate(batches, start=self.start_iter + 1):
                reader_cost += time.time() - tic
                lr = self.optimizer.get_lr()
                loss, parts = self._step(batch)
                pending.append((iteration, lr, loss, list(batch["series_id"])))
                log_now = iteration % opts.log_iters == 0 or iteration == self.iters
                save_now = iteration % opts.save_interval == 0 or iteration == self.iters
                if log_now or save_now:
                    window += self._flush(pending, history, last_ckpt)  # waits for the device
                step_time = time.time() - tic  # costs of a window add up to its wall time
                batch_cost += step_time
                if iteration > self.start_iter + 1:
                    timed_slices += sum(len(ids) for ids in batch["slice_ids"])
                    timed_seconds += step_time
                if log_now:
                    self._log(iteration, epoch, window, [float(p) for p in parts], lr, reader_cost, batch_cost)
                    window, reader_cost, batch_cost = [], 0.0, 0.0
                if save_now:
                    if self.val_dataset is not None:
                        last_metrics = self._evaluate(iteration)
                    last_ckpt = self._save(iteration)
                if iteration >= self.iters:
                    break
                tic = time.time()
        finally:
            batches.close()  # stops the loader's workers now, mid-epoch, not at interpreter exit
            if history:
                history.close()
            if self.vdl is not None:
                self.vdl.close()
        checksum = parameter_checksum(self.model)
        logger.info("finished at iteration %d; parameter checksum (rank %d): %s", self.iters, self.rank, checksum)
        return {"iteration": self.iters, "checkpoint": last_ckpt, "metrics": last_metrics, "best": self.best,
                "checksum": checksum, "slices_per_s": timed_slices / timed_seconds if timed_seconds > 0 else None,
                "peak_gpu_mb": peak_gpu_memory_mb()}

    def _log(self, iteration, epoch, window, parts, lr, reader_cost, batch_cost) -> None:
        n = max(len(window), 1)
        avg_loss, avg_batch = sum(window) / n, batch_cost / n
        eta = timedelta(seconds=int(avg_batch * (self.iters - iteration)))
        part_text = "/".join(f"{p:.4f}" for p in parts)
        logger.info("[TRAIN] iter %d/%d epoch %d loss %.5f (parts %s) lr %.3e batch_cost %.3f s reader_cost %.4f s ETA %s",
                    iteration, self.iters, epoch + 1, avg_loss, part_text, lr, avg_batch, reader_cost / n, eta)
        if self.vdl is not None:
            for tag, value in (("Train/loss", avg_loss), ("Train/lr", lr), ("Train/batch_cost", avg_batch),
                               ("Train/reader_cost", reader_cost / n)):
                self.vdl.add_scalar(tag, value, iteration)

    def _evaluate(self, iteration: int) -> dict[str, float]:
        metrics, _ = evaluate(self.model, self.val_dataset, self.metric, batch_size=self.batch_size,
                              num_workers=self.num_workers, amp=self.amp_args)
        score = metrics[self.metric.key]
        if score < self.best:
            self.best = score
            if dist.is_main():
                path = ckpt.save_best(self.opts.save_dir, dist.unwrap_model(self.model), iteration, metrics,
                                      self.optimizer)
                logger.info("[EVAL] new best %s %.5f at iteration %d -> %s", self.metric.key, score, iteration, path)
        if self.vdl is not None:
            for key in (self.metric.key, "mean_auc"):
                self.vdl.add_scalar(f"Evaluate/{key}", metrics[key], iteration)
        dist.set_train_mode(self.model, True)
        return metrics

    def _save(self, iteration: int) -> str:
        state = self._train_state()
        path = os.path.join(self.opts.save_dir, f"iter_{iteration}")
        if dist.is_main():
            ckpt.save_checkpoint(self.opts.save_dir, iteration, dist.unwrap_model(self.model), self.optimizer, state,
                                 self.opts.keep_checkpoint_max, self.opts.keep_checkpoint_iter)
            logger.info("saved %s", path)
        return path


def peak_gpu_memory_mb() -> float | None:
    """Peak memory Paddle's allocator handed out on this process's GPU (None on the CPU)."""
    if not (paddle.is_compiled_with_cuda() and paddle.get_device().startswith("gpu")):
        return None
    return paddle.device.cuda.max_memory_allocated() / 2**20


def lr_scale_factor(rule: str, world_size: int) -> float:
    """``--scale_lr``: the config's learning rate is for one process; with N processes a step sees
    N × batch_size series. ``linear`` multiplies the rate by N (Goyal et al. 2017, for SGD),
    ``sqrt`` by √N (often better for Adam-type optimisers), ``none`` keeps it."""
    rules = {"none": 1.0, "linear": float(world_size), "sqrt": math.sqrt(world_size)}
    if rule not in rules:
        raise ValueError(f"--scale_lr must be one of {sorted(rules)}, got {rule!r}")
    return rules[rule]


def train(cfg: Config, opts: TrainOptions) -> dict[str, Any]:
    return Trainer(cfg, opts).run()
