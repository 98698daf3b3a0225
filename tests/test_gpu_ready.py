"""Single-process checks of the GPU-cluster logic: device refusals, AMP O2 checkpoints and
evaluation, the loss check every log_iters, loader defaults, learning-rate scaling."""

import logging
import os

import numpy as np
import paddle
import pytest

from engine_fixtures import make_prepared, write_config
from medseg.config import Config
from medseg.data.build import build_dataset
from medseg.engine import checkpoint as ckpt
from medseg.engine import distributed as dist
from medseg.engine import loader as loaders
from medseg.engine.trainer import TrainOptions, Trainer, lr_scale_factor
from medseg.models.classifier import ICHSequenceClassifier
from medseg.tools import train


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    base = tmp_path_factory.mktemp("ready")
    root = make_prepared(str(base / "data"), {"train": 4, "val": 2, "test": 2}, size=40)
    return write_config(str(base / "cfg.yml"), root, size=32, iters=6, batch_size=1)


def test_a_cpu_paddle_is_refused_where_a_gpu_one_was_meant():
    with pytest.raises(dist.DeviceError, match="paddlepaddle-gpu is installed"):
        dist.check_paddle_build(False, {"paddlepaddle", "paddlepaddle-gpu"}, None)
    with pytest.raises(dist.DeviceError, match="CUDA_VISIBLE_DEVICES=0,1 asks for GPUs"):
        dist.check_paddle_build(False, {"paddlepaddle"}, "0,1")
    dist.check_paddle_build(False, {"paddlepaddle"}, None)  # a CPU machine
    dist.check_paddle_build(False, {"paddlepaddle"}, "-1")
    dist.check_paddle_build(True, {"paddlepaddle", "paddlepaddle-gpu"}, "0")  # the GPU build won
    dist.check_paddle_build()  # this machine: CPU wheel only


def test_bfloat16_needs_compute_capability_8():
    with pytest.raises(dist.DeviceError, match="compute capability >= 8.0, this one is 7.5"):
        dist.check_amp_dtype("bfloat16", (7, 5))
    dist.check_amp_dtype("bfloat16", (8, 0))
    dist.check_amp_dtype("float16", (7, 0))


def test_learning_rate_scaling_rules(cfg, tmp_path, monkeypatch):
    assert lr_scale_factor("none", 8) == 1.0 and lr_scale_factor("linear", 8) == 8.0
    assert lr_scale_factor("sqrt", 4) == 2.0
    with pytest.raises(ValueError, match="--scale_lr"):
        lr_scale_factor("cubic", 2)
    monkeypatch.setattr(dist, "get_world_size", lambda: 4)  # as if 4 processes: only the scheduler is looked at
    trainer = Trainer(Config(cfg), TrainOptions(save_dir=str(tmp_path / "lr"), scale_lr="linear", num_workers=0))
    assert trainer.scheduler.base_lr == pytest.approx(4 * 0.05)


def test_default_workers_follow_the_cores_per_process():
    assert loaders.default_num_workers(cores=2, local_world=1) == 1
    assert loaders.default_num_workers(cores=2, local_world=2) == 0  # one core each: load in the process
    assert loaders.default_num_workers(cores=64, local_world=8) == 7
    assert loaders.default_num_workers(cores=128, local_world=1) == loaders.MAX_AUTO_WORKERS
    assert loaders.default_num_workers() >= 0


def test_workers_use_one_opencv_thread():
    cv2 = pytest.importorskip("cv2")
    before = cv2.getNumThreads()
    try:
        cv2.setNumThreads(4)
        loaders.worker_init(0)
        assert cv2.getNumThreads() == 1
    finally:
        cv2.setNumThreads(before)


def test_a_small_dev_shm_is_refused_with_what_to_do():
    mb = 2**20
    with pytest.raises(loaders.SharedMemoryError) as err:
        loaders.check_shared_memory(4, 36 * mb, free=64 * mb)
    message = str(err.value)
    assert "64 MB free" in message and "288 MB" in message and "--shm-size" in message and "--num_workers" in message
    loaders.check_shared_memory(0, 36 * mb, free=0)  # no workers: no shared memory
    loaders.check_shared_memory(4, 36 * mb, free=300 * mb)


