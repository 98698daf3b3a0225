"""Saved slice embeddings (medseg.tools.embed), a stage 2 trained on them, the joined model, bagging."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import paddle
import pytest

from engine_fixtures import make_prepared
from predict_fixtures import ROOT, write_checkpoint, write_config
from medseg.config import Config
from medseg.constants import LABELS
from medseg.data import embeddings_extract
from medseg.data.build import build_eval_dataset
from medseg.data.collate import collate_series
from medseg.data.device_augment import to_model_input
from medseg.data.embeddings import RSNAEmbeddingDataset, read_split
from medseg.engine import checkpoint as ckpt
from medseg.engine.evaluator import predict_dataset
from medseg.models.outputs import prediction_logits
from medseg.tools import embed as embed_tool
from medseg.tools import infer as infer_tool
from medseg.tools import train as train_tool

# The frozen-encoder stage 2 of config/demo_cpu.yml at toy size: a BiGRU head, residual, frozen encoder.
HEAD = ("  freeze_encoder: true\n  residual: true\n"
        "  head: {_inherited_: false, type: BiGRUSequenceHead, hidden_size: 16, num_layers: 1, feature_norm: true}\n")
FEATURE_DIM = 576  # mobilenet_v3_small


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A prepared dataset, the image config and an (untrained) stage-1 checkpoint, train + val embedded."""
    base = tmp_path_factory.mktemp("embeddings")
    root = make_prepared(str(base / "prepared"), {"train": 4, "val": 3}, size=40)
    image = write_config(str(base / "image.yml"), model=HEAD)
    data = [f"val_dataset.dataset_root={root}"]
    stage1 = stage1_checkpoint(image, data, str(base / "stage1"))
    out = str(base / "emb")
    assert embed_tool.main(["--config", image, *sum((["-o", d] for d in data), []), "--model", stage1, "--split", "train",
                            "--split", "val", "--out", out, "--num_workers", "0", "--no_progress"]) == 0
    return {"base": base, "root": root, "image": image, "data": data, "stage1": stage1, "emb": out}


def stage1_checkpoint(image: str, data: list[str], folder: str, seed: int = 3) -> str:
    """Untrained weights whose BatchNorm statistics follow the data (training-mode passes without
    gradients): features of the size a trained encoder gives, not the ~1e-7 of a fresh MobileNet."""
    write_checkpoint(image, folder, seed)
    cfg = Config(image, data)
    model = cfg.build("model")
    ckpt.load_params(folder, model, strict=True)
    images = build_eval_dataset(cfg, "train")
    batch = to_model_input(collate_series([images[i] for i in range(len(images))]))
    for layer in (model.encoder, *model.encoder.sublayers()):  # the classifier keeps a frozen encoder in eval mode
        layer.training = True
        if isinstance(layer, paddle.nn.layer.norm._BatchNormBase):
            layer._momentum = 0.0  # running statistics := this pass's
    with paddle.no_grad():
        model.encoder.encode_series(batch["image"], paddle.to_tensor(batch["mask"]))
    paddle.save(model.state_dict(), os.path.join(folder, "model.pdparams"))
    return folder


def embed_args(s: dict, out: str, *extra: str) -> list[str]:
    return ["--config", s["image"], "-o", s["data"][0], "--model", s["stage1"], "--out", out, "--num_workers", "0",
            "--no_progress", *extra]


def write_head_config(s: dict, name: str, train_emb: str | None = None, val_emb: str | None = None, iters: int = 4) -> str:
    """The stage 2 on embeddings: the image config's model with a precomputed encoder."""
    path = str(s["base"] / name)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f"""\
_base_: [{s['image']}, {ROOT}/config/_base_/loss_paper.yml]
batch_size: 2
iters: {iters}
model:
  encoder: {{_inherited_: false, type: PrecomputedEncoder, feature_dim: {FEATURE_DIM}}}
train_dataset: {{type: RSNAEmbeddingDataset, embeddings: {train_emb or s['emb']}, split: train}}
val_dataset: {{_inherited_: false, type: RSNAEmbeddingDataset, embeddings: {val_emb or s['emb']}, split: val}}
optimizer: {{type: AdamW, weight_decay: 1.0e-4}}
lr_scheduler: {{type: WarmupCosine, learning_rate: 3.0e-3, warmup_iters: 1}}
""")
    return path


