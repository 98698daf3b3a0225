"""Engine parts in isolation: losses, optimisers and schedule, checkpoints, evaluator, configs."""

import glob
import math
import os

import numpy as np
import paddle
import pytest

from engine_fixtures import TinySeriesNet
from medseg.config import Config
from medseg.data.dataset import RSNASeriesDataset
from medseg.data.transforms import Normalize, Resize, ToCHW
from medseg.engine import checkpoint as ckpt
from medseg.engine.evaluator import predict_dataset
from medseg.engine.losses import MaskedWeightedBCE, MixedLoss
from medseg.engine.optim import AdamW, Momentum, WarmupCosine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def numpy_bce(logits, labels, weights):
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    bce = -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    return (bce * weights).sum(-1) / weights.sum()


def test_masked_weighted_bce_equals_the_formula_with_soft_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 4, 6)).astype(np.float32)
    labels = rng.uniform(size=(2, 4, 6)).astype(np.float32)  # soft labels
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
    weights = np.array([1, 1, 1, 1, 1, 2.0])
    loss = MaskedWeightedBCE()(paddle.to_tensor(logits), paddle.to_tensor(labels), paddle.to_tensor(mask))
    expected = numpy_bce(logits, labels, weights)[mask].mean()
    assert abs(float(loss) - expected) < 1e-6
    # Padded entries are excluded: garbage there changes nothing.
    logits[~mask] = np.array([1e30, -np.inf, np.nan, 5, 5, 5], np.float32)
    labels[~mask] = 7.0
    again = MaskedWeightedBCE()(paddle.to_tensor(logits), paddle.to_tensor(labels), paddle.to_tensor(mask))
    assert float(again) == pytest.approx(expected, abs=1e-6)
    # The `any` weight counts double.
    only_any = np.zeros((1, 1, 6), np.float32)
    only_any[..., 5] = 3.0
    value = MaskedWeightedBCE()(paddle.to_tensor(only_any), paddle.zeros([1, 1, 6]), paddle.ones([1, 1], dtype="bool"))
    assert float(value) == pytest.approx((math.log(1 + math.exp(3)) * 2 + 5 * math.log(2)) / 7, rel=1e-6)


def test_mixed_loss_coefficients_and_output_count():
    rng = np.random.default_rng(1)
    seq, sl = (paddle.to_tensor(rng.normal(size=(1, 3, 6)).astype(np.float32)) for _ in range(2))
    label, mask = paddle.to_tensor(rng.uniform(size=(1, 3, 6)).astype(np.float32)), paddle.ones([1, 3], dtype="bool")
    mixed = MixedLoss([MaskedWeightedBCE(), MaskedWeightedBCE()], [2, 1])
    total, parts = mixed({"slice": sl, "sequence": seq}, label, mask)  # picked by name, not position
    assert float(total) == pytest.approx(2 * float(MaskedWeightedBCE()(seq, label, mask)) + float(MaskedWeightedBCE()(sl, label, mask)), rel=1e-6)
    assert len(parts) == 2
    with pytest.raises(ValueError, match="no 'sequence' output"):
        mixed({"slice": sl}, label, mask)
    slice_only = MixedLoss([MaskedWeightedBCE()], [1], outputs=["slice"])
    assert float(slice_only({"slice": sl}, label, mask)[0]) == pytest.approx(float(MaskedWeightedBCE()(sl, label, mask)), rel=1e-6)
    with pytest.raises(ValueError, match="name the model output"):
        MixedLoss([MaskedWeightedBCE()], [1])


def test_warmup_cosine_matches_the_closed_form():
    base, warm, total, start, end = 1e-3, 300, 60000, 1e-5, 1e-6
    sched = WarmupCosine(base, total, warm, warmup_start_lr=start, end_lr=end)
    got = []
    for _ in range(total + 5):
        got.append(sched())
        sched.step()
    for t in list(range(0, 310)) + list(range(310, total + 5, 997)) + [total - 1, total, total + 4]:
        if t < warm:
            expected = start + (base - start) * t / warm
        else:
            expected = end + 0.5 * (base - end) * (1 + math.cos(math.pi * min(t - warm, total - warm) / (total - warm)))
        assert got[t] == pytest.approx(expected, rel=1e-12, abs=1e-15), t
    assert got[warm] == pytest.approx(base) and got[total] == pytest.approx(end)
    # State round-trip continues the same sequence.
    other = WarmupCosine(base, total, warm, start, end)
    sched2 = WarmupCosine(base, total, warm, start, end)
    for _ in range(1234):
        sched2.step()
    other.set_state_dict(sched2.state_dict())
    assert other() == got[1234]


def test_optimizers_are_configured_as_asked():
    layer = paddle.nn.Linear(3, 2)
    sgd = Momentum(layer.parameters(), 0.1)
    assert sgd._momentum == 0.9 and sgd._use_nesterov and sgd._regularization_method == "l2_decay" and sgd._regularization_coeff == pytest.approx(1e-4)
    adamw = AdamW(layer.parameters(), 0.1, weight_decay=0.05)
    assert isinstance(adamw, paddle.optimizer.AdamW) and adamw._weight_decay == 0.05


