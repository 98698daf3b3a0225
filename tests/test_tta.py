"""Test-time augmentation: the views, one batch per step, the averages, the flags of infer.py,
medseg.predict (checkpoint and exported model) and pseudo_label, and calibration by views."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import paddle
import pandas as pd
import pytest

from engine_fixtures import TinySeriesNet, write_config
from medseg.config import Config
from medseg.constants import LABELS
from medseg.engine.evaluator import predict_dataset
from medseg.engine.tta import IDENTITY, TTA, VIEWS, apply_view, parse_views, predict_views, resolve_tta, stack_views
from medseg.models.outputs import prediction_logits
from medseg.outputs.calibrate import CALIBRATION_FILE, main as calibrate_main, read_calibration
from medseg.tools.infer import main as infer_main

MOVES = 1e-4  # a view must move some output by more than this, or a test comparing views proves nothing


@pytest.fixture(scope="module")
def tiny(prepared_dataset, tmp_path_factory):
    """A tiny prepared dataset, its TinySeriesNet config (16 px) and an untrained checkpoint."""
    root = prepared_dataset({"train": 2, "val": 3, "test": 2}, size=24, min_slices=3, max_slices=5)
    work = tmp_path_factory.mktemp("tta")
    config = write_config(str(work / "tiny.yml"), root, size=16)
    ckpt = work / "best_model"
    ckpt.mkdir()
    paddle.seed(5)
    paddle.save(TinySeriesNet(width=8).state_dict(), str(ckpt / "model.pdparams"))
    return {"root": root, "config": config, "ckpt": str(ckpt), "work": work}


def _net(seed: int = 5) -> TinySeriesNet:
    paddle.seed(seed)
    net = TinySeriesNet(width=8)
    net.eval()
    return net


def _forward(net):
    return lambda image, mask: prediction_logits(net(image, mask))


def _batch(b: int = 2, s: int = 4, size: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(b, s, 3, size, size)).astype(np.float32)
    mask = np.ones((b, s), bool)
    mask[-1, s - 1:] = False
    image[~mask] = 0
    return image, mask


def _probs(forward, image, mask, tta):
    with paddle.no_grad():
        return predict_views(forward, paddle.to_tensor(image), paddle.to_tensor(mask), tta).numpy()


# --- views ------------------------------------------------------------------------------------

def test_views_act_on_height_and_width_alike_in_numpy_and_paddle():
    image = np.arange(2 * 3 * 2 * 4 * 4, dtype=np.float32).reshape(2, 3, 2, 4, 4)
    expected = {"identity": image, "hflip": image[..., ::-1], "vflip": image[..., ::-1, :],
                "transpose": image.transpose(0, 1, 2, 4, 3)}
    for view in VIEWS:
        np.testing.assert_array_equal(apply_view(image, view), expected[view])
        np.testing.assert_array_equal(apply_view(paddle.to_tensor(image), view).numpy(), expected[view])
    stacked, mask = stack_views(image, np.ones((2, 3), bool), ("identity", "vflip"))
    assert stacked.shape == (4, 3, 2, 4, 4) and mask.shape == (4, 3)
    np.testing.assert_array_equal(stacked[2:], expected["vflip"])  # view-major: rows v * B + b
    with pytest.raises(ValueError, match="square"):
        apply_view(np.zeros((1, 1, 3, 4, 5), np.float32), "transpose")


def test_view_names_are_checked_and_ordered():
    assert parse_views("hflip,identity") == ("identity", "hflip") == parse_views(["identity", "hflip"])
    for bad, reason in (("identity,flip", "unknown view 'flip'"), ("hflip,hflip", "listed twice"), ("", "comma list")):
        with pytest.raises(ValueError, match=reason) as err:
            parse_views(bad)
        assert "\n" not in str(err.value)
    cfg = Config(data={"test_time_augmentation": {"views": ["identity", "rot90"]}})
    with pytest.raises(ValueError, match=r"test_time_augmentation.views: unknown view 'rot90'"):
        resolve_tta(cfg)
    with pytest.raises(ValueError, match="average: 'mean' is not one of"):
        resolve_tta(Config(data={"test_time_augmentation": {"average": "mean"}}), "hflip")
    assert resolve_tta(Config(data={})) is None
    assert resolve_tta(Config(data={"test_time_augmentation": {"views": ["hflip", "identity"], "average": "logits"}}),
                       "identity,vflip") == TTA(("identity", "vflip"), "logits"), "the flag's views, the YAML's average"


def test_bad_view_names_are_refused_in_one_line_by_every_tool(capsys):
    from medseg.predict.__main__ import main as predict_main
    from medseg.semi.pseudo_label import main as pseudo_main

    runs = (lambda a: infer_main(["--config", "c.yml", "--resume_model", "m"] + a),
            lambda a: predict_main(["--model", "m", "--dicom_dir", "d", "--out", "o"] + a),
            lambda a: pseudo_main(["--config", "c.yml", "--model", "m", "--out", "o.csv"] + a),
            lambda a: calibrate_main(["--config", "c.yml", "--resume_model", "m"] + a))
    for run in runs:
        with pytest.raises(SystemExit) as exit_:
            run(["--tta", "identity,spin"])
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "unknown view 'spin'" in err and "--tta" in err, err


# --- predictions ------------------------------------------------------------------------------

def test_identity_alone_equals_no_tta_bit_for_bit(tiny):
    from medseg.data.build import build_eval_dataset
    from medseg.predict.backend import CheckpointModel

    net, (image, mask) = _net(), _batch()
    np.testing.assert_array_equal(_probs(_forward(net), image, mask, TTA(IDENTITY)), _probs(_forward(net), image, mask, None))
    dataset = build_eval_dataset(Config(tiny["config"]), "val")
    plain, _ = predict_dataset(net, dataset, batch_size=2, sharded=False)
    identity, _ = predict_dataset(net, dataset, batch_size=2, sharded=False, tta=TTA(IDENTITY))
    pd.testing.assert_frame_equal(plain, identity, check_exact=True)
    cfg = Config(tiny["config"])
    np.testing.assert_array_equal(CheckpointModel(cfg, tiny["ckpt"], tta=TTA(IDENTITY))(image, mask),
                                  CheckpointModel(cfg, tiny["ckpt"])(image, mask))


@pytest.mark.parametrize("view", ["hflip", "vflip", "transpose"])
def test_a_view_of_the_transformed_series_equals_the_original(view):
    """The view transform undoes itself: the hflip view of a horizontally flipped series is the
    original series, so the model returns the identity view's output bit for bit; and a view
    pair's average is the same for a series and its flip, up to the order of the sum."""
    net, (image, mask) = _net(), _batch()
    flipped = apply_view(image, view).copy()
    original = _probs(_forward(net), image, mask, None)
    np.testing.assert_array_equal(_probs(_forward(net), flipped, mask, TTA((view,))), original)
    assert np.abs(_probs(_forward(net), flipped, mask, None) - original)[mask].max() > MOVES, "the model must see the view"
    pair = TTA(("identity", view))
    np.testing.assert_allclose(_probs(_forward(net), flipped, mask, pair), _probs(_forward(net), image, mask, pair), rtol=0, atol=1e-6)


