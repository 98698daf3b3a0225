"""Scanner-robustness augmentations: one draw per series, HU-consistent across the windows."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from medseg.constants import DEFAULT_WINDOWS
from medseg.data.robust_transforms import BlurSharpen, GammaContrast, ScannerNoise, WindowJitter
from medseg.data.transforms import Compose
from medseg.data.windows import apply_windows
from medseg.registry import TRANSFORMS, build


def hu_slices(n: int = 4, size: int = 48) -> list[np.ndarray]:
    """Windowed head-like slices: air, a skull ring, brain with a gradient and a bleed."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    r = np.hypot(yy, xx)
    slices = []
    for k in range(n):
        hu = np.full((size, size), -1000.0)
        hu[r < 0.45 * size] = 1200.0
        hu[r < 0.4 * size] = 20.0 + 25.0 * (xx[r < 0.4 * size] / size + 0.5) + k
        hu[(np.abs(yy) < 4) & (np.abs(xx - 5) < 4)] = 70.0
        slices.append(hu)
    return slices


def windowed(slices: list[np.ndarray]) -> list[np.ndarray]:
    return [apply_windows(hu) for hu in slices]


@pytest.mark.parametrize("transform", [WindowJitter(prob=1), GammaContrast(prob=1), BlurSharpen(prob=1)])
def test_one_draw_per_series_even_per_slice(transform):
    same = windowed([hu_slices(1)[0]] * 5)
    out = Compose([transform], per_slice=True)(same, np.random.default_rng(0))
    assert all(np.array_equal(out[0], o) for o in out[1:]), "every slice of a series gets the same draw"
    assert out[0].dtype == np.uint8 and out[0].shape == same[0].shape
    draws = [Compose([transform], per_slice=True)(same, np.random.default_rng(s))[0] for s in range(1, 8)]
    assert any(not np.array_equal(draws[0], d) for d in draws[1:]), "another series, another draw"
    again = Compose([transform], per_slice=True)(same, np.random.default_rng(3))[0]
    assert np.array_equal(again, draws[2]), "reproducible from the item's random state"


def test_window_jitter_is_one_hu_shift_in_every_window():
    slices = hu_slices(2)
    transform = WindowJitter(level_hu=(6.0, 6.0), width_scale=(1.0, 1.0), prob=1)
    out = Compose([transform])(windowed(slices), np.random.default_rng(0))
    for hu, got in zip(slices, out):
        want = apply_windows(hu - 6.0)  # the window moves up 6 HU = every HU reads 6 lower
        inside = (got > 0) & (got < 255)
        assert inside.sum() > 100 and np.abs(got.astype(int) - want.astype(int))[inside].max() <= 1
    wider = WindowJitter(level_hu=(0.0, 0.0), width_scale=(1.25, 1.25), prob=1)
    image = windowed(slices)[0]
    got = wider(image, np.random.default_rng(0)).astype(float)
    mid = (image > 20) & (image < 235)
    assert np.allclose(got[mid] - 127.5, (image[mid] - 127.5) / 1.25, atol=1.01)
    assert np.array_equal(got[image == 0], image[image == 0]) and np.all(got[image == 255] == 255)


def test_scanner_noise_is_hu_noise_seen_through_each_window():
    slices = [np.where(h > -1000, 40.0, h) for h in hu_slices(3)]  # flat brain: window mid-grey
    images = windowed(slices)
    out = Compose([ScannerNoise(sigma_hu=(8.0, 8.0), prob=1)], per_slice=True)(images, np.random.default_rng(1))
    brain = (slices[0] == 40.0)
    for c, (_, width) in enumerate(DEFAULT_WINDOWS):
        diff = out[0][..., c].astype(float) - images[0][..., c]
        assert diff[brain].std() == pytest.approx(8.0 * 255 / width, rel=0.2)
    assert not np.array_equal(out[0], out[1]), "a new noise field per slice"
    assert np.array_equal(out[0][images[0] == 0], images[0][images[0] == 0]), "air stays black"
    coarse = ScannerNoise(sigma_hu=(8.0, 8.0), grain_px=(2.0, 2.0), prob=1)(images[0], np.random.default_rng(1))
    d = coarse[..., 0].astype(float) - images[0][..., 0]
    d[~brain] = np.nan
    pairs = np.stack([d[:, 1:].ravel(), d[:, :-1].ravel()])
    pairs = pairs[:, ~np.isnan(pairs).any(axis=0)]
    assert np.corrcoef(pairs)[0, 1] > 0.5, "a coarse grain correlates neighbours"


def test_blur_softens_and_sharpen_crisps_edges():
    image = windowed(hu_slices(1))[0]
    edges = lambda x: np.abs(np.diff(x.astype(float), axis=1)).mean()  # noqa: E731
    blurred = BlurSharpen(blur_sigma=(1.5, 1.5), sharp_prob=0, prob=1)(image, np.random.default_rng(0))
    sharp = BlurSharpen(sharpen=(1.0, 1.0), sharp_prob=1, prob=1)(image, np.random.default_rng(0))
    assert edges(blurred) < edges(image) < edges(sharp)


def test_gamma_contrast_curve():
    image = np.tile(np.arange(256, dtype=np.uint8)[None, :, None], (4, 1, 3))
    darker = GammaContrast(gamma=(1.5, 1.5), contrast=(1.0, 1.0), prob=1)(image, np.random.default_rng(0))
    assert darker[0, 128, 0] < 128 and darker[0, 0, 0] == 0 and darker[0, 255, 0] == 255
    flatter = GammaContrast(gamma=(1.0, 1.0), contrast=(0.5, 0.5), prob=1)(image, np.random.default_rng(0))
    assert np.ptp(flatter[0, :, 0].astype(int)) == pytest.approx(128, abs=1)


def test_prob_zero_keeps_the_image_and_yaml_builds_them():
    image = windowed(hu_slices(1))[0]
    assert np.array_equal(WindowJitter(prob=0)(image, np.random.default_rng(0)), image)
    spec = [{"type": "ScannerNoise", "sigma_hu": [0, 12]}, {"type": "BlurSharpen"}, {"type": "GammaContrast"},
            {"type": "WindowJitter", "level_hu": [-5, 5]}]
    built = build(spec, TRANSFORMS, "t")
    assert [type(t).__name__ for t in built] == ["ScannerNoise", "BlurSharpen", "GammaContrast", "WindowJitter"]
    assert Compose(built)([image], np.random.default_rng(0))[0].shape == image.shape
    with pytest.raises(ValueError, match="level_hu"):
        WindowJitter(level_hu=(5, -5))
    copy = pickle.loads(pickle.dumps(built[3]))
    assert copy._rng is None and copy.level_hu == (-5.0, 5.0), "workers start without a stale draw"
