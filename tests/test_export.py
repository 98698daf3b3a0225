"""``export.py``: Paddle Inference graphs with a dynamic slice count and padding mask, equal to dygraph."""

from __future__ import annotations

import json
import os

import numpy as np
import paddle
import pandas as pd
import pytest
from paddle import inference

from medseg.tools.export import main as export_main
from medseg.config import Config
from medseg.constants import LABELS
from medseg.engine import checkpoint as ckpt
from medseg.export import ExportedModel, create_predictor, read_meta, run_predictor
from medseg.export.meta import graph_files
from medseg.models.outputs import prediction_logits
from medseg.predict.__main__ import main as predict_main
from tests.predict_fixtures import SIZE
from tests.predict_fixtures import write_config as write_demo_config

ATOL = 1e-5
SENSITIVITY = 100  # zeroing the image must move every slice's output by this many times a test's tolerance


def write_config(path: str, model: str = "") -> str:
    """The predict fixtures' demo config (``model``: more lines of its model section) with a
    ResNet-18 encoder: the demo's MobileNetV3, untrained, pools features of ~4e-8, so its output
    barely depends on the image (zeroing the image moved it by < 5e-7) and an export whose
    encoder returned anything at all would still match dygraph within 1e-5."""
    base = write_demo_config(path[:-len(".yml")] + "_demo.yml", model)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f"_base_: {base}\nmodel:\n  encoder: {{arch: resnet18}}\n")
    return path


def write_checkpoint(config: str, folder: str, seed: int) -> str:
    """Untrained weights whose BatchNorm statistics are one batch's, as a trained checkpoint's are
    its data's; saved the way the trainer saves them (``folder/model.pdparams``). With Paddle's
    initial statistics (mean 0, variance 1) ResNet-18's pooled features reach ~30 and the slice
    logits ~100: most probabilities would be exactly 0 or 1 and hide any difference."""
    paddle.seed(seed)
    model = Config(config).build("model")
    norms = [layer for layer in model.sublayers() if isinstance(layer, paddle.nn.layer.norm._BatchNormBase)]
    for layer in norms:
        layer._momentum = 0.0  # running = momentum * running + (1 - momentum) * batch: this batch's
    model.train()
    with paddle.no_grad():
        model(paddle.to_tensor(_inputs(4, 8, seed=10_000 + seed)), paddle.ones([4, 8], dtype="bool"))
    os.makedirs(folder, exist_ok=True)
    paddle.save(model.state_dict(), os.path.join(folder, "model.pdparams"))
    return folder


@pytest.fixture
def no_html_report(monkeypatch):
    """The predict runs here are compared by their numbers; the HTML report (matplotlib, about a
    second a series) is test_predict's to check."""
    monkeypatch.setattr("medseg.predict.run.write_report", lambda *args, **kwargs: None)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    config = write_config(str(root / "tiny.yml"))
    checkpoint = write_checkpoint(config, str(root / "best_model"), seed=7)
    save_dir = str(root / "deploy")
    assert export_main(["--config", config, "--model", checkpoint, "--save_dir", save_dir]) == 0
    model = Config(config).build("model")
    ckpt.load_params(checkpoint, model)
    model.eval()
    return {"root": root, "config": config, "checkpoint": checkpoint, "save_dir": save_dir, "model": model}


def _inputs(batch: int, slices: int, seed: int) -> np.ndarray:
    """Slices as the eval transforms produce them: uint8 windows normalised with ImageNet mean/std."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(batch, slices, 3, SIZE, SIZE)).astype(np.float32) / 255.0
    mean = np.array([0.485, 0.456, 0.406], np.float32).reshape(3, 1, 1)
    std = np.array([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1)
    return (raw - mean) / std


def _dygraph(model, image, mask):
    with paddle.no_grad():
        return paddle.nn.functional.sigmoid(prediction_logits(model(paddle.to_tensor(image), paddle.to_tensor(mask)))).numpy()


CASES = [(1, 5, None), (1, 9, None), (2, 7, 3)]  # two slice counts, then a padded batch (series 2 has 3 real slices)


def _assert_image_matters(model, image, mask, atol, output=None):
    """The equality tests can fail: zeroing the image moves every real slice's output far outside
    their tolerance, so an export whose encoder ignored or mangled the image would not match.
    ``output``: the model's output on ``image`` when already computed."""
    output = _dygraph(model, image, mask) if output is None else output
    moved = np.abs(output - _dygraph(model, np.zeros_like(image), mask))[mask].max(axis=-1)
    assert moved.min() > SENSITIVITY * atol, f"zeroing the image moves a slice's output by only {moved.min():.2e}"