@pytest.mark.parametrize("average", ["probabilities", "logits"])
def test_all_views_run_as_one_batch_and_are_averaged(tiny, average):
    from medseg.data.build import build_eval_dataset

    net, (image, mask) = _net(), _batch(b=2)
    calls = []
    hook = net.register_forward_pre_hook(lambda layer, inputs: calls.append((list(inputs[0].shape), inputs[1].numpy().copy())))
    tta = TTA(VIEWS, average)
    try:
        probs = _probs(_forward(net), image, mask, tta)
        assert len(calls) == 1 and calls[0][0] == [len(VIEWS) * 2, *image.shape[1:]], calls[0][0]
        np.testing.assert_array_equal(calls[0][1], np.concatenate([mask] * len(VIEWS)))
        single = np.stack([_probs(_forward(net), apply_view(image, v).copy(), mask, None) for v in VIEWS])
        logits = np.log(single) - np.log1p(-single)
        expected = single.mean(axis=0) if average == "probabilities" else 1 / (1 + np.exp(-logits.mean(axis=0)))
        np.testing.assert_allclose(probs[mask], expected[mask], rtol=0, atol=2e-6)
        assert np.abs(probs - single[0])[mask].max() > MOVES
        calls.clear()
        dataset = build_eval_dataset(Config(tiny["config"]), "val")
        predict_dataset(net, dataset, batch_size=2, sharded=False, tta=tta)
        assert len(calls) == 2 and [shape[0] for shape, _ in calls] == [8, 4], "one call per step of 2 + 1 series"
    finally:
        hook.remove()


# --- tools ------------------------------------------------------------------------------------

