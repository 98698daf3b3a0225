"""Parity with the paper's released code (easymia): its checkpoints load, outputs, loss and metric agree.

The reference values come from running the released code (fixture ``easymia_parity``, see its
README). The fixture lives beside the checkout in ``../shared/fixtures/easymia_parity`` (as in
CI); ``MEDSEG_SHARED_DIR`` points elsewhere. A missing fixture fails these tests, never skips them.
"""

import json
import os

import numpy as np
import paddle
import pytest

from medseg.config import Config
from medseg.engine import checkpoint as ckpt
from medseg.engine.metrics import WeightedLogLoss
from medseg.models import weights
from medseg.models.heads.positional import sinusoid_table
from medseg.models.outputs import SEQUENCE, SLICE
from medseg.predict.backend import CheckpointModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("MEDSEG_SHARED_DIR") or os.path.join(os.path.dirname(ROOT), "shared")
FIXTURE = os.path.join(SHARED, "fixtures", "easymia_parity")
PAPER_CONFIG = os.path.join(ROOT, "config", "brain_intracranial_hemorrhage_clas_sequential.yml")
IGNORE = 255.0  # the released code's ignore label

# The tiny released model's geometry (fixture README): embed 16, depths 2-2-2-2, heads 1-2-4-8.
TINY_MODEL = {
    "type": "ICHSequenceClassifier",
    "encoder": {"type": "SwinTransformer", "variant": None, "img_size": 224, "embed_dim": 16, "depths": [2, 2, 2, 2],
                "num_heads": [1, 2, 4, 8], "window_size": 7, "drop_path_rate": 0.5, "block": "postnorm", "pretrained": None},
    "head": {"type": "TransformerSequenceHead", "num_layers": 2, "nhead": 2, "dim_feedforward": 200, "dropout": 0.2},
    "sequential": True,
}


def fixture(name: str) -> str:
    path = os.path.join(FIXTURE, name)
    if not os.path.isfile(path):
        pytest.fail(f"parity fixture {path} is missing: put the easymia_parity fixture in ../shared/fixtures/ beside "
                    "the checkout or set MEDSEG_SHARED_DIR to the folder that holds fixtures/easymia_parity")
    return path


def read_keys(name: str) -> list[tuple[str, tuple[int, ...], str]]:
    rows = []
    with open(fixture(name)) as fh:
        for line in fh:
            key, shape, _dtype, kind = line.rstrip("\n").split("\t")
            rows.append((key, tuple(json.loads(shape)), kind))
    return rows


def tiny_model() -> paddle.nn.Layer:
    paddle.seed(7)  # anything: every value must come from the file
    return Config(data={"model": TINY_MODEL}).build("model")


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    return dict(np.load(fixture("tiny_expected.npz")))


@pytest.fixture(scope="module")
def loaded_tiny():
    model = tiny_model()
    ckpt.load_params(fixture("tiny_original.pdparams"), model, strict=True)
    model.eval()
    return model


def test_parity_tiny_checkpoint_loads_with_nothing_missing_or_unexpected():
    state = paddle.load(fixture("tiny_original.pdparams"))
    model = tiny_model()
    assert weights.is_easymia(state)
    params, report = weights.convert_easymia(state, model, "tiny")
    ours = model.state_dict()
    assert sorted(params) == sorted(ours)  # 0 missing, 0 unexpected parameters
    assert all(list(params[k].shape) == list(ours[k].shape) for k in ours)
    assert len(report.checked) == 12 and not report.unmatched  # 12 buffers, each equal to ours
    assert report.renamed == len(ours) == 155
    assert "12 buffers checked equal" in report.summary("tiny")