def train_head(s: dict, config: str, save_dir: str, *extra: str, pretrained: str | None = None) -> int:
    return train_tool.main(["--config", config, "--pretrained", pretrained or s["stage1"], "--save_dir", save_dir,
                            "--num_workers", "0", "--save_interval", "2", "--log_iters", "2", *extra])


@pytest.fixture(scope="module")
def trained(setup):
    """A head trained on the embeddings (4 steps, evaluated: best_model/)."""
    config = write_head_config(setup, "head.yml")
    save = str(setup["base"] / "head")
    assert train_head(setup, config, save, "--do_eval") == 0
    return {"config": config, "save": save}


def image_model(s: dict) -> tuple[Config, paddle.nn.Layer]:
    cfg = Config(s["image"], s["data"])
    model = cfg.build("model")
    ckpt.load_params(s["stage1"], model, strict=True)
    model.eval()
    return cfg, model


def encoder_features(model, dataset, index: int, flip: bool = False) -> np.ndarray:
    batch = to_model_input(collate_series([dataset[index]]))
    image = batch["image"] if isinstance(batch["image"], paddle.Tensor) else paddle.to_tensor(batch["image"])
    if flip:
        image = paddle.flip(image, axis=[4])
    with paddle.no_grad():
        return model.encoder.encode_series(image, paddle.to_tensor(batch["mask"]))[0].numpy()


def test_saved_embeddings_equal_the_encoder_features(setup):
    cfg, model = image_model(setup)
    images = build_eval_dataset(cfg, "val")
    saved = RSNAEmbeddingDataset(setup["emb"], "val")
    split = read_split(setup["emb"], "val")
    assert saved.series_ids == images.series_ids and saved.labelled
    assert split.features.dtype == np.float16 and split.features.shape[1] == FEATURE_DIM
    for i in range(len(images)):
        ours, item = encoder_features(model, images, i), saved[i]
        assert item["slice_ids"] == images[i]["slice_ids"]
        np.testing.assert_array_equal(item["label"], images[i]["label"])
        np.testing.assert_allclose(item["image"], ours, rtol=1e-3, atol=1e-3)  # float16 rounding
        rows = slice(split.starts[i], split.ends[i])
        with paddle.no_grad():
            logits = model.encoder.forward_head(paddle.to_tensor(ours)).numpy()
        np.testing.assert_allclose(split.logits[rows], logits, rtol=1e-5, atol=1e-5)
    # With test-time views the features are the mean over the views.
    tta = str(setup["base"] / "emb_tta")
    assert embed_tool.main(embed_args(setup, tta, "--split", "val", "--tta", "identity,hflip")) == 0
    assert json.load(open(os.path.join(tta, "manifest.json")))["tta"] == ["identity", "hflip"]
    averaged = RSNAEmbeddingDataset(tta, "val")
    for i in range(len(images)):
        mean = 0.5 * (encoder_features(model, images, i) + encoder_features(model, images, i, flip=True))
        np.testing.assert_allclose(averaged[i]["image"], mean, rtol=1e-3, atol=1e-3)
        assert np.abs(averaged[i]["image"] - saved[i]["image"]).max() > 1e-2  # the views did change something


def test_shards_are_balanced_by_slices_and_cover_every_series_once():
    lengths = [40, 12, 60, 33, 33, 25, 58, 20]
    shares = [embeddings_extract.shard(lengths, r, 3) for r in range(3)]
    assert sorted(i for share in shares for i in share) == list(range(len(lengths)))
    loads = [sum(lengths[i] for i in share) for share in shares]
    assert max(loads) - min(loads) <= max(lengths) // 2  # longest first to the least loaded: close to even
    assert embeddings_extract.shard(lengths, 0, 1) == list(range(len(lengths)))