def _read(path) -> np.ndarray:
    return pd.read_csv(path)[list(LABELS)].to_numpy()


def test_infer_flag_and_yaml_section(tiny, tmp_path):
    base = ["--config", tiny["config"], "--resume_model", tiny["ckpt"], "--split", "val", "--num_workers", "0"]
    runs = {"none": [], "hflip": ["--tta", "hflip"], "pair": ["--tta", "hflip,identity"],
            "yaml": ["-o", "test_time_augmentation.views=[identity,hflip]"],
            "flag_over_yaml": ["-o", "test_time_augmentation.views=[identity,hflip]", "--tta", "identity"]}
    out = {}
    for name, extra in runs.items():
        assert infer_main(base + extra + ["--output", str(tmp_path / f"{name}.csv")]) == 0
        out[name] = _read(tmp_path / f"{name}.csv")
    np.testing.assert_allclose(out["pair"], (out["none"] + out["hflip"]) / 2, rtol=0, atol=1e-6)
    assert np.abs(out["pair"] - out["none"]).max() > MOVES
    np.testing.assert_array_equal(out["yaml"], out["pair"])
    np.testing.assert_array_equal(out["flag_over_yaml"], out["none"])
    recorded = json.loads((tmp_path / "pair_metrics.json").read_text())["test_time_augmentation"]
    assert recorded == {"views": ["identity", "hflip"], "average": "probabilities"}
    assert "test_time_augmentation" not in json.loads((tmp_path / "none_metrics.json").read_text())