def _mask(batch, slices, real_of_last):
    mask = np.ones((batch, slices), dtype=bool)
    if real_of_last is not None:
        mask[-1, real_of_last:] = False
    return mask


def test_layout_and_metadata(exported):
    meta = read_meta(exported["save_dir"])
    assert (meta.channels, meta.height, meta.width) == (3, SIZE, SIZE)
    assert meta.labels == list(LABELS) and meta.sequential and meta.windows == "40/80,80/200,40/380"
    assert meta.transforms == Config(exported["config"]).get("val_dataset.transforms")
    for graph in ("series", "encoder", "head"):
        program, params = graph_files(exported["save_dir"], graph)
        assert os.path.getsize(program) > 0 and os.path.getsize(params) > 0
    assert not [n for n in os.listdir(exported["root"]) if n.startswith(".deploy")]  # no temporaries left


@pytest.mark.parametrize("batch,slices,real_of_last", CASES)
def test_whole_graph_with_paddle_inference_equals_dygraph(exported, batch, slices, real_of_last):
    """The single graph through plain ``paddle.inference.Config`` / ``create_predictor``."""
    program, params = graph_files(exported["save_dir"], "series")
    config = inference.Config(program, params)
    config.disable_gpu()
    config.disable_onednn()
    predictor = inference.create_predictor(config)
    assert predictor.get_input_names() == ["image", "mask"]
    image, mask = _inputs(batch, slices, seed=slices), _mask(batch, slices, real_of_last)
    for name, value in zip(("image", "mask"), (image, mask)):
        handle = predictor.get_input_handle(name)
        handle.reshape(list(value.shape))
        handle.copy_from_cpu(value)
    predictor.run()
    got = predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()
    assert got.shape == (batch, slices, len(LABELS))
    want = _dygraph(exported["model"], image, mask)
    np.testing.assert_allclose(got[mask], want[mask], rtol=0, atol=ATOL)
    _assert_image_matters(exported["model"], image, mask, ATOL, want)


@pytest.mark.parametrize("batch,slices,real_of_last", CASES)
def test_exported_model_equals_dygraph(exported, batch, slices, real_of_last):
    """The wrapper predict uses (oneDNN encoder in chunks + head) on varying slice counts and padding."""
    model = ExportedModel(exported["save_dir"], threads=1, chunk_size=4)
    image, mask = _inputs(batch, slices, seed=100 + slices), _mask(batch, slices, real_of_last)
    got, want = model(image, mask), _dygraph(exported["model"], image, mask)
    np.testing.assert_allclose(got[mask], want[mask], rtol=0, atol=ATOL)
    _assert_image_matters(exported["model"], image, mask, ATOL, want)
    if real_of_last is not None:  # padding changes nothing: the short series alone gives the same
        alone = model(image[-1:, :real_of_last], mask[-1:, :real_of_last])
        np.testing.assert_allclose(got[-1, :real_of_last], alone[0], rtol=0, atol=ATOL)


@pytest.mark.slow  # end to end / a second export
def test_predict_with_export_equals_predict_with_checkpoint(exported, dicom_study, no_html_report):
    root, study = exported["root"], dicom_study[0]
    runs = {}
    for name, model in (("ckpt", exported["checkpoint"]), ("export", exported["save_dir"])):
        args = ["--model", model, "--dicom_dir", str(study), "--out", str(root / name), "--no_progress"]
        if name == "ckpt":
            args += ["--config", exported["config"]]  # an export carries its own config.yml
        assert predict_main(args) == 0
        runs[name] = pd.read_csv(root / name / "predictions.csv", dtype={"slice_id": str, "series_id": str})
    a, b = runs["ckpt"], runs["export"]
    assert a.drop(columns=list(LABELS)).equals(b.drop(columns=list(LABELS)))
    np.testing.assert_allclose(a[list(LABELS)].to_numpy(), b[list(LABELS)].to_numpy(), rtol=0, atol=ATOL)
    _assert_image_matters(exported["model"], _inputs(1, 4, seed=3), _mask(1, 4, None), ATOL)
    report = json.loads((root / "export" / "predictions.json").read_text())
    assert report["model_kind"] == "export"


