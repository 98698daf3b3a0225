"""Models: encoder/head shapes, padding-mask invariance, gradients, the paper's size, weight loading.

Everything runs tiny (Swin with embed 8–16 at 32–64 px, CNNs at 32 px, a few slices) except the
paper configuration, whose parameters are counted without a forward pass.
"""

import os

import numpy as np
import paddle
import paddle.nn as nn
import pytest

from medseg.config import Config
from medseg.models import (
    BiGRUSequenceHead,
    CNNEncoder,
    ICHSequenceClassifier,
    SliceMLPHead,
    SwinTransformer,
    TransformerSequenceHead,
    load_pretrained,
)
from medseg.models.encoders.swin import drop_path
from medseg.models.heads.positional import sinusoid_table
from medseg.tools import model_info

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
BASE_MODELS = os.path.join(ROOT, "config", "_base_", "models")


def tiny_swin(**kw) -> SwinTransformer:
    args = dict(variant=None, img_size=64, embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=4, drop_path_rate=0.1)
    args.update(kw)
    return SwinTransformer(**args)


def params(layer: nn.Layer) -> int:
    return sum(int(p.numel()) for p in layer.parameters())


def series(b: int, s: int, size: int, seed: int = 0) -> paddle.Tensor:
    return paddle.to_tensor(np.random.RandomState(seed).randn(b, s, 3, size, size).astype("float32"))


def mask_of(lengths: list[int], s: int) -> paddle.Tensor:
    return paddle.to_tensor(np.arange(s)[None, :] < np.array(lengths)[:, None])


# ---------------------------------------------------------------- encoders


@pytest.mark.parametrize(
    "kw, size",
    [
        (dict(block="postnorm"), 64),
        (dict(block="prenorm", cosine_attention=True, continuous_position_bias=True, img_size=96, window_size=6), 96),
    ],
)
def test_swin_shapes(kw, size):
    enc = tiny_swin(**kw).eval()
    x = paddle.randn([2, 3, size, size])
    assert enc.feature_dim == 16 * 8
    assert enc.forward_features(x).shape == [2, 128]
    assert enc(x).shape == [2, 6]
    assert np.isfinite(enc(x).numpy()).all()


def test_swin_rejects_impossible_window_and_wrong_input():
    with pytest.raises(ValueError, match="not divisible by window"):
        tiny_swin(img_size=80, window_size=7)  # 20 x 20 map, window 7
    with pytest.raises(ValueError, match="built for 64px"):
        tiny_swin()(paddle.randn([1, 3, 32, 32]))


def test_drop_path_is_per_sample_and_off_in_eval():
    paddle.seed(3)
    x = paddle.ones([64, 5, 4])
    y = drop_path(x, 0.5, training=True).numpy()
    per_sample = y.reshape(64, -1)
    assert np.all((per_sample == 0).all(1) | (per_sample == 2).all(1))  # whole sample kept or dropped
    assert 0 < (per_sample[:, 0] == 0).sum() < 64
    assert np.array_equal(drop_path(x, 0.5, training=False).numpy(), x.numpy())


@pytest.mark.parametrize(
    "arch, width",  # widths of the published architectures
    [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048), ("resnext50_32x4d", 2048), ("densenet121", 1024),
     ("mobilenet_v3_small", 576), ("shufflenet_v2_x0_5", 1024)],
)
def test_cnn_encoder_shapes(arch, width):
    enc = CNNEncoder(arch=arch).eval()
    x = paddle.randn([2, 3, 32, 32])
    assert enc.feature_dim == width
    assert enc.forward_features(x).shape == [2, width]
    assert enc(x).shape == [2, 6]


def test_cnn_scale_is_a_width_multiplier_for_mobilenets_only():
    assert CNNEncoder(arch="mobilenet_v3_small", scale=0.5).feature_dim == 288
    with pytest.raises(ValueError, match="mobilenet"):
        CNNEncoder(arch="resnet18", scale=0.5)