@pytest.mark.slow  # two processes (paddle.distributed.launch, gloo)
def test_two_launched_processes_write_the_single_process_embeddings(setup, tmp_path):
    import subprocess
    import sys

    out = str(tmp_path / "emb2")
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(tmp_path / "logs"),
           os.path.join(ROOT, "medseg", "tools", "embed.py"), *embed_args(setup, out, "--split", "train", "--split", "val")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in dict(os.environ, OMP_NUM_THREADS="1").items() if k != "CUDA_VISIBLE_DEVICES"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for split in ("train", "val"):
        ours, single = read_split(out, split), read_split(setup["emb"], split)
        assert list(ours.slice_ids) == list(single.slice_ids)
        np.testing.assert_array_equal(np.asarray(ours.features), np.asarray(single.features))
        np.testing.assert_array_equal(np.asarray(ours.logits), np.asarray(single.logits))
    assert "embed train:" in (tmp_path / "logs" / "workerlog.0").read_text()
    assert "embed train:" not in (tmp_path / "logs" / "workerlog.1").read_text()  # one report, from rank 0
    assert not os.path.exists(os.path.join(out, ".parts"))


def test_an_interrupted_run_resumes_with_the_unfinished_series(setup, monkeypatch):
    out = str(setup["base"] / "emb_resume")
    calls = []
    real = embeddings_extract._embed_batch

    def counting(model, batch, tta):
        calls.append(batch["series_id"][0])
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed while the third series runs
        return real(model, batch, tta)

    monkeypatch.setattr(embeddings_extract, "_embed_batch", counting)
    assert embed_tool.main(embed_args(setup, out, "--split", "train")) == 130
    assert not os.path.isdir(os.path.join(out, "train")) and len(os.listdir(os.path.join(out, ".parts", "train"))) == 3  # 2 + record
    first = list(calls[:2])
    calls.clear()
    monkeypatch.setattr(embeddings_extract, "_embed_batch", lambda *a: (calls.append(a[1]["series_id"][0]), real(*a))[1])
    assert embed_tool.main(embed_args(setup, out, "--split", "train")) == 0
    assert len(calls) == 2 and not set(calls) & set(first)  # only the two unfinished series
    resumed, clean = read_split(out, "train"), read_split(setup["emb"], "train")
    np.testing.assert_array_equal(resumed.features, clean.features)
    np.testing.assert_array_equal(resumed.slice_ids, clean.slice_ids)
    assert not os.path.exists(os.path.join(out, ".parts"))
    calls.clear()
    assert embed_tool.main(embed_args(setup, out, "--split", "train")) == 0 and calls == []  # finished: nothing to do


