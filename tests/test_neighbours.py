"""Neighbour-slice ("2.5D") input: ``neighbours: k`` stacks slices s-k..s+k as channels."""

from __future__ import annotations

import os

import numpy as np
import paddle
import pandas as pd
import pytest

from engine_fixtures import make_prepared
from medseg.config import Config
from medseg.constants import DEFAULT_WINDOWS, LABELS, TEST_DIR
from medseg.data.build import build_dataset, build_eval_transforms, eval_transform_config
from medseg.data.cache import write_cache_file
from medseg.data.collate import collate_series
from medseg.data.dataset import RSNASeriesDataset
from medseg.data.device_augment import to_model_input
from medseg.data.meta import meta_path, write_meta
from medseg.data.neighbours import stack_neighbours
from medseg.data.transforms import Normalize
from medseg.engine import checkpoint as ckpt
from medseg.models import load_pretrained
from medseg.models.encoders.cnn import CNNEncoder
from medseg.models.encoders.swin import SwinTransformer
from medseg.registry import TRANSFORMS, ConfigError, build
from predict_fixtures import write_checkpoint, write_config

IMAGENET = {"type": "Normalize", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
EVAL = [{"type": "Resize", "size": 32}, IMAGENET, {"type": "ToCHW"}]
TRAIN = [{"type": "RandomResizedCrop", "size": 32, "scale": [0.7, 1.2]}, {"type": "HorizontalFlip"},
         {"type": "VerticalFlip"}, {"type": "RandomRotation", "degrees": 40}, IMAGENET, {"type": "ToCHW"}]
RELEASED = [{"type": "RandomResizedCrop", "size": 32, "sampler": "released", "interpolation": "cubic"},
            {"type": "RandomRotation", "degrees": 40, "centre": "released"}, IMAGENET, {"type": "ToCHW"}]


def transforms(spec):
    return build([dict(t) for t in spec], TRANSFORMS, "test")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_prepared(str(tmp_path_factory.mktemp("nb")), {"train": 3, "val": 2}, size=40, min_slices=4)


def test_stack_neighbours_places_each_neighbour_in_frame_coordinates():
    rng = np.random.default_rng(0)
    frames = rng.integers(1, 256, size=(4, 12, 14, 3), dtype=np.uint8)  # nonzero: a pasted 0 means "outside"
    boxes = np.array([[0, 12, 0, 14], [2, 9, 3, 12], [4, 12, 0, 6], [1, 5, 10, 14]])
    crops = [frames[i, y0:y1, x0:x1] for i, (y0, y1, x0, x1) in enumerate(boxes)]
    stacked = stack_neighbours(crops, boxes, 1)
    for i, (y0, y1, x0, x1) in enumerate(boxes):
        assert stacked[i].shape == (y1 - y0, x1 - x0, 9) and stacked[i].dtype == np.uint8
        for block, j in enumerate((max(i - 1, 0), i, min(i + 1, 3))):  # edges repeat the edge slice
            inside = np.zeros((12, 14), bool)
            inside[boxes[j, 0]:boxes[j, 1], boxes[j, 2]:boxes[j, 3]] = True
            expected = np.where(inside[..., None], frames[j], 0)[y0:y1, x0:x1]
            np.testing.assert_array_equal(stacked[i][..., 3 * block:3 * block + 3], expected, err_msg=f"slice {i}, block {block}")
    # slice 0 in slice 1's box: the pixels of frame 0 at frame rows 2..9, columns 3..12
    np.testing.assert_array_equal(stacked[1][..., :3], frames[0, 2:9, 3:12])
    # disjoint boxes: slice 3's box lies outside slice 2's, so its block is all zero
    assert not stacked[2][..., 6:].any()
    # k = 2 on a 4-slice series: slice 0's blocks are slices 0, 0, 0, 1, 2
    wide = stack_neighbours(crops, boxes, 2, centres=[0])
    assert len(wide) == 1 and wide[0].shape == (12, 14, 15)
    for block in range(3):
        np.testing.assert_array_equal(wide[0][..., 3 * block:3 * block + 3], crops[0])
    assert all(a is b for a, b in zip(stack_neighbours(crops, boxes, 0), crops))  # k = 0: the crops themselves
    with pytest.raises(ValueError, match="box"):
        stack_neighbours(crops, boxes[::-1], 1)


@pytest.mark.parametrize("device", [False, True])
def test_neighbours_zero_is_bit_identical(root, device):
    plain = RSNASeriesDataset(root, "train", transforms(TRAIN), seed=4, augment_on_device=device)
    zero = RSNASeriesDataset(root, "train", transforms(TRAIN), seed=4, augment_on_device=device, neighbours=0)
    for key in [(0, 0), (1, 3), (2, 1)]:
        a, b = plain[key], zero[key]
        assert a.keys() == b.keys()
        for name in a:
            if isinstance(a[name], np.ndarray):
                assert a[name].dtype == b[name].dtype
                np.testing.assert_array_equal(a[name], b[name], err_msg=name)
            else:
                assert a[name] == b[name], name


def test_centre_block_is_the_2d_item(root):
    flat = RSNASeriesDataset(root, "val", transforms(EVAL))
    wide = RSNASeriesDataset(root, "val", transforms(EVAL), neighbours=1)
    for index in range(len(flat)):
        a, b = flat[index], wide[index]
        assert a["image"].shape[-1] == 3 and b["image"].shape[-1] == 9
        np.testing.assert_array_equal(b["image"][..., 3:6], a["image"])
        np.testing.assert_array_equal(b["norm"], np.tile(a["norm"], (1, 3)))  # mean/std per window, tiled
        x2, x9 = (to_model_input(collate_series([item]))["image"].numpy() for item in (a, b))
        assert x9.shape[2] == 9
        np.testing.assert_array_equal(x9[:, :, 3:6], x2)
        np.testing.assert_array_equal(x9[0, 0, 0:3], x2[0, 0])  # the first slice is its own neighbour s-1
        np.testing.assert_array_equal(x9[0, -1, 6:9], x2[0, -1])  # and the last its own s+1
    loose = Normalize(mean=[0.5, 0.5], std=[0.2, 0.2])
    with pytest.raises(ValueError, match="2 values for 9 channels"):
        loose.per_channel(9)


def test_a_run_of_one_slice_gets_its_series_neighbours(root):
    """``max_slices: 1`` (the demo's stage 1) cuts a run of one slice; its neighbours still come
    from the series, not the run."""
    spec = [{"type": "Normalize"}, {"type": "ToCHW"}]  # no geometry: the stack itself, uint8
    runs = RSNASeriesDataset(root, "train", transforms(spec), seed=1, max_slices=1, neighbours=1)
    whole = RSNASeriesDataset(root, "train", transforms(spec), neighbours=1)
    seen_inner = False
    for epoch in range(6):
        for index in range(len(runs)):
            lo, _ = runs.window(index, epoch)
            item = runs[(index, epoch)]
            crops = whole.load_slices(index)
            start = int(whole.starts[index])
            expected = stack_neighbours(crops, whole.boxes[start:start + len(crops)], 1, [lo])[0]
            np.testing.assert_array_equal(item["image"][0], expected)
            if 0 < lo < len(crops) - 1:
                seen_inner = True
                assert not np.array_equal(item["image"][0][..., 0:3], item["image"][0][..., 3:6])
    assert seen_inner


def test_pseudo_labelled_slices_keep_their_series_neighbours(tmp_path):
    """A slice the confidence filter dropped is left out of the item, but stays a neighbour."""
    from medseg.data.meta import read_meta_file
    from medseg.semi.dataset import PseudoSeriesDataset

    root = make_prepared(str(tmp_path / "p"), {"train": 2, "val": 2, "test": 2}, size=40, min_slices=5)
    table = read_meta_file(meta_path(root, "test"))
    table[list(LABELS)] = 0.25
    first = table["series_id"] == table["series_id"].iloc[0]
    dropped = table.index[first][2]
    table.loc[dropped, list(LABELS)] = np.nan  # dropped by the filter
    write_meta(meta_path(root, "test_pseudo"), table)
    pseudo = PseudoSeriesDataset(root, "test_pseudo", transforms(EVAL), neighbours=1)
    whole = RSNASeriesDataset(root, "test", transforms(EVAL), neighbours=1)
    index = pseudo.series_ids.index(table["series_id"].iloc[0])
    item, full = pseudo[index], whole[whole.series_ids.index(pseudo.series_ids[index])]
    kept = [i for i, sid in enumerate(full["slice_ids"]) if sid != table.loc[dropped, "slice_id"]]
    assert item["slice_ids"] == [full["slice_ids"][i] for i in kept] and len(kept) == len(full["slice_ids"]) - 1
    np.testing.assert_array_equal(item["image"], full["image"][kept])  # slice 1's s+1 and slice 3's s-1 are slice 2


def identical_slices_root(folder: str, n: int = 4, size: int = 36) -> str:
    """A prepared root of one series whose slices (and head boxes) are all the same image."""
    rng = np.random.default_rng(7)
    image = rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)
    box = (3, size - 2, 1, size - 4)
    os.makedirs(os.path.join(folder, "cache"), exist_ok=True)
    write_cache_file(os.path.join(folder, "cache", "ID_same.hcc"), (size, size), DEFAULT_WINDOWS,
                     ((box, image[box[0]:box[1], box[2]:box[3]], None) for _ in range(n)))
    rows = [{"slice_id": f"ID_same{i:02d}", "series_id": "ID_same", "study_id": "ST", "patient_id": "P", "slice_idx": i,
             "position": 5.0 * i, "spacing": 5.0, "fold": 0, "crop_y0": box[0], "crop_y1": box[1], "crop_x0": box[2],
             "crop_x1": box[3], "cache": "cache/ID_same.hcc", **{name: 0.0 for name in LABELS}} for i in range(n)]
    write_meta(meta_path(folder, "train"), pd.DataFrame(rows))
    return folder