def test_cnn_pooling_choices():
    enc = CNNEncoder(arch="resnet18", pool="avg").eval()
    x = paddle.randn([2, 3, 64, 64])
    fmap = enc.backbone(x)
    np.testing.assert_allclose(enc.forward_features(x).numpy(), fmap.numpy().mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    enc.pool = "max"
    np.testing.assert_allclose(enc.forward_features(x).numpy(), fmap.numpy().max(axis=(2, 3)), rtol=1e-6)
    enc.pool = "avgmax"
    both = 0.5 * (fmap.numpy().mean(axis=(2, 3)) + fmap.numpy().max(axis=(2, 3)))
    np.testing.assert_allclose(enc.forward_features(x).numpy(), both, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="unknown pool"):
        CNNEncoder(arch="resnet18", pool="gem")


def test_cnn_bn_momentum_override_reaches_every_batchnorm():
    enc = CNNEncoder(arch="mobilenet_v3_small", bn_momentum=0.9)
    norms = [l for l in enc.backbone.sublayers() if isinstance(l, paddle.nn.layer.norm._BatchNormBase)]
    assert norms and all(l._momentum == 0.9 for l in norms)
    assert all(l._momentum == 0.99 for l in CNNEncoder(arch="mobilenet_v3_small").backbone.sublayers()
               if isinstance(l, paddle.nn.layer.norm._BatchNormBase))  # paddle.vision's own value
    with pytest.raises(ValueError, match="bn_momentum"):
        CNNEncoder(arch="resnet18", bn_momentum=1.5)


def test_head_dropout_noises_the_slice_head_in_training_only():
    paddle.seed(0)
    noisy = CNNEncoder(arch="mobilenet_v3_small", scale=0.5, head_dropout=0.5)
    clean = CNNEncoder(arch="mobilenet_v3_small", scale=0.5)
    clean.set_state_dict(noisy.state_dict())  # dropout has no weights: the same checkpoint keys
    assert isinstance(clean.head_drop, paddle.nn.Identity)  # 0 draws no random numbers
    feats = paddle.randn([8, noisy.feature_dim])
    noisy.train()
    dropped = noisy.forward_head(feats).numpy()
    assert not np.allclose(dropped, noisy.forward_head(feats).numpy())  # a new mask per call
    clean.eval(), noisy.eval()
    np.testing.assert_allclose(noisy.forward_head(feats).numpy(), clean.forward_head(feats).numpy(), atol=1e-6)
    noisy.train(), clean.train()
    x = series(1, 3, 32)
    with paddle.no_grad():  # the features a sequence head reads are not dropped
        np.testing.assert_allclose(noisy.encode_series(x).numpy(), clean.encode_series(x).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="head_dropout"):
        CNNEncoder(arch="mobilenet_v3_small", head_dropout=1.0)


def test_encode_series_chunks_and_padding():
    enc = tiny_swin(chunk_size=3).eval()
    x, mask = series(2, 4, 64), mask_of([4, 2], 4)
    with paddle.no_grad():
        chunked = enc.encode_series(x, mask).numpy()
        enc.chunk_size = None
        whole = enc.encode_series(x, mask).numpy()
        single = enc.forward_features(x[1, :2]).numpy()
    assert chunked.shape == (2, 4, 128)
    np.testing.assert_allclose(chunked, whole, atol=1e-5)
    np.testing.assert_allclose(chunked[1, :2], single, atol=1e-5)
    assert not chunked[1, 2:].any()  # padded slices are not encoded


def test_recompute_gives_the_same_gradients():
    def grad(recompute: bool) -> np.ndarray:
        paddle.seed(1)
        enc = tiny_swin(img_size=32, depths=[1, 1], num_heads=[1, 2], drop_path_rate=0.0, chunk_size=2, recompute=recompute)
        enc.train()
        feats = enc.encode_series(series(1, 3, 32), None)
        (feats * paddle.to_tensor(np.random.RandomState(2).randn(*feats.shape).astype("float32"))).sum().backward()
        return enc.patch_embed.proj.weight.grad.numpy()

    plain, recomputed = grad(False), grad(True)
    assert np.abs(plain).max() > 0
    np.testing.assert_allclose(recomputed, plain, rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------- heads


@pytest.mark.parametrize("head_cls", [TransformerSequenceHead, BiGRUSequenceHead])
def test_head_shapes_and_mask_invariance(head_cls):
    paddle.seed(0)
    head = head_cls(d_model=16).eval()
    x = paddle.to_tensor(np.random.RandomState(1).randn(3, 7, 16).astype("float32"))
    mask = mask_of([7, 4, 1], 7)
    with paddle.no_grad():
        out = head(x, mask).numpy()
        for b, n in enumerate([7, 4, 1]):
            alone = head(x[b : b + 1, :n], None).numpy()
            np.testing.assert_allclose(out[b, :n], alone[0], atol=1e-5)
    assert out.shape == (3, 7, 6)


def test_positional_encoding_has_no_length_cap():
    table = sinusoid_table(200, 8).numpy()
    assert table.shape == (200, 8)
    np.testing.assert_allclose(table[0], [0, 1, 0, 1, 0, 1, 0, 1], atol=1e-6)
    np.testing.assert_allclose(table[150, 0], np.sin(150.0), atol=1e-4)
    out = TransformerSequenceHead(d_model=8)(paddle.zeros([1, 200, 8]))
    assert out.shape == [1, 200, 6]


def test_transformer_head_defaults_and_init_as_the_released_code():
    paddle.seed(0)
    head = TransformerSequenceHead(d_model=32)
    layers = head.transformer_encoder.layers
    assert len(layers) == 2 and layers[0].self_attn.num_heads == 2 and layers[0].linear1.weight.shape == [32, 200]
    for layer in layers:  # encoder layers: weights uniform in ±0.1, biases zero, LayerNorms 1 / 0
        for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.out_proj, layer.linear1, layer.linear2):
            w = lin.weight.numpy()
            assert 0.09 < np.abs(w).max() <= 0.1 and not lin.bias.numpy().any()
        assert (layer.norm1.weight.numpy() == 1).all() and not layer.norm1.bias.numpy().any()
    # The decoder keeps Paddle's default Linear init (Xavier-uniform weight: bound sqrt(6 / (32 + 6)) ≈ 0.40).
    w = head.decoder.weight.numpy()
    assert 0.2 < np.abs(w).max() <= np.sqrt(6 / 38) and not head.decoder.bias.numpy().any()
    for zero in (TransformerSequenceHead(d_model=32, zero_decoder=True), TransformerSequenceHead(d_model=32, init_range=0.0)):
        assert not zero.decoder.weight.numpy().any() and not zero.decoder.bias.numpy().any()
        assert 0.09 < np.abs(zero.transformer_encoder.layers[0].linear1.weight.numpy()).max() <= 0.1
    with pytest.raises(ValueError, match="init_range"):
        TransformerSequenceHead(d_model=32, init_range=-1)


@pytest.mark.parametrize("head_cls", [TransformerSequenceHead, BiGRUSequenceHead, SliceMLPHead])
def test_feature_norm_makes_every_head_scale_invariant(head_cls):
    paddle.seed(0)
    head = head_cls(d_model=16, feature_norm=True)
    head.eval()
    x = paddle.to_tensor(np.random.default_rng(0).normal(size=(1, 4, 16)).astype("float32"))
    np.testing.assert_allclose(head(x).numpy(), head(x * 50.0).numpy(), atol=1e-4)
    plain = head_cls(d_model=16)
    plain.eval()
    assert not plain.feature_norm and not head.input_norm.parameters()
    assert np.abs(plain(x).numpy() - plain(x * 50.0).numpy()).max() > 1e-2  # without it, scale matters
    assert set(head.state_dict()) == set(plain.state_dict())  # no parameters: checkpoints interchange


def test_bigru_rejects_masks_with_holes():
    with pytest.raises(ValueError, match="padding at the end"):
        BiGRUSequenceHead(d_model=8)(paddle.zeros([1, 3, 8]), paddle.to_tensor([[True, False, True]]))


# ---------------------------------------------------------------- classifier


def test_classifier_outputs_mask_invariance_and_gradients():
    paddle.seed(0)
    model = ICHSequenceClassifier(tiny_swin(), {"type": "TransformerSequenceHead"})
    x, mask = series(2, 5, 64), mask_of([3, 5], 5)
    model.train()
    out = model(x, mask)
    seq, sl = out["sequence"], out["slice"]
    assert seq.shape == [2, 5, 6] and sl.shape == [2, 5, 6]
    assert not seq.numpy()[0, 3:].any() and not sl.numpy()[0, 3:].any()
    (seq.square().mean() + sl.square().mean()).backward()
    for p in (model.head.decoder.weight, model.encoder.head.weight, model.encoder.patch_embed.proj.weight):
        assert p.grad is not None and np.abs(p.grad.numpy()).max() > 0
    model.eval()
    with paddle.no_grad():
        batched = model(x, mask)["sequence"].numpy()
        alone = model(x[:1, :3])["sequence"].numpy()
    np.testing.assert_allclose(batched[0, :3], alone[0], atol=1e-5)


def test_cnn_classifier_mask_invariance_with_bigru():
    paddle.seed(0)
    model = ICHSequenceClassifier(CNNEncoder(arch="resnet18"), BiGRUSequenceHead(hidden_size=16)).eval()
    x, mask = series(2, 4, 32), mask_of([2, 4], 4)
    with paddle.no_grad():
        batched = model(x, mask)["sequence"].numpy()
        alone = model(x[:1, :2])["sequence"].numpy()
    np.testing.assert_allclose(batched[0, :2], alone[0], atol=1e-5)


def test_slice_only_model():
    model = ICHSequenceClassifier(tiny_swin(img_size=32, depths=[1, 1], num_heads=[1, 2]), sequential=False)
    assert model.head is None
    x = series(1, 3, 32)
    model.train()
    out = model(x, mask_of([3], 3))
    assert list(out) == ["slice"] and out["slice"].shape == [1, 3, 6]
    model.eval()
    out = model(x)
    assert list(out) == ["slice"] and out["slice"].shape == [1, 3, 6]


def test_long_series_of_100_slices():
    model = ICHSequenceClassifier(tiny_swin(img_size=32, embed_dim=8, depths=[1, 1], num_heads=[1, 2], chunk_size=32)).eval()
    with paddle.no_grad():
        out = model(series(1, 100, 32), mask_of([100], 100))["sequence"]
    assert out.shape == [1, 100, 6] and np.isfinite(out.numpy()).all()


def test_yaml_builds_nested_encoder_and_head():
    cfg = Config(data={"model": {
        "type": "ICHSequenceClassifier",
        "encoder": {"type": "SwinTransformer", "variant": None, "img_size": 32, "embed_dim": 8, "depths": [1, 1],
                    "num_heads": [1, 2], "window_size": 4, "block": "prenorm", "pretrained": None},
        "head": {"type": "TransformerSequenceHead", "num_layers": 2, "nhead": 2, "dim_feedforward": 200, "dropout": 0.2},
        "sequential": True,
    }})
    model = cfg.build("model")
    assert isinstance(model, ICHSequenceClassifier) and model.head.d_model == model.encoder.feature_dim == 16
    with pytest.raises(ValueError, match="d_model=32"):
        ICHSequenceClassifier(model.encoder, TransformerSequenceHead(d_model=32))
    with pytest.raises(ValueError, match=r"model.head has no 'type'.*replaces the\s+whole dict"):
        ICHSequenceClassifier(model.encoder, {"init_range": 0.0})  # what -o model.head={init_range: 0} gives
    with pytest.raises(ValueError, match="model.encoder has no 'type'"):
        ICHSequenceClassifier({"arch": "resnet18"})


@pytest.mark.slow  # full-size model
def test_paper_configuration_has_95_98_million_parameters():
    cfg = Config(os.path.join(BASE_MODELS, "swin_base_paper.yml"))
    model = cfg.build("model")  # no forward at 224 px: construction only
    enc = model.encoder
    assert [len(layer.blocks) for layer in enc.layers] == [2, 2, 18, 2]
    assert enc.patch_embed.proj.weight.shape == [128, 3, 4, 4] and enc.feature_dim == 1024
    assert [layer.blocks[0].attn.num_heads for layer in enc.layers] == [4, 8, 16, 32]
    assert enc.layers[0].blocks[0].postnorm and enc.layers[0].blocks[0].window_size == 7
    rates = [blk.drop_path.p for layer in enc.layers for blk in layer.blocks]
    np.testing.assert_allclose(rates, np.linspace(0, 0.5, 24))
    assert abs(params(model) - 95.98e6) <= 0.005 * 95.98e6


@pytest.mark.slow  # full-size model
def test_all_base_model_configs_build():
    for name in ("swin_tiny", "resnet18", "resnet50", "densenet121", "demo_cnn"):
        model = Config(os.path.join(BASE_MODELS, f"{name}.yml")).build("model")
        assert isinstance(model, ICHSequenceClassifier) and model.head.d_model == model.encoder.feature_dim


# ---------------------------------------------------------------- weights


def read_keys(name: str) -> dict[str, tuple[int, ...]]:
    keys = {}
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("#") or not line.strip():
                continue
            key, shape = line.rstrip("\n").split("\t")
            keys[key] = tuple(int(v) for v in shape.split(","))
    return keys


def random_state(keys: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    rng = np.random.RandomState(0)
    return {k: (rng.randint(0, 10, s).astype("int64") if k.endswith("_index") else rng.randn(*s).astype("float32")) for k, s in keys.items()}


def test_paddle_vision_key_fixture_is_current():
    import paddle.vision.models as pvm

    current = {k: tuple(v.shape) for k, v in pvm.resnet18(pretrained=False).state_dict().items()}
    assert current == read_keys("paddle_vision_resnet18_keys.txt")


@pytest.mark.slow  # full-size model
def test_load_paddleclas_swin_weights_from_safetensors(tmp_path):
    from safetensors.numpy import save_file

    state = random_state(read_keys("paddleclas_swin_tiny_keys.txt"))
    path = str(tmp_path / "swin_tiny.safetensors")
    save_file(state, path)
    enc = SwinTransformer(variant="tiny", img_size=224, drop_path_rate=0.2)
    report = load_pretrained(enc, path)
    assert report.key_map == "paddleclas_swin"
    assert sorted(k for k, _, _ in report.mismatched) == ["head.bias", "head.weight"]  # 1000 classes vs 6
    assert report.missing == [] and report.unexpected == []
    assert len(report.skipped) == sum(k.endswith(("relative_position_index", "attn_mask")) for k in state)
    assert len(report.loaded) == len(state) - len(report.skipped) - 2
    key = "layers.2.blocks.5.attn.relative_position_bias_table"
    np.testing.assert_array_equal(enc.state_dict()[key].numpy(), state[key])


@pytest.mark.slow  # full-size model
def test_load_paddle_vision_resnet_weights_from_pdparams(tmp_path):
    state = random_state(read_keys("paddle_vision_resnet18_keys.txt"))
    state["fc.weight"] = np.random.RandomState(1).randn(512, 6).astype("float32")  # a 6-class fine-tune
    state["fc.bias"] = np.zeros(6, "float32")
    path = str(tmp_path / "resnet18.pdparams")
    paddle.save(state, path)
    enc = CNNEncoder(arch="resnet18", pretrained=path)
    ours = enc.state_dict()
    np.testing.assert_array_equal(ours["backbone.bn1._mean"].numpy(), state["bn1._mean"])
    np.testing.assert_array_equal(ours["backbone.layer4.1.conv2.weight"].numpy(), state["layer4.1.conv2.weight"])
    np.testing.assert_array_equal(ours["head.weight"].numpy(), state["fc.weight"])
    report = load_pretrained(enc, path, key_map="paddle_vision")
    assert report.missing == [] and report.mismatched == [] and len(report.loaded) == len(state)


def test_pretrained_errors_name_the_file(tmp_path):
    missing = str(tmp_path / "nope.pdparams")
    with pytest.raises(FileNotFoundError, match="nope.pdparams"):
        CNNEncoder(arch="resnet18", pretrained=missing)
    unrelated = str(tmp_path / "other.pdparams")
    paddle.save({"foo.weight": np.zeros(3, "float32")}, unrelated)
    with pytest.raises(ValueError, match="no tensor matches"):
        load_pretrained(CNNEncoder(arch="resnet18"), unrelated, key_map="paddle_vision")


# ---------------------------------------------------------------- model_info


def test_mac_counter_matches_hand_count():
    net = nn.Sequential(nn.Conv2D(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 5))
    expected = (4 * 8 * 8) * 3 * 9 + 256 * 5
    assert model_info._conv_linear_macs(net, paddle.zeros([1, 3, 8, 8])) == expected


def test_model_info_cli(capsys):
    cfg = os.path.join(BASE_MODELS, "resnet18.yml")
    assert model_info.main(["--config", cfg, "--seq_len", "8", "-o", "model.encoder.img_size=64"]) == 0
    out = capsys.readouterr().out
    model = Config(cfg, ["model.encoder.img_size=64"]).build("model")
    assert f"parameters: {params(model) / 1e6:.2f} M total" in out and "GFLOPs per slice" in out and "multiply-accumulates" in out
    info = model_info.model_info(model, 64)
    assert 0.1 < info.encoder_gflops < 0.2  # ResNet-18: 1.82 GMACs at 224 px, x (64/224)^2


def test_model_info_counts_the_bigru_head():
    model = ICHSequenceClassifier(CNNEncoder(arch="resnet18"), BiGRUSequenceHead(hidden_size=16, num_layers=2))
    info = model_info.model_info(model, 32, seq_len=10)
    # per slice: layer 1, two directions, 3 gates x 16 x (512 + 16); layer 2 input 32; decoder 32 x 6
    expected = 2 * 3 * 16 * (512 + 16) + 2 * 3 * 16 * (32 + 16) + 32 * 6
    assert info.head_gflops * 1e9 == pytest.approx(expected)


@pytest.mark.parametrize("optimizer", [paddle.optimizer.AdamW, paddle.optimizer.Momentum])
def test_head_lr_mult_scales_only_the_sequence_head(optimizer):
    model = ICHSequenceClassifier(CNNEncoder(arch="mobilenet_v3_small", scale=0.5), head_lr_mult=0.0)
    opt = optimizer(learning_rate=1e-2, parameters=model.parameters())
    head_before = [p.numpy().copy() for p in model.head.parameters()]
    encoder_before = model.encoder.head.weight.numpy().copy()
    out = model(paddle.randn([1, 4, 3, 32, 32]), paddle.ones([1, 4], "bool"))
    (out["sequence"].sum() + out["slice"].sum()).backward()
    opt.step()
    assert all(np.array_equal(b, p.numpy()) for b, p in zip(head_before, model.head.parameters()))
    assert not np.array_equal(encoder_before, model.encoder.head.weight.numpy())
    with pytest.raises(ValueError, match="head_lr_mult"):
        ICHSequenceClassifier(CNNEncoder(arch="resnet18"), head_lr_mult=-1)


def test_frozen_encoder_keeps_its_weights_and_batchnorm_statistics():
    paddle.seed(0)
    encoder = CNNEncoder(arch="mobilenet_v3_small", scale=0.5, bn_momentum=0.5)
    model = ICHSequenceClassifier(encoder, TransformerSequenceHead(dim_feedforward=16), freeze_encoder=True, residual=True)
    before = {k: v.numpy().copy() for k, v in model.encoder.state_dict().items()}  # incl. BN running stats
    head_before = model.head.decoder.weight.numpy().copy()
    opt = paddle.optimizer.AdamW(learning_rate=1e-2, parameters=model.parameters())
    model.train()
    assert model.training and model.head.training and not any(m.training for m in model.encoder.sublayers())
    x, mask = series(2, 4, 32), mask_of([4, 3], 4)
    model(x, mask)["sequence"].mean().backward()
    opt.step()
    after = model.encoder.state_dict()
    for key, value in before.items():
        np.testing.assert_array_equal(after[key].numpy(), value, err_msg=key)
    assert not np.array_equal(model.head.decoder.weight.numpy(), head_before)
    with pytest.raises(ValueError, match="nothing to train"):
        ICHSequenceClassifier(CNNEncoder(arch="mobilenet_v3_small", scale=0.5), sequential=False, freeze_encoder=True)


def test_residual_head_starts_as_the_slice_model():
    paddle.seed(0)
    model = ICHSequenceClassifier(tiny_swin(), TransformerSequenceHead(init_range=0.0), residual=True)
    x, mask = series(2, 5, 64), mask_of([3, 5], 5)
    model.train()
    out = model(x, mask)
    seq, sl = out["sequence"], out["slice"]
    np.testing.assert_allclose(seq.numpy(), sl.numpy(), atol=1e-6)
    assert np.abs(sl.numpy()).max() > 0
    # Not a copy: the sequence output has its own gradient path through the head.
    seq.mean().backward()
    assert np.abs(model.head.decoder.weight.grad.numpy()).max() > 0