def test_another_encoder_or_geometry_is_refused_in_one_line(setup, trained, capsys):
    other = stage1_checkpoint(setup["image"], setup["data"], str(setup["base"] / "other_encoder"), seed=4)
    args = embed_args(setup, setup["emb"], "--split", "val")
    assert embed_tool.main([*args[:5], other, *args[6:]]) == 2  # --model replaced
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "manifest.json" in err and "encoder_sha256" in err
    assert embed_tool.main([*args, "--tta", "hflip"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tta" in err
    assert embed_tool.main([*args, "-o", "val_dataset.transforms.0.size=48"]) == 2  # another slice geometry
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "transforms" in err
    # Training: a validation split embedded by another encoder, or another encoder's slice head.
    elsewhere = str(setup["base"] / "emb_other")
    assert embed_tool.main([*embed_args(setup, elsewhere, "--split", "val")[:5], other,
                            *embed_args(setup, elsewhere, "--split", "val")[6:]]) == 0
    mixed = write_head_config(setup, "mixed.yml", val_emb=elsewhere)
    assert train_head(setup, mixed, str(setup["base"] / "mixed"), "--do_eval") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "another encoder or geometry" in err
    assert train_head(setup, trained["config"], str(setup["base"] / "wrong_head"), pretrained=other) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "slice head" in err
    assert not os.path.exists(str(setup["base"] / "wrong_head" / "iter_2"))


def test_train_py_on_embeddings_writes_a_checkpoint_of_the_head(setup, trained):
    save = trained["save"]
    state = paddle.load(os.path.join(save, "iter_4", "model.pdparams"))
    assert set(state) == {k for k in state if k.startswith(("head.", "encoder.head."))} and any(k.startswith("head.gru") for k in state)
    frozen = paddle.load(os.path.join(setup["stage1"], "model.pdparams"))
    np.testing.assert_array_equal(state["encoder.head.weight"].numpy(), frozen["encoder.head.weight"].numpy())
    assert not np.array_equal(state["head.decoder.weight"].numpy(), frozen["head.decoder.weight"].numpy())  # it trained
    history = pd.read_csv(os.path.join(save, "loss_history.csv"))
    assert list(history["iteration"]) == [1, 2, 3, 4] and np.isfinite(history["loss"]).all()
    assert os.path.isfile(os.path.join(save, "best_model", "model.pdparams"))


def test_the_joined_model_predicts_as_the_frozen_encoder_model_with_the_same_weights(setup, trained, capsys):
    joined = str(setup["base"] / "joined")
    assert embed_tool.main(["join", "--head", os.path.join(trained["save"], "best_model"), "--out", joined]) == 0
    # infer.py takes the joined model like any checkpoint
    pred = str(setup["base"] / "joined_val.csv")
    assert infer_tool.main(["--config", os.path.join(joined, "config.yml"), "-o", setup["data"][0], "--resume_model", joined,
                            "--split", "val", "--output", pred, "--num_workers", "0"]) == 0
    ours = pd.read_csv(pred)
    # The two-stage pipeline: the image config's frozen model, stage-1 weights (--pretrained) + the head's.
    cfg, model = image_model(setup)
    ckpt.load_params(os.path.join(trained["save"], "best_model"), model, strict=False)
    frame, _ = predict_dataset(model, build_eval_dataset(cfg, "val"), sharded=False)
    assert list(ours["slice_id"]) == list(frame["slice_id"])
    assert np.abs(ours[list(LABELS)].to_numpy() - frame[list(LABELS)].to_numpy()).max() <= 1e-4
    # and the head on the saved embeddings: up to their float16 rounding, exactly with float32 ones
    head = _load(trained["config"], os.path.join(trained["save"], "best_model"))
    on_embeddings, _ = predict_dataset(head, RSNAEmbeddingDataset(setup["emb"], "val"), sharded=False)
    assert np.abs(on_embeddings[list(LABELS)].to_numpy() - frame[list(LABELS)].to_numpy()).max() <= 1e-3
    exact = str(setup["base"] / "emb_float32")
    assert embed_tool.main(embed_args(setup, exact, "--split", "val", "--dtype", "float32")) == 0
    on_embeddings, _ = predict_dataset(head, RSNAEmbeddingDataset(exact, "val"), sharded=False)
    assert np.abs(on_embeddings[list(LABELS)].to_numpy() - frame[list(LABELS)].to_numpy()).max() <= 1e-4
    # a head joined with an encoder the embeddings were not made with is refused
    other = stage1_checkpoint(setup["image"], setup["data"], str(setup["base"] / "other_for_join"), seed=5)
    assert embed_tool.main(["join", "--head", os.path.join(trained["save"], "best_model"), "--out",
                            str(setup["base"] / "joined_other"), "--encoder", other]) == 2
    assert "not the encoder the embeddings" in capsys.readouterr().err


def test_test_time_views_on_saved_embeddings_are_refused(setup, trained, capsys):
    """A flip of a feature vector is no view of a slice: infer.py --tta on embeddings stops in one line."""
    pred = str(setup["base"] / "tta_on_embeddings.csv")
    assert infer_tool.main(["--config", trained["config"], "--resume_model", os.path.join(trained["save"], "best_model"),
                            "--split", "val", "--output", pred, "--num_workers", "0", "--tta", "identity,hflip"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no test-time views" in err and "medseg-embed --tta" in err
    assert not os.path.exists(pred)


def _load(config: str, path: str, overrides: list[str] | None = None) -> paddle.nn.Layer:
    model = Config(config, overrides or []).build("model")
    ckpt.load_params(path, model, strict=True)
    model.eval()
    return model


def test_bagging_averages_the_heads_logits(setup):
    config = write_head_config(setup, "bag.yml", iters=2)
    save = str(setup["base"] / "bag")
    assert train_head(setup, config, save, "--bag", "2") == 0
    bagged = os.path.join(save, "bagged")
    assert json.load(open(os.path.join(bagged, "bag.json")))["seeds"] == [0, 1]
    bag = _load(os.path.join(bagged, "config.yml"), bagged)
    members = [_load(config, os.path.join(save, f"bag_{i}", "iter_2")) for i in range(2)]
    dataset = RSNAEmbeddingDataset(setup["emb"], "val")
    batch = collate_series([dataset[i] for i in range(len(dataset))])
    image, mask = paddle.to_tensor(batch["image"]), paddle.to_tensor(batch["mask"])
    with paddle.no_grad():
        logits = [prediction_logits(m(image, mask)).numpy() for m in members]
        ours = prediction_logits(bag(image, mask)).numpy()
    assert np.abs(logits[0] - logits[1]).max() > 1e-3  # two seeds, two heads
    np.testing.assert_allclose(ours, 0.5 * (logits[0] + logits[1]), atol=1e-5)
    # the bag joins its encoder like one head
    assert embed_tool.main(["join", "--head", bagged, "--out", str(setup["base"] / "joined_bag")]) == 0
    assert Config(str(setup["base"] / "joined_bag" / "config.yml")).get("model.head.type") == "BaggedSequenceHead"


def test_the_demo_stage_2_config_trains_on_the_demo_encoders_embeddings(tmp_path):
    """config/demo_cpu_embed.yml on embeddings of config/demo_cpu.yml's encoder (the demo's geometry)."""
    root = make_prepared(str(tmp_path / "prepared"), {"train": 2, "val": 2}, size=40, max_slices=4)
    paddle.seed(0)
    stage1 = str(tmp_path / "stage1")
    os.makedirs(stage1)
    paddle.save(Config(os.path.join(ROOT, "config", "demo_cpu_pretrain.yml")).build("model").state_dict(),
                os.path.join(stage1, "model.pdparams"))
    emb = str(tmp_path / "emb")
    assert embed_tool.main(["--config", os.path.join(ROOT, "config", "demo_cpu.yml"), "-o", f"val_dataset.dataset_root={root}",
                            "--model", stage1, "--split", "train", "--split", "val", "--out", emb, "--no_progress"]) == 0
    save = str(tmp_path / "stage2")
    assert train_tool.main(["--config", os.path.join(ROOT, "config", "demo_cpu_embed.yml"), "-o", f"train_dataset.embeddings={emb}",
                            "-o", f"val_dataset.embeddings={emb}", "--pretrained", stage1, "--iters", "2", "--save_dir", save,
                            "--save_interval", "2", "--do_eval"]) == 0
    joined = str(tmp_path / "joined")
    assert embed_tool.main(["join", "--head", os.path.join(save, "best_model"), "--out", joined]) == 0
    cfg = Config(os.path.join(joined, "config.yml"))
    assert cfg.get("model.encoder.type") == "CNNEncoder" and cfg.get("model.head.type") == "BiGRUSequenceHead"
    assert cfg.get("model.freeze_encoder") is True and cfg.get("model.residual") is True and cfg.get("iters") == 2