def test_parity_tiny_outputs_match_the_released_code(loaded_tiny, expected):
    x = np.random.default_rng(0).standard_normal((1, 5, 3, 224, 224)).astype(np.float32)
    assert x.astype(np.float64).sum() == pytest.approx(float(expected["input_sum"]), abs=1e-9)
    image = paddle.to_tensor(x)
    with paddle.no_grad():
        pooled = loaded_tiny.encoder.forward_features(image[0])
        slice_logits = loaded_tiny.encoder.forward_head(pooled)
        out = loaded_tiny(image, paddle.ones([1, 5], dtype="bool"))
    sequence = out[SEQUENCE]
    np.testing.assert_allclose(pooled.numpy(), expected["pooled_features"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(slice_logits.numpy(), expected["slice_logits"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(sequence.numpy()[0], expected["sequence_logits"], atol=1e-5, rtol=0)


def test_parity_predict_backend_loads_a_released_checkpoint(tmp_path, expected):
    """``medseg.predict`` (like ``infer.py`` and ``export.py``, through ``load_params``) takes the file as is."""
    cfg_file = tmp_path / "tiny.yml"
    cfg_file.write_text(json.dumps({"model": TINY_MODEL}))  # JSON is YAML
    model = CheckpointModel(Config(str(cfg_file)), fixture("tiny_original.pdparams"))
    x = np.random.default_rng(0).standard_normal((1, 5, 3, 224, 224)).astype(np.float32)
    probs = model(x, np.ones((1, 5), bool))
    np.testing.assert_allclose(probs[0], 1 / (1 + np.exp(-expected["sequence_logits"])), atol=1e-5)


def test_parity_buffers_that_differ_are_refused(tmp_path):
    state = {k: v.numpy() for k, v in paddle.load(fixture("tiny_original.pdparams")).items()}
    for key, change in (("pos_encoder.pe", lambda a: a + 1e-3),
                        ("backbone.stages.0.blocks.1.attn_mask", lambda a: np.zeros_like(a))):
        bad = dict(state, **{key: change(state[key])})
        path = str(tmp_path / "bad.pdparams")
        paddle.save(bad, path)
        with pytest.raises(ckpt.CheckpointError, match=f"bad.pdparams: {key} differs"):
            ckpt.load_params(path, tiny_model(), strict=True)


def test_parity_position_table_within_tolerance_of_the_float64_one():
    pe = paddle.load(fixture("tiny_original.pdparams"))["pos_encoder.pe"].numpy()
    assert pe.dtype == np.float64 and pe.shape == (1, 60, 128)
    diff = np.abs(sinusoid_table(60, 128).numpy() - pe[0]).max()
    assert 0 < diff < weights.PE_ATOL


@pytest.mark.slow  # full-size model (construction only)
def test_parity_every_paper_key_maps_onto_the_paper_config():
    rows = read_keys("easymia_paper_keys.tsv")
    assert len(rows) == 399
    model = Config(PAPER_CONFIG).build("model")  # construction only, no forward at 224 px
    params = model.state_dict()
    buffers = dict(model.named_buffers())
    assert sum(kind == "param" for _, _, kind in rows) == len(params) == 363
    mapped = set()
    for key, shape, kind in rows:
        name = weights.easymia_name(key)
        if kind == "param":
            assert name in params, key
            assert tuple(params[name].shape) == shape, key
            mapped.add(name)
        elif key == weights.EASYMIA_PE:
            assert shape[-1] == model.head.d_model and hasattr(model.head, "pos_encoder")
        else:  # derived buffers: ours holds the same number of elements
            assert int(np.prod(shape)) == int(np.prod(buffers[name].shape)), key
    assert mapped == set(params)
    # Our tiny key list is a subset with the same names (the fixture says so; our map must agree).
    assert {k for k, _, _ in read_keys("tiny_keys.tsv")} <= {k for k, _, _ in rows}


def paper_loss_and_inputs(expected):
    cfg = Config(PAPER_CONFIG)
    loss = cfg.build("loss")
    labels = expected["labels"].copy()
    ignored = (labels == IGNORE).all(-1)  # the released code ignores whole rows here
    assert ignored.any() and not ((labels == IGNORE) & ~ignored[..., None]).any()
    labels[ignored] = 0.0
    mask = paddle.to_tensor(~ignored)
    return loss, paddle.to_tensor(labels), mask


def test_parity_paper_loss_equals_the_released_loss(expected):
    loss, labels, mask = paper_loss_and_inputs(expected)
    outputs = {SEQUENCE: paddle.to_tensor(expected["logits_seq"]), SLICE: paddle.to_tensor(expected["logits_slice"])}
    total, (seq, sl) = loss(outputs, labels, mask)
    assert float(seq) == pytest.approx(float(expected["loss_seq_part"]), abs=1e-5)
    assert float(sl) == pytest.approx(float(expected["loss_slice_part"]), abs=1e-5)
    assert float(total) == pytest.approx(float(expected["loss"]), abs=1e-5)


def test_parity_weight_sum_normalisation_is_the_documented_option(expected):
    from medseg.engine.losses import MaskedWeightedBCE

    _, labels, mask = paper_loss_and_inputs(expected)
    logits = paddle.to_tensor(expected["logits_seq"])
    by_labels = float(MaskedWeightedBCE(normalize="labels")(logits, labels, mask))
    by_weights = float(MaskedWeightedBCE(normalize="weights")(logits, labels, mask))
    assert by_weights == pytest.approx(by_labels * 6 / 7, rel=1e-5)
    with pytest.raises(ValueError, match="normalize"):
        MaskedWeightedBCE(normalize="mean")


def test_parity_metric_equals_the_released_nll_metric(expected):
    keep = ~(expected["labels"][0] == IGNORE).all(-1)
    logits = expected["logits_seq"][0][keep].astype(np.float64)
    probs = 1 / (1 + np.exp(-logits))
    metric = WeightedLogLoss(weights=[0.142857] * 5 + [0.285714])
    assert metric(expected["labels"][0][keep], probs)["weighted_logloss"] == pytest.approx(float(expected["nll_metric"]), abs=1e-5)


def test_parity_encoder_pretrained_takes_the_released_backbone(expected):
    """``encoder.pretrained: <released file>``: the auto key map finds the easymia names."""
    from medseg.models import SwinTransformer

    kwargs = {k: v for k, v in TINY_MODEL["encoder"].items() if k != "type"}
    encoder = SwinTransformer(**kwargs)
    report = weights.load_pretrained(encoder, fixture("tiny_original.pdparams"))
    assert report.key_map == "easymia" and not report.missing and not report.mismatched
    assert len(report.loaded) == len(encoder.state_dict())
    assert all(k.startswith(("sequence_", "pos_encoder")) for k in report.unexpected)
    encoder.eval()
    x = paddle.to_tensor(np.random.default_rng(0).standard_normal((5, 3, 224, 224)).astype(np.float32))
    np.testing.assert_allclose(encoder(x).numpy(), expected["slice_logits"], atol=1e-5, rtol=0)