def test_batch_bytes_counts_the_longest_series(cfg):
    dataset = build_dataset(Config(cfg), "val_dataset")
    item = dataset[(0, 0)]
    assert item["image"].dtype == np.uint8  # uint8 slices travel; the batch step normalises them
    slices = len(item["slice_ids"])
    per_slice = (item["image"].nbytes + item["label"].nbytes + slices + item["norm"].nbytes) / slices  # + the mask bytes
    longest = max(dataset.num_slices(i) for i in range(len(dataset)))
    assert loaders.batch_nbytes(dataset, 2) == int(per_slice * longest * 2)


def test_the_train_cli_reports_a_small_dev_shm_in_one_line(cfg, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(loaders.shutil, "disk_usage", lambda path: type("U", (), {"free": 1024})())
    assert train.main(["--config", cfg, "--save_dir", str(tmp_path / "shm"), "--num_workers", "2"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "/dev/shm" in err[0] and "--shm-size" in err[0]
    assert train.main(["--config", cfg, "--save_dir", str(tmp_path / "shm2"), "--num_workers", "2",
                       "--no_shared_memory", "--iters", "1"]) == 0


def test_checkpoints_are_saved_in_float32(tmp_path):
    paddle.seed(0)
    model = paddle.nn.Sequential(paddle.nn.Linear(4, 3), paddle.nn.BatchNorm1D(3))
    reference = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    model.to(dtype="float16")  # what paddle.amp.decorate(level="O2") does to the weights
    ckpt.save_best(str(tmp_path), model, 1, {})
    saved = paddle.load(str(tmp_path / ckpt.BEST_DIR / ckpt.MODEL_FILE))
    assert {str(v.dtype) for v in saved.values()} == {"paddle.float32"}
    for key, value in saved.items():
        np.testing.assert_array_equal(value.numpy(), reference[key].astype(np.float16).astype(np.float32))
    # A float32 master copy kept by the optimiser is saved instead of the rounded weight.
    weight = model[0].weight
    master = paddle.to_tensor(reference["0.weight"])
    fake_optimizer = type("Opt", (), {"_master_weights": {weight.name: master}})()
    state = ckpt.float32_state_dict(model, fake_optimizer)
    np.testing.assert_array_equal(state["0.weight"].numpy(), reference["0.weight"])


def test_a_float16_checkpoint_loads_into_a_float32_model_with_a_report(tmp_path, caplog):
    paddle.seed(0)
    source = paddle.nn.Linear(4, 3)
    half = {k: v.astype("float16") for k, v in source.state_dict().items()}
    path = str(tmp_path / "half.pdparams")
    paddle.save(half, path)
    target = paddle.nn.Linear(4, 3)
    with caplog.at_level(logging.INFO, logger="medseg"):
        ckpt.load_params(path, target)
    for key, value in target.state_dict().items():
        assert value.dtype == paddle.float32
        np.testing.assert_array_equal(value.numpy(), half[key].astype("float32").numpy())
    assert "cast 2 tensors float16 -> float32" in caplog.text


def test_evaluation_runs_under_the_training_auto_cast(cfg, tmp_path, monkeypatch):
    trainer = Trainer(Config(cfg, ["iters=1"]), TrainOptions(save_dir=str(tmp_path / "amp"), do_eval=True, num_workers=0))
    trainer.amp_args = {"enable": True, "level": "O2", "dtype": "bfloat16"}  # as on an Ampere GPU with --amp O2
    calls = []
    real = paddle.amp.auto_cast

    def recording(**kwargs):
        calls.append(kwargs)
        return real(enable=False)  # the CPU cannot run O2; the arguments are what is checked

    monkeypatch.setattr(paddle.amp, "auto_cast", recording)
    trainer.run()
    assert len(calls) >= 2 and all(c == trainer.amp_args for c in calls)  # 1 train step + 2 val series


def test_a_resume_restores_before_amp_decorates(cfg, tmp_path, monkeypatch):
    save = tmp_path / "order"
    assert train.main(["--config", cfg, "--save_dir", str(save), "--iters", "1", "--num_workers", "0"]) == 0
    order = []
    monkeypatch.setattr(Trainer, "_resume", lambda self, path: order.append("resume") or {})
    real_setup = Trainer._setup_amp
    monkeypatch.setattr(Trainer, "_setup_amp", lambda self: order.append("amp") or real_setup(self))
    Trainer(Config(cfg), TrainOptions(save_dir=str(save), resume_model=str(save / "iter_1"), num_workers=0))
    assert order == ["resume", "amp"]


def test_losses_are_read_back_once_per_log_interval(cfg, tmp_path, monkeypatch):
    reads = []
    real = dist.mean_across_ranks
    monkeypatch.setattr(dist, "mean_across_ranks", lambda values: reads.append(int(values.shape[0])) or real(values))
    assert train.main(["--config", cfg, "--save_dir", str(tmp_path / "sync"), "--log_iters", "3",
                       "--save_interval", "100", "--num_workers", "0"]) == 0
    assert reads == [3, 3]  # 6 iterations: two host reads of 3 losses each, not 6 reads
    history = (tmp_path / "sync" / "loss_history.csv").read_text().splitlines()
    assert [ln.split(",")[0] for ln in history[1:]] == ["1", "2", "3", "4", "5", "6"]


def test_a_non_finite_loss_between_log_points_names_its_iteration(cfg, tmp_path, capsys):
    assert train.main(["--config", cfg, "--save_dir", str(tmp_path / "nan"), "--log_iters", "4", "--save_interval", "2",
                       "--num_workers", "0", "-o", "train_dataset.split=test"]) == 3
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "non-finite loss" in err[0] and "iteration 1 " in err[0]
    assert not [p for p in os.listdir(tmp_path / "nan") if p.startswith("iter_")]  # the save at 2 flushed first


def test_a_frozen_encoder_stays_in_eval_mode_when_a_wrapper_sets_training_directly():
    model = ICHSequenceClassifier(encoder={"type": "CNNEncoder", "arch": "mobilenet_v3_small", "scale": 0.5},
                                  head={"type": "BiGRUSequenceHead", "hidden_size": 8, "num_layers": 1},
                                  freeze_encoder=True)
    before = {k: v.numpy().copy() for k, v in model.encoder.state_dict().items()}
    for layer in (model, *model.sublayers()):  # what paddle.DataParallel.train() does
        layer.training = True
    model(paddle.rand([1, 3, 3, 32, 32]), paddle.ones([1, 3], dtype="bool"))
    assert not any(layer.training for layer in model.encoder.sublayers())
    for key, value in model.encoder.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), before[key], err_msg=key)
    dist.set_train_mode(model, True)
    assert model.training and model.head.training and not model.encoder.training


def test_batch_bytes_of_items_augmented_on_the_device(cfg):
    dataset = build_dataset(Config(cfg, ["val_dataset.augment_on_device=true"]), "val_dataset")
    batch = loaders.collate_series([dataset[(0, 0)]])
    assert batch["image"].dtype == np.uint8  # crops travel as uint8: far fewer bytes than float32 slices
    per_slice = sum(v.nbytes for v in batch.values() if isinstance(v, np.ndarray)) / len(batch["slice_ids"][0])
    longest = max(dataset.num_slices(i) for i in range(len(dataset)))
    assert loaders.batch_nbytes(dataset, 1) == int(per_slice * longest)
    cpu = build_dataset(Config(cfg), "val_dataset")
    assert loaders.collate_series([cpu[(0, 0)]])["image"].dtype == np.uint8  # the CPU path's slices too


def test_loader_workers_stop_when_training_and_every_evaluation_end(cfg, tmp_path):
    """Each evaluation used to leave its loader's worker process alive until interpreter exit
    (the loop stops at the last key, before the iterator runs out); so did training's last epoch."""
    import psutil

    from medseg.engine.evaluator import predict_shard

    me = psutil.Process()

    def live_children() -> int:
        return sum(1 for c in me.children() if c.is_running() and c.status() != psutil.STATUS_ZOMBIE)

    before = live_children()
    config = Config(cfg)
    model = config.build("model")
    dataset = build_dataset(config, "val_dataset")
    for _ in range(3):
        assert len(predict_shard(model, dataset, num_workers=1, progress=False)) == len(dataset)
        assert live_children() == before
    Trainer(config, TrainOptions(save_dir=str(tmp_path / "workers"), num_workers=1, do_eval=True, save_interval=3)).run()
    assert live_children() == before