# Every head the project ships, with and without the residual slice logits, and the slice-only model.
HEADS = {
    "transformer": "  head: {_inherited_: false, type: TransformerSequenceHead, num_layers: 1, nhead: 2, dim_feedforward: 16}\n",
    "bigru": "  head: {_inherited_: false, type: BiGRUSequenceHead, hidden_size: 8, num_layers: 2}\n",
    "slice_only": "  sequential: false\n",
}
HEAD_CASES = [("transformer", False), ("transformer", True), ("bigru", False), ("bigru", True), ("slice_only", False)]


@pytest.mark.slow
@pytest.mark.parametrize("head,residual", HEAD_CASES)
def test_every_head_exports_and_predicts_like_its_checkpoint(head, residual, dicom_study, tmp_path, no_html_report):
    """``medseg.predict`` on the exported folder equals it on the checkpoint, and so does the
    single-graph export (``model.json``), residual slice logits included."""
    config = write_config(str(tmp_path / "model.yml"), HEADS[head] + f"  residual: {str(residual).lower()}\n")
    checkpoint = write_checkpoint(config, str(tmp_path / "best_model"), seed=11)
    save_dir = str(tmp_path / "deploy")
    assert export_main(["--config", config, "--model", checkpoint, "--save_dir", save_dir]) == 0
    runs = {}
    for name, model in (("ckpt", checkpoint), ("export", save_dir)):
        args = ["--model", model, "--dicom_dir", str(dicom_study[0]), "--out", str(tmp_path / name), "--no_progress"]
        if name == "ckpt":
            args += ["--config", config]
        assert predict_main(args) == 0
        runs[name] = pd.read_csv(tmp_path / name / "predictions.csv", dtype={"slice_id": str, "series_id": str})
    a, b = runs["ckpt"], runs["export"]
    assert a.drop(columns=list(LABELS)).equals(b.drop(columns=list(LABELS)))
    np.testing.assert_allclose(a[list(LABELS)].to_numpy(), b[list(LABELS)].to_numpy(), rtol=0, atol=1e-4)

    model = Config(config).build("model")
    ckpt.load_params(checkpoint, model)
    model.eval()
    image, mask = _inputs(2, 6, seed=5), _mask(2, 6, 4)
    whole = run_predictor(create_predictor(save_dir, "series"), image, mask)
    want = _dygraph(model, image, mask)
    np.testing.assert_allclose(whole[mask], want[mask], rtol=0, atol=1e-4)
    _assert_image_matters(model, image, mask, 1e-4, want)


def test_refuses_to_overwrite_a_folder_that_is_not_an_export(exported, tmp_path, capsys):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "keep.txt").write_text("user data")
    rc = export_main(["--config", exported["config"], "--model", exported["checkpoint"], "--save_dir", str(target)])
    assert rc == 2 and "not an earlier export" in capsys.readouterr().err
    assert os.listdir(target) == ["keep.txt"]


def test_mismatched_preprocessing_is_refused(exported, tmp_path, capsys):
    """An export must be fed what it was exported with: other windows are an error, not a silent change."""
    rc = predict_main(["--model", exported["save_dir"], "--dicom_dir", str(tmp_path), "--out", str(tmp_path / "o"),
                       "--windows", "40/80,80/200,600/2800"])
    assert rc == 2 and "exported for windows" in capsys.readouterr().err


@pytest.mark.slow  # end to end / a second export
def test_onnx_is_optional(exported, tmp_path, capsys):
    """``--onnx`` converts and checks when paddle2onnx is installed; otherwise it says what is
    missing (exit 2) and the Paddle Inference export is still complete."""
    import importlib.util

    save_dir = tmp_path / "deploy"
    rc = export_main(["--config", exported["config"], "--model", exported["checkpoint"], "--save_dir", str(save_dir), "--onnx"])
    assert read_meta(str(save_dir)).sequential
    if importlib.util.find_spec("paddle2onnx") is None:
        assert rc == 2 and "needs paddle2onnx" in capsys.readouterr().err
        assert not (save_dir / "model.onnx").exists()
    else:
        assert rc == 0 and (save_dir / "model.onnx").stat().st_size > 0
        if importlib.util.find_spec("onnxruntime") is not None:
            assert "onnxruntime matches" in capsys.readouterr().out