@pytest.mark.parametrize("spec,device", [(TRAIN, False), (TRAIN, True), (RELEASED, False), (RELEASED, True)],
                         ids=["cpu", "device", "cpu-cubic", "device-cubic"])
def test_one_warp_for_all_neighbours(tmp_path, spec, device):
    root = identical_slices_root(str(tmp_path))
    dataset = RSNASeriesDataset(root, "train", transforms(spec), seed=3, augment_on_device=device, neighbours=1)
    for epoch in range(3):
        image = to_model_input(collate_series([dataset[(0, epoch)]]))["image"].numpy()[0]
        assert image.shape == (4, 9, 32, 32)
        np.testing.assert_array_equal(image[:, 0:3], image[:, 3:6])
        np.testing.assert_array_equal(image[:, 6:9], image[:, 3:6])
        assert not np.array_equal(image[0], image[1])  # per-slice draws: the slices were warped differently


def test_intensity_transforms_treat_every_neighbour_alike():
    from medseg.data.robust_transforms import BlurSharpen, GammaContrast, ScannerNoise, WindowJitter

    block = np.random.default_rng(4).integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
    stack = np.concatenate([block] * 3, axis=2)
    for transform in (ScannerNoise(sigma_hu=(5.0, 10.0), grain_px=(1.0, 2.0)), WindowJitter(), GammaContrast(), BlurSharpen()):
        params = transform.draw(np.random.default_rng(9))
        out = transform.apply(stack, params)
        assert out.shape == stack.shape and not np.array_equal(out, stack), transform
        for k in (1, 2):
            np.testing.assert_array_equal(out[..., 3 * k:3 * k + 3], out[..., :3], err_msg=repr(transform))
        if not isinstance(transform, ScannerNoise):  # its noise comes from a generator the call consumes
            np.testing.assert_array_equal(out[..., :3], transform.apply(block, params), err_msg=repr(transform))


