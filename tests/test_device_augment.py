"""Augmentation on the device (augment_on_device): the CPU half draws exactly what the CPU path
draws, and the batched affine_grid + grid_sample warp gives the CPU path's images within
interpolation rounding."""

import os

import numpy as np
import pytest

from medseg.data.cache import write_cache_file
from medseg.data.collate import collate_series
from medseg.data.dataset import RSNASeriesDataset
from medseg.data.device_augment import to_model_input
from medseg.data.transforms import (HorizontalFlip, Normalize, RandomResizedCrop, RandomRotation, Resize, ToCHW,
                                    VerticalFlip)
from medseg.constants import DEFAULT_WINDOWS

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def paper(size=48):
    return [RandomResizedCrop(size, (0.8, 1.2)), HorizontalFlip(), VerticalFlip(), RandomRotation(180), Normalize(MEAN, STD), ToCHW()]


def smooth_prepared(root, n_series=3, seed=0):
    """Head-like smooth content (bilinear rounding differs between cv2's fixed point and float
    sampling by at most a grey level or two on smooth images) with crops of different sizes."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "cache"), exist_ok=True)
    rows = []
    for k in range(n_series):
        n = int(rng.integers(3, 7))
        yy, xx = np.mgrid[:64, :64]
        boxes, crops = [], []
        for i in range(n):
            y0, x0 = int(rng.integers(0, 10)), int(rng.integers(0, 10))
            y1, x1 = 64 - int(rng.integers(0, 16)), 64 - int(rng.integers(0, 12))
            blob = np.exp(-(((yy - 30 - 4 * i) / 14.0) ** 2 + ((xx - 32) / 11.0) ** 2))
            frame = np.stack([np.clip(255 * blob * g + 20 * np.sin(xx / 6.0 + k), 0, 255) for g in (1.0, 0.8, 0.5)], -1)
            boxes.append((y0, y1, x0, x1))
            crops.append(np.ascontiguousarray(frame[y0:y1, x0:x1].astype(np.uint8)))
        write_cache_file(os.path.join(root, "cache", f"S{k}.hcc"), (64, 64), DEFAULT_WINDOWS,
                         ((b, c, None) for b, c in zip(boxes, crops)))
        for i, (y0, y1, x0, x1) in enumerate(boxes):
            rows.append(f"S{k}_{i},S{k},{i},0,0,0,0,0,0,{y0},{y1},{x0},{x1},cache/S{k}.hcc")
    header = "slice_id,series_id,slice_idx,epidural,intraparenchymal,intraventricular,subarachnoid,subdural,any,crop_y0,crop_y1,crop_x0,crop_x1,cache"
    with open(os.path.join(root, "train_meta.csv"), "w") as fh:
        fh.write("\n".join([header, *rows]) + "\n")
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return smooth_prepared(str(tmp_path_factory.mktemp("smooth")))


def device_images(dataset, keys):
    batch = to_model_input(collate_series([dataset[k] for k in keys]))
    return batch["image"].numpy(), np.asarray(batch["mask"])


def model_image(item):
    """A CPU-path item as the model sees it (uint8 slices normalised in the batch step)."""
    return to_model_input(collate_series([item]))["image"].numpy()[0]


@pytest.mark.parametrize("per_slice", [True, False])
def test_same_draws_same_images_within_interpolation(root, per_slice):
    cpu = RSNASeriesDataset(root, "train", paper(), per_slice=per_slice, seed=5)
    dev = RSNASeriesDataset(root, "train", paper(), per_slice=per_slice, seed=5, augment_on_device=True)
    for index in range(len(cpu)):
        for epoch in (0, 3):
            expected = model_image(cpu[(index, epoch)])
            got, _ = device_images(dev, [(index, epoch)])
            diff = np.abs(got[0] - expected) * np.asarray(STD, np.float32)[:, None, None] * 255  # grey levels
            assert got[0].shape == expected.shape
            # cv2 weights bilinear taps in 1/32 steps and rounds to uint8; the device samples in float.
            # A pixel on the edge of a cut (the corners a rotation brings in) may fall either side.
            assert np.mean(diff) < 0.6 and np.mean(diff > 3) < 0.01, (index, epoch, np.mean(diff), np.mean(diff > 3))


def test_eval_resize_on_the_device(root):
    transforms = [Resize(40), Normalize(MEAN, STD), ToCHW()]
    cpu = RSNASeriesDataset(root, "train", transforms)
    dev = RSNASeriesDataset(root, "train", [Resize(40), Normalize(MEAN, STD), ToCHW()], augment_on_device=True)
    got, _ = device_images(dev, [0])
    diff = np.abs(got[0] - model_image(cpu[0])) * np.asarray(STD, np.float32)[:, None, None] * 255
    assert diff.max() < 1.5


def test_padded_batch_equals_items_alone(root):
    """Series of different lengths and crop sizes in one batch: each equals its own batch of one;
    padded slices are zero."""
    dev = RSNASeriesDataset(root, "train", paper(), seed=1, augment_on_device=True)
    keys = [(0, 2), (1, 2), (2, 2)]
    batched, mask = device_images(dev, keys)
    for b, key in enumerate(keys):
        alone, _ = device_images(dev, [key])
        n = alone.shape[1]
        np.testing.assert_allclose(batched[b, :n], alone[0], atol=1e-4)
        assert mask[b, :n].all() and not mask[b, n:].any() and not batched[b, n:].any()


def test_items_are_deterministic_uint8_and_cheap(root):
    dev = RSNASeriesDataset(root, "train", paper(), seed=2, augment_on_device=True)
    a, b = dev[(1, 4)], dev[(1, 4)]
    assert a["image"].dtype == np.uint8 and a["image"].ndim == 4
    for key in ("image", "inverse", "cuts"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["inverse"], dev[(1, 5)]["inverse"])  # another epoch, other draws


def test_cpu_batches_pass_through_and_modes_do_not_mix(root):
    cpu = RSNASeriesDataset(root, "train", paper(), seed=2)
    dev = RSNASeriesDataset(root, "train", paper(), seed=2, augment_on_device=True)
    item = {k: v for k, v in cpu[0].items() if k != "norm"}
    batch = collate_series([{**item, "image": model_image(cpu[0])}])  # float32 slices: nothing left to do
    assert to_model_input(batch) is batch
    with pytest.raises(ValueError, match="mixes items"):
        collate_series([cpu[0], dev[1]])
    with pytest.raises(ValueError, match="either float32 slices or uint8"):
        collate_series([cpu[0], item])
    with pytest.raises(ValueError, match="normalised differently"):
        collate_series([cpu[0], {**cpu[1], "norm": cpu[1]["norm"] * 2}])


def test_transforms_the_device_cannot_do_are_refused(root):
    with pytest.raises(ValueError, match="augment_on_device.*Resize or RandomResizedCrop"):
        RSNASeriesDataset(root, "train", [HorizontalFlip(), Normalize(), ToCHW()], augment_on_device=True)


def test_loader_workers_hand_over_the_same_batches(root):
    """uint8 canvases and warps through DataLoader worker processes: the same batches as in-process."""
    import paddle

    from medseg.data.sampler import SeriesBatchSampler

    dev = RSNASeriesDataset(root, "train", paper(), seed=3, augment_on_device=True)
    images = {}
    for workers in (0, 2):
        sampler = SeriesBatchSampler(len(dev), 2, shuffle=True, seed=1)
        loader = paddle.io.DataLoader(dev, batch_sampler=sampler, collate_fn=collate_series, num_workers=workers)
        images[workers] = [to_model_input(batch)["image"].numpy() for batch in loader]
    assert len(images[0]) == 2
    for a, b in zip(images[0], images[2], strict=True):
        np.testing.assert_array_equal(a, b)


def test_uint8_batches_normalise_alike_on_host_and_device(monkeypatch):
    """The batch step's two ways to finish CPU-path uint8 slices (cv2 tables on a CPU run, Paddle
    ops on a GPU) give the same float32 bits, padded slices 0."""
    import paddle

    from medseg.data import device_augment

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (2, 3, 20, 24, 3), dtype=np.uint8)
    norm = np.array([MEAN, STD], np.float32)
    mask = np.array([[True, True, False], [True, True, True]])

    def run():
        return device_augment.normalize_batch(paddle.to_tensor(image), paddle.to_tensor(norm), paddle.to_tensor(mask)).numpy()

    host = run()
    monkeypatch.setattr(device_augment.paddle, "get_device", lambda: "gpu:0")  # the Paddle-ops branch, on this CPU
    ops = run()
    np.testing.assert_array_equal(host, ops)
    expected = (image.transpose(0, 1, 4, 2, 3) / np.float32(255) - norm[0][:, None, None]) / norm[1][:, None, None]
    np.testing.assert_allclose(host[mask], expected[mask], atol=1e-6)
    assert host.shape == (2, 3, 3, 20, 24) and not host[0, 2].any()


def released(size=48):
    return [RandomResizedCrop(size, (0.8, 1.2), sampler="released", interpolation="cubic"), HorizontalFlip(),
            VerticalFlip(), RandomRotation(180, centre="released"), Normalize(MEAN, STD), ToCHW()]


def test_bicubic_sampling_is_cv2_inter_cubic():
    """grid_sample_bicubic equals cv2.warpAffine(INTER_CUBIC, zero border) within rounding; the
    bilinear grid_sample does not."""
    import cv2
    import paddle
    import paddle.nn.functional as F

    from medseg.data.device_augment import grid_sample_bicubic
    from medseg.data.transforms import pixel_to_unit

    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 256, (60, 50, 3), dtype=np.uint8), (0, 0), 1.5)
    matrix = np.eye(3)
    matrix[:2] = cv2.getRotationMatrix2D((20, 25), 37, 0.7)
    out_hw = (40, 44)
    expected = cv2.warpAffine(img, matrix[:2], out_hw[::-1], flags=cv2.INTER_CUBIC).astype(np.float32)
    theta = (pixel_to_unit(img.shape[:2]) @ np.linalg.inv(matrix) @ np.linalg.inv(pixel_to_unit(out_hw)))[:2]
    grid = F.affine_grid(paddle.to_tensor(theta[None].astype(np.float32)), [1, 3, *out_hw], align_corners=False)
    x = paddle.to_tensor(img.transpose(2, 0, 1)[None].astype(np.float32))
    cubic = grid_sample_bicubic(x, grid).clip(0, 255).numpy()[0].transpose(1, 2, 0)
    linear = F.grid_sample(x, grid, align_corners=False).numpy()[0].transpose(1, 2, 0)
    assert np.abs(cubic - expected).max() <= 1.0 and np.abs(cubic - expected).mean() < 0.3  # cv2: 1/32 px, uint8
    assert np.abs(linear - expected).mean() > 3 * np.abs(cubic - expected).mean()
    outside = (expected == 0).all(-1)  # beyond the image: zero, as cv2's constant border
    assert outside.sum() > 100 and cubic[outside].max() < 0.5


def test_released_cubic_on_the_device_matches_the_cpu(root):
    """The released sampler with bicubic warps: the device draws the CPU's boxes and samples as
    cv2.INTER_CUBIC (away from zeroed corners and black background, within a grey level where
    bilinear sampling is not)."""
    import cv2

    cpu = RSNASeriesDataset(root, "train", released(), seed=5)
    dev = RSNASeriesDataset(root, "train", released(), seed=5, augment_on_device=True)
    for index in range(len(cpu)):
        assert dev[(index, 1)]["interpolation"] == "cubic"
        item = cpu[(index, 1)]
        inner = np.stack([cv2.erode((s.max(-1) > 0).astype(np.uint8), np.ones((5, 5))) > 0 for s in item["image"]])
        expected = model_image(item)
        for interpolation, most in (("cubic", 0.01), ("linear", None)):
            batch = collate_series([dev[(index, 1)]])
            batch["interpolation"] = interpolation
            got = to_model_input(batch)["image"].numpy()[0]
            diff = np.abs(got - expected) * np.asarray(STD, np.float32)[:, None, None] * 255  # grey levels
            off = np.mean(diff.transpose(0, 2, 3, 1)[inner] > 1)
            if most is None:
                assert off > 0.02, (index, off)  # bilinear would be told apart
                continue
            assert np.mean(diff) < 0.6 and np.mean(diff > 3) < 0.01, (index, np.mean(diff), np.mean(diff > 3))
            assert off < most, (index, off)
    linear = RSNASeriesDataset(root, "train", paper(), seed=5, augment_on_device=True)
    with pytest.raises(ValueError, match="planned by different transforms"):
        collate_series([dev[0], linear[1]])