def test_calibration_is_fitted_on_the_tta_output_and_refused_with_other_views(tiny, tmp_path, capsys):
    from medseg.predict.backend import CheckpointModel

    ckpt = tmp_path / "best_model"
    ckpt.mkdir()
    shutil.copy(os.path.join(tiny["ckpt"], "model.pdparams"), ckpt / "model.pdparams")
    tta = ["--tta", "identity,vflip"]
    assert calibrate_main(["--config", tiny["config"], "--resume_model", str(ckpt)] + tta) == 0
    cal = read_calibration(str(ckpt / CALIBRATION_FILE))
    assert cal.test_time_augmentation == {"views": ["identity", "vflip"], "average": "probabilities"}
    base = ["--config", tiny["config"], "--resume_model", str(ckpt), "--split", "val"]
    assert infer_main(base + tta + ["--output", str(tmp_path / "tta.csv")]) == 0
    metrics = json.loads((tmp_path / "tta_metrics.json").read_text())
    assert metrics["weighted_logloss"] == pytest.approx(cal.after["logloss"], rel=1e-3), "fitted on this very output"
    capsys.readouterr()
    for other in ([], ["--tta", "identity,hflip"]):
        assert infer_main(base + other + ["--output", str(tmp_path / "other.csv")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "calibration fitted with test-time views identity+vflip" in err, err
    assert infer_main(base + ["--no_calibration", "--output", str(tmp_path / "raw.csv")]) == 0
    with pytest.raises(ValueError, match="not none"):
        CheckpointModel(Config(tiny["config"]), str(ckpt))
    # calibrate --pred reads the views infer.py recorded beside the CSV; a contradicting --tta is refused.
    truth = tmp_path / "truth.csv"
    frame = pd.read_csv(tmp_path / "tta.csv")
    val = pd.read_csv(os.path.join(tiny["root"], "val_meta.csv"))
    truth.write_text(val[["slice_id", "series_id", *LABELS]].to_csv(index=False))
    args = ["--pred", str(tmp_path / "tta.csv"), "--truth", str(truth), "--out", str(tmp_path / "c.json")]
    assert len(frame) == len(val) and calibrate_main(args) == 0
    assert read_calibration(str(tmp_path / "c.json")).test_time_augmentation["views"] == ["identity", "vflip"]
    assert calibrate_main(args + ["--tta", "hflip"]) == 2


def test_pseudo_label_flag_end_to_end(tiny, capsys):
    from medseg.semi.pseudo_label import main as pseudo_main

    root = tiny["root"]
    base = ["--config", tiny["config"], "--model", tiny["ckpt"], "--split", "test"]
    out = {}
    for name, extra in (("none", []), ("hflip", ["--tta", "hflip"]), ("pair", ["--tta", "identity,hflip"])):
        path = os.path.join(root, f"tta_{name}_pseudo_meta.csv")
        assert pseudo_main(base + extra + ["--out", path]) == 0
        out[name] = _read(path)
    np.testing.assert_allclose(out["pair"], (out["none"] + out["hflip"]) / 2, rtol=0, atol=1e-6)
    assert np.abs(out["pair"] - out["none"]).max() > MOVES
    capsys.readouterr()
    with pytest.raises(SystemExit):
        pseudo_main(["--config", tiny["config"], "--predictions", "p.csv", "--out", "o.csv", "--tta", "hflip"])
    assert "--tta needs a teacher --model" in capsys.readouterr().err


# --- predict: checkpoint and exported model ---------------------------------------------------

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The demo CNN at 64 px with one batch's BatchNorm statistics (so its output depends on the
    image, see tests/test_export.py), exported, and a one-series DICOM study."""
    from medseg.data.synthetic import synthesize_series
    from medseg.data.synthetic.dicom_writer import write_series
    from medseg.tools.export import main as export_main
    from tests.predict_fixtures import SIZE
    from tests.predict_fixtures import write_config as demo_config
    from tests.test_export import write_checkpoint

    root = tmp_path_factory.mktemp("tta_export")
    config = demo_config(str(root / "demo.yml"))
    ckpt = write_checkpoint(config, str(root / "best_model"), seed=7)
    assert export_main(["--config", config, "--model", ckpt, "--save_dir", str(root / "deploy")]) == 0
    study = root / "study"
    study.mkdir()
    write_series(synthesize_series(11, 0, size=SIZE, n_slices=5), str(study))
    return {"root": root, "config": config, "ckpt": ckpt, "deploy": str(root / "deploy"), "study": str(study)}


def test_exported_model_runs_the_views_as_one_batch_like_the_checkpoint(exported, monkeypatch):
    from medseg.export import inference
    from medseg.export.inference import ExportedModel
    from medseg.predict.backend import CheckpointModel
    from tests.predict_fixtures import SIZE

    image, mask = _batch(b=1, s=4, size=SIZE, seed=1)
    tta = TTA(("identity", "hflip", "transpose"))
    model = ExportedModel(exported["deploy"], tta=tta)
    runs = []
    real_run = inference.run_predictor
    monkeypatch.setattr(inference, "run_predictor", lambda p, *x: runs.append(x[0].shape) or real_run(p, *x))
    probs = model(image, mask)
    *encoder, head = runs  # the encoder runs in chunks of the export's chunk_size (a memory bound)
    assert sum(shape[0] for shape in encoder) == 3 * 3 and head == (3, 4, model.meta.feature_dim), runs
    ckpt = CheckpointModel(Config(exported["config"]), exported["ckpt"], tta=tta)(image, mask)
    np.testing.assert_allclose(probs[mask], ckpt[mask], rtol=0, atol=1e-5)
    plain = CheckpointModel(Config(exported["config"]), exported["ckpt"])(image, mask)
    assert np.abs(ckpt - plain)[mask].max() > 100 * 1e-5, "the views must move the output beyond the tolerance"


def test_predict_flag_with_checkpoint_and_export(exported, monkeypatch):
    from medseg.predict.__main__ import main as predict_main

    monkeypatch.setattr("medseg.predict.run.write_report", lambda *args, **kwargs: None)
    root = exported["root"]
    runs = {"none": (exported["ckpt"], []), "hflip": (exported["ckpt"], ["--tta", "hflip"]),
            "pair": (exported["ckpt"], ["--tta", "identity,hflip"]), "export": (exported["deploy"], ["--tta", "identity,hflip"])}
    out = {}
    for name, (model, extra) in runs.items():
        args = ["--model", model, "--dicom_dir", exported["study"], "--out", str(root / name), "--no_progress", "--no_saliency"]
        args += ["--config", exported["config"]] if model == exported["ckpt"] else []
        assert predict_main(args + extra) == 0
        out[name] = _read(root / name / "predictions.csv")
    np.testing.assert_allclose(out["pair"], (out["none"] + out["hflip"]) / 2, rtol=0, atol=1e-6)
    np.testing.assert_allclose(out["export"], out["pair"], rtol=0, atol=1e-5)
    assert np.abs(out["pair"] - out["none"]).max() > 100 * 1e-5
    for name in ("pair", "export"):
        info = json.loads((root / name / "predictions.json").read_text())
        assert info["test_time_augmentation"] == {"views": ["identity", "hflip"], "average": "probabilities"}
    assert json.loads((root / "none" / "predictions.json").read_text())["test_time_augmentation"] is None