def _bn_from_data(layer: paddle.nn.Layer, x: paddle.Tensor) -> None:
    """BatchNorm statistics of one batch (an untrained MobileNet otherwise pools features of ~1e-8,
    and any input would give the same output)."""
    for sub in layer.sublayers():
        if isinstance(sub, paddle.nn.layer.norm._BatchNormBase):
            sub._momentum = 0.0
    layer.train()
    with paddle.no_grad():
        layer(x)
    layer.eval()


def _tiny_swin(**kw) -> SwinTransformer:
    return SwinTransformer(variant=None, img_size=32, embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=4,
                           drop_path_rate=0.0, **kw)


@pytest.mark.parametrize("make", [lambda **kw: CNNEncoder(arch="mobilenet_v3_small", **kw), _tiny_swin], ids=["cnn", "swin"])
def test_widened_encoder_starts_as_the_2d_model(tmp_path, make):
    rng = np.random.default_rng(0)
    x2 = paddle.to_tensor(rng.normal(size=(4, 3, 32, 32)).astype(np.float32))
    others = [paddle.to_tensor(rng.normal(size=(4, 3, 32, 32)).astype(np.float32)) for _ in range(2)]
    x9 = paddle.concat([others[0], x2, others[1]], axis=1)
    paddle.seed(11)
    flat = make()
    _bn_from_data(flat, x2)
    flat_out = flat(x2).numpy()
    assert np.abs(flat(others[0]).numpy() - flat_out).max() > 1e-3  # the output does depend on the image
    path = str(tmp_path / "flat.pdparams")
    paddle.save(flat.state_dict(), path)

    paddle.seed(11)  # the same draws: a random widened model is the random 2-D one plus zero blocks
    wide = make(neighbours=1)
    wide.eval()
    assert wide.in_chans == 9
    kernel = dict(wide.named_parameters())[f"{wide.input_conv}.weight"].numpy()
    np.testing.assert_array_equal(kernel[:, 3:6], dict(flat.named_parameters())[f"{wide.input_conv}.weight"].numpy())
    assert not kernel[:, :3].any() and not kernel[:, 6:].any()

    paddle.seed(12)
    loaded = make(neighbours=1, pretrained=path)  # 3-channel weights: the centre block, zeros elsewhere
    loaded.eval()
    np.testing.assert_allclose(loaded(x9).numpy(), flat_out, atol=1e-5, rtol=0)
    report = load_pretrained(loaded, path)
    assert [key for key, _ in report.widened] == [f"{loaded.input_conv}.weight"] and not report.mismatched