def test_checkpoints_atomic_prune_and_shape_check(tmp_path):
    paddle.seed(0)
    model = TinySeriesNet(width=4)
    opt = Momentum(model.parameters(), 0.1)
    x, mask = paddle.rand([1, 2, 3, 8, 8]), paddle.ones([1, 2], dtype="bool")
    model(x, mask)["sequence"].sum().backward()
    opt.step()  # an optimizer with momentum state to save
    save = str(tmp_path / "run")
    for it in (1, 2, 3, 4, 5):
        ckpt.save_checkpoint(save, it, model, opt, {"scheduler": {}, "rng": [ckpt.capture_rng()]},
                             keep_max=2, keep_iters=[2])
    assert sorted(os.listdir(save)) == ["iter_2", "iter_4", "iter_5"]  # no temp dirs left behind
    clone = TinySeriesNet(width=4)
    state = ckpt.load_checkpoint(os.path.join(save, "iter_5"), clone, Momentum(clone.parameters(), 0.1))
    assert state["iteration"] == 5
    for (k, a), b in zip(model.state_dict().items(), clone.state_dict().values()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=k)
    wider = TinySeriesNet(width=6)
    with pytest.raises(ckpt.CheckpointError, match=r"iter_5/model.pdparams: .* has shape \[4"):
        ckpt.load_checkpoint(os.path.join(save, "iter_5"), wider, Momentum(wider.parameters(), 0.1))
    with pytest.raises(ckpt.CheckpointError, match="iter_9: checkpoint not found"):
        ckpt.load_checkpoint(os.path.join(save, "iter_9"), clone, Momentum(clone.parameters(), 0.1))


def test_rng_state_round_trip():
    state = ckpt.capture_rng()
    a = (np.random.rand(), paddle.rand([3]).numpy())
    ckpt.restore_rng(state)
    b = (np.random.rand(), paddle.rand([3]).numpy())
    assert a[0] == b[0] and np.array_equal(a[1], b[1])


def test_predict_one_row_per_real_slice_in_order(prepared_dataset):
    root = prepared_dataset({"val": 4}, size=40)
    ds = RSNASeriesDataset(root, "val", [Resize(32), Normalize(), ToCHW()])
    model = TinySeriesNet(width=4)
    frame, labels = predict_dataset(model, ds, batch_size=3, sharded=False)
    meta_ids = [s for i in range(len(ds)) for s in ds[i]["slice_ids"]]
    assert frame.slice_id.tolist() == meta_ids and not frame.slice_id.duplicated().any()
    one, _ = predict_dataset(model, ds, batch_size=1, sharded=False)
    np.testing.assert_array_equal(labels, np.concatenate([ds[i]["label"] for i in range(len(ds))]))
    np.testing.assert_allclose(frame.iloc[:, 2:].to_numpy(), one.iloc[:, 2:].to_numpy(), atol=1e-6)


def test_configs_build_and_the_paper_config_is_faithful():
    for path in glob.glob(os.path.join(ROOT, "config", "*.yml")):
        cfg = Config(path)
        cfg.build("loss")
        cfg.build("lr_scheduler", total_iters=cfg["iters"])
        for key in ("train_dataset", "val_dataset"):
            if cfg.get(f"{key}.type") == "RSNAEmbeddingDataset":  # saved features, no image transforms
                assert cfg.get(f"{key}.transforms") is None, path
                continue
            assert cfg.get(f"{key}.transforms")[-1] == {"type": "ToCHW"}, path
    paper = Config(os.path.join(ROOT, "config", "brain_intracranial_hemorrhage_clas_sequential.yml"))
    assert paper["iters"] == 60000 and paper["batch_size"] == 1
    assert paper["optimizer"] == {"type": "Momentum", "momentum": 0.9, "use_nesterov": True, "weight_decay": 1e-4}
    assert paper.get("lr_scheduler.learning_rate") == 1e-3 and paper.get("lr_scheduler.warmup_iters") == 300
    assert paper.get("loss.coef") == [2, 1] and paper.get("train_dataset.per_slice") is True
    enc = paper.get("model.encoder")
    assert enc["type"] == "SwinTransformer" and enc["drop_path_rate"] == 0.5 and enc["block"] == "postnorm"
    assert [t["type"] for t in paper.get("train_dataset.transforms")] == [
        "RandomResizedCrop", "HorizontalFlip", "VerticalFlip", "RandomRotation", "Normalize", "ToCHW"]
    assert paper.get("train_dataset.transforms")[0]["scale"] == [0.8, 1.2]


def test_a_failed_checkpoint_write_leaves_nothing_half_written(tmp_path, monkeypatch):
    model = TinySeriesNet(width=4)
    opt = Momentum(model.parameters(), 0.1)
    model(paddle.rand([1, 2, 3, 8, 8]), paddle.ones([1, 2], dtype="bool"))["sequence"].sum().backward()
    opt.step()
    save = str(tmp_path / "run")
    ckpt.save_checkpoint(save, 1, model, opt, {"rng": []})
    calls = []

    def failing_save(obj, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_save(obj, path)

    real_save = paddle.save
    monkeypatch.setattr(ckpt.paddle, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(save, 2, model, opt, {"rng": []})
    with pytest.raises(OSError, match="disk full"):
        calls.clear()
        ckpt.save_checkpoint(save, 1, model, opt, {"rng": []})  # overwriting keeps the old one on failure
    assert sorted(os.listdir(save)) == ["iter_1"] and len(os.listdir(os.path.join(save, "iter_1"))) == 3
