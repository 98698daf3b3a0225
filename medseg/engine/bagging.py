"""``train.py --bag N`` (or the config's ``bag: N``): N sequence heads trained with seeds
``seed … seed + N - 1`` on one frozen encoder, assembled into one model whose head is a
:class:`~medseg.models.heads.bagged.BaggedSequenceHead` (their logits averaged).

Layout of ``save_dir``: ``bag_<i>/`` is member i's ordinary run (log, checkpoints, ``best_model/``
with ``--do_eval``); ``bagged/`` holds the assembled ``model.pdparams``, its ``config.yml`` and ``bag.json`` (the
members, their seeds and, with ``--do_eval``, the bag's validation metrics). Each member
contributes its ``best_model/`` when there is one, else its last checkpoint. The members share the encoder's
tensors (frozen, loaded from the same weights); a slice head trained on saved embeddings
(``freeze_encoder: false`` with a precomputed encoder) is linear, so its weights are averaged,
which averages its logits. Any other encoder tensor that differs between members is refused:
the bag has one encoder.
"""

from __future__ import annotations

import copy
import os
from dataclasses import replace
from typing import Any

import numpy as np
import paddle

from medseg.config import Config
from medseg.constants import LABELS
from medseg.data.build import build_dataset
from medseg.engine import checkpoint as ckpt
from medseg.engine import distributed as dist
from medseg.engine.evaluator import predict_dataset
from medseg.engine.metrics import WeightedLogLoss
from medseg.engine.trainer import TrainOptions, train
from medseg.utils.atomic import atomic_write_json, atomic_write_text, staged_dir
from medseg.utils.logger import get_logger

logger = get_logger("bagging")
BAG_DIR = "bagged"
CONFIG_FILE = "config.yml"


def bag_size(cfg: Config, flag: int | None) -> int:
    """``--bag`` over the config's ``bag`` (default 1: no bag)."""
    value = flag if flag is not None else cfg.get("bag", 1)
    if value is None:
        value = 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{cfg.path or '<config>'}: bag must be a positive number of heads, got {value!r}")
    return int(value)


def bag_config(cfg: Config, n: int) -> dict[str, Any]:
    """The config of the assembled model: the head section as a bag of ``n`` copies."""
    out = copy.deepcopy(cfg.dict)
    out.pop("bag", None)
    model = out["model"]
    if model.get("sequential", True) is False:
        raise ValueError(f"{cfg.path or '<config>'}: --bag averages sequence heads; this model has none (sequential: false)")
    head = copy.deepcopy(model.get("head") or {"type": "TransformerSequenceHead"})
    model["head"] = {"type": "BaggedSequenceHead", "heads": [copy.deepcopy(head) for _ in range(n)]}
    return out


def member_checkpoint(save_dir: str) -> str:
    best = os.path.join(save_dir, ckpt.BEST_DIR)
    if os.path.isfile(os.path.join(best, ckpt.MODEL_FILE)):
        return best
    found = ckpt.list_checkpoints(save_dir)
    if not found:
        raise ckpt.CheckpointError(f"{save_dir}: no checkpoint to take into the bag")
    return found[-1][1]


def assemble(paths: list[str]) -> dict[str, np.ndarray]:
    """The members' state dicts → the bag's: ``head.*`` of member i as ``head.members.<i>.*``,
    the shared encoder once (a differing linear slice head averaged)."""
    states = [paddle.load(os.path.join(p, ckpt.MODEL_FILE), return_numpy=True) for p in paths]
    keys = set(states[0])
    for path, state in zip(paths[1:], states[1:]):
        if set(state) != keys:
            raise ckpt.CheckpointError(f"{path}: its tensors are not those of {paths[0]} (members of one bag share a config)")
    out: dict[str, np.ndarray] = {}
    for key in sorted(keys):
        values = [np.asarray(s[key]) for s in states]
        if key.startswith("head."):
            for i, value in enumerate(values):
                out[f"head.members.{i}.{key[len('head.'):]}"] = value
        elif all(np.array_equal(values[0], v) for v in values[1:]):
            out[key] = values[0]
        elif key.startswith("encoder.head."):
            out[key] = np.mean(np.stack(values), axis=0).astype(values[0].dtype)
        else:
            raise ckpt.CheckpointError(f"{paths[1]}: {key} differs between the members; a bag shares one encoder "
                                       "(freeze_encoder: true)")
    return out


def train_bag(cfg: Config, opts: TrainOptions, n: int) -> dict[str, Any]:
    """Train the ``n`` members one after the other, then (rank 0) write ``save_dir/bagged/``."""
    if opts.resume_model:
        raise ValueError("--bag trains its members from the start; resume a member with train.py --save_dir SAVE/bag_<i> instead")
    bag_cfg = Config(None, data=bag_config(cfg, n))  # refused before any training when the model has no head
    results, paths = [], []
    for i in range(n):
        member = replace(opts, seed=opts.seed + i, save_dir=os.path.join(opts.save_dir, f"bag_{i}"))
        logger.info("bag member %d/%d: seed %d -> %s", i + 1, n, member.seed, member.save_dir)
        results.append(train(cfg, member))
        paths.append(member_checkpoint(member.save_dir))
    out = os.path.join(opts.save_dir, BAG_DIR)
    metrics = None
    if dist.is_main():
        model = bag_cfg.build("model")
        state = assemble(paths)
        missing = sorted(set(model.state_dict()) - set(state))
        if missing:
            raise ckpt.CheckpointError(f"{paths[0]}: no {missing[0]} for the bag")
        model.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
        record: dict[str, Any] = {"members": [os.path.abspath(p) for p in paths], "seeds": [opts.seed + i for i in range(n)]}
        if opts.do_eval:  # this process only (the other ranks are done): no collective
            metric = bag_cfg.build("metric") if "metric" in bag_cfg else WeightedLogLoss()
            frame, labels = predict_dataset(model, build_dataset(bag_cfg, "val_dataset"),
                                            batch_size=int(cfg.get("batch_size", 1)), sharded=False)
            metrics = metric(labels, frame[list(LABELS)].to_numpy())
            record.update({k: float(v) for k, v in metrics.items() if np.isscalar(v)})
        with staged_dir(out) as tmp:
            paddle.save(model.state_dict(), os.path.join(tmp, ckpt.MODEL_FILE))
            atomic_write_text(os.path.join(tmp, CONFIG_FILE), bag_cfg.dump())
            atomic_write_json(os.path.join(tmp, "bag.json"), record)
        logger.info("bag of %d heads -> %s%s", n, out, f" (validation {metric.key} {metrics[metric.key]:.5f})" if metrics else "")
    dist.barrier()
    return {"checkpoint": out, "members": results, "metrics": metrics}