def test_pretrained_2d_checkpoint_loads_into_a_25d_model(tmp_path):
    """``train.py --pretrained`` (a non-strict load) widens a 2-D checkpoint; a strict load
    (resume, infer, export) refuses it."""
    flat_cfg = write_config(str(tmp_path / "flat.yml"))
    wide_cfg = str(tmp_path / "wide.yml")
    with open(wide_cfg, "w", encoding="utf-8") as fh:
        fh.write(f"_base_: {flat_cfg}\nneighbours: 1\n")
    rng = np.random.default_rng(1)
    x2 = rng.normal(size=(1, 3, 3, 64, 64)).astype(np.float32)
    x9 = np.concatenate([rng.normal(size=x2.shape), x2, rng.normal(size=x2.shape)], axis=2).astype(np.float32)
    paddle.seed(3)
    flat = Config(flat_cfg).build("model")
    _bn_from_data(flat.encoder, paddle.to_tensor(x2[0]))
    folder = str(tmp_path / "ckpt")
    os.makedirs(folder)
    paddle.save(flat.state_dict(), os.path.join(folder, "model.pdparams"))
    wide = Config(wide_cfg).build("model")
    ckpt.load_params(folder, wide, strict=False)
    flat.eval()
    wide.eval()
    mask = paddle.ones([1, 3], dtype="bool")
    expected = flat(paddle.to_tensor(x2), mask)
    assert np.abs(flat(paddle.to_tensor(x9[:, :, :3]), mask)["slice"].numpy() - expected["slice"].numpy()).max() > 1e-3
    for key, value in expected.items():
        np.testing.assert_allclose(wide(paddle.to_tensor(x9), mask)[key].numpy(), value.numpy(), atol=1e-5, rtol=0)
    with pytest.raises(ckpt.CheckpointError, match="--pretrained"):
        ckpt.load_params(folder, Config(wide_cfg).build("model"), strict=True)


def test_config_sets_neighbours_once(tmp_path):
    path = write_config(str(tmp_path / "c.yml"))
    cfg = Config(path, ["neighbours=2"])
    assert cfg.get("model.encoder.neighbours") == 2 and cfg.get("val_dataset.neighbours") == 2
    assert "neighbours" not in Config(path).get("model.encoder")  # 0: the config stays as written
    assert "neighbours" not in cfg.get("model.head")  # a component that takes no neighbours gets none
    with pytest.raises(ConfigError, match="val_dataset.neighbours is 1 but the config's top-level neighbours is 2"):
        Config(path, ["neighbours=2", "val_dataset.neighbours=1"])
    with pytest.raises(ConfigError, match="top level"):
        Config(path, ["model.encoder.neighbours=1"])
    with pytest.raises(ConfigError, match="whole number"):
        Config(path, ["neighbours=-1"])
    assert Config(None, data=Config(path, ["neighbours=2"]).dict).dict == cfg.dict  # a saved config loads again


def test_predict_feeds_what_the_dataset_feeds(tmp_path):
    """predict's loader and prepare + RSNASeriesDataset give the same stacked model input, in
    both crop modes (the released one takes the slices foot to head), and ``medseg.predict`` on
    the DICOM folder gives infer's probabilities."""
    from medseg.engine.evaluator import predict_dataset
    from medseg.outputs.predictions import read_predictions
    from medseg.predict.__main__ import main as predict_main
    from medseg.data.prepare import prepare
    from medseg.data.synthetic import synthesize_series
    from medseg.data.synthetic.dicom_writer import write_series
    from medseg.predict.discover import list_files, scan_headers
    from medseg.predict.study import load_series, unique_slice_ids
    from medseg.predict.triage import triage_folder

    raw = tmp_path / "raw"
    (raw / TEST_DIR).mkdir(parents=True)
    write_series(synthesize_series(5, 3, size=64, n_slices=5), str(raw / TEST_DIR))
    headers, errors = scan_headers(list_files(str(raw)), progress=False)
    series = triage_folder(headers, errors, str(raw)).series
    path = str(tmp_path / "wide.yml")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f"_base_: {write_config(str(tmp_path / 'flat.yml'))}\nneighbours: 1\n")
    cfg = Config(path)
    spec = eval_transform_config(cfg)
    for crop in ("head", "released"):
        prepared = str(tmp_path / f"prepared_{crop}")
        prepare(str(raw), prepared, workers=1, crop=crop)
        dataset = build_dataset(cfg, "val_dataset", dataset_root=prepared, split="test", crop=crop)
        assert dataset.neighbours == 1
        item = dataset[0]
        loaded, bad = load_series(series[0], str(raw), DEFAULT_WINDOWS, build_eval_transforms(spec),
                                  unique_slice_ids(series, str(raw)), crop, neighbours=1)
        assert not bad and loaded.image.shape[1] == 9
        model_order = loaded.model_image()
        assert [loaded.slice_ids[i] for i in (range(5) if loaded.order is None else loaded.order)] == item["slice_ids"]
        np.testing.assert_array_equal(model_order, to_model_input(collate_series([item]))["image"].numpy()[0], err_msg=crop)

    folder = write_checkpoint(path, str(tmp_path / "ckpt"))
    model = cfg.build("model")
    ckpt.load_params(folder, model, strict=True)
    model.eval()
    infer, _ = predict_dataset(model, build_dataset(cfg, "val_dataset", dataset_root=str(tmp_path / "prepared_head"),
                                                    split="test", crop="head"), sharded=False)
    assert predict_main(["--config", path, "--model", folder, "--dicom_dir", str(raw), "--out", str(tmp_path / "out"),
                         "--no_progress", "--no_saliency"]) == 0
    predicted = read_predictions(str(tmp_path / "out" / "predictions.csv")).set_index("slice_id")
    ours = infer.set_index("slice_id")
    assert len(ours) == 5
    np.testing.assert_allclose(predicted.loc[ours.index, list(LABELS)].to_numpy(), ours[list(LABELS)].to_numpy(), atol=1e-6, rtol=0)


def test_export_takes_the_stacked_channels(tmp_path):
    from medseg.export import ExportedModel, read_meta
    from medseg.export.save import export_model

    path = str(tmp_path / "wide.yml")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f"_base_: {write_config(str(tmp_path / 'flat.yml'))}\nneighbours: 1\n")
    folder = write_checkpoint(path, str(tmp_path / "ckpt"))
    export_model(Config(path), folder, str(tmp_path / "export"))
    meta = read_meta(str(tmp_path / "export"))
    assert meta.channels == 9 and meta.extra == {"neighbours": 1}
    assert Config(str(tmp_path / "export" / "config.yml")).get("model.encoder.neighbours") == 1
    exported = ExportedModel(str(tmp_path / "export"))
    image = np.random.default_rng(2).normal(size=(1, 3, 9, 64, 64)).astype(np.float32)
    assert exported(image, np.ones((1, 3), bool)).shape == (1, 3, len(LABELS))
    from medseg.predict.run import check_export_transforms

    check_export_transforms(Config(path), str(tmp_path / "export"), 3)
    with pytest.raises(ValueError, match="exported for 9 input channels"):  # the same transforms, neighbours 0
        check_export_transforms(Config(str(tmp_path / "flat.yml")), str(tmp_path / "export"), 3)
