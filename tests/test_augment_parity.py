"""Parity with the released augmentation (easymia, arXiv 2205.07556): ``RandomResizedCrop(sampler=
"released")``, the flips and ``RandomRotation(centre="released")`` against a plain re-implementation
of the released algorithm in this file, which draws with Python's ``random`` as the release does.

The draws are compared as distributions, N = 10,000 slices per image size, on the device path
(``Compose.device_plan``) and the CPU path (``Compose.stack``), which must draw the same boxes,
flips and angles from the same random state (asserted exactly, so one distribution test covers
both). Sizes: 448 × 406 (the real GE series' crop, ~12 % fallbacks), 448 × 320 (narrow, ~55 %
fallbacks) and 40 × 33 (small: the integer rounding of the sides matters).

Power: a two-sample Kolmogorov-Smirnov test with n = m = 10,000 at alpha = 0.001 rejects when the
observed D exceeds 1.95 · sqrt(2 / 10,000) = 0.0275; a true difference of D = 0.025 is detected
with probability ~0.95 and D >= 0.03 practically always (simulated: 300 of 300 shifted uniforms).
The rates (fallback, swap, flips) go through a chi-square test on the 2 × 2 table: 0.50 against
0.53 is rejected ~80 % of the time. Each test is at alpha = 0.001 (~36 of them: ~4 % chance of a
false alarm for an arbitrary seed; the seeds are fixed). The negative controls show the same
tests reject today's "zoom" sampler, a log-uniform aspect and 5 attempts instead of 10.
"""

import math
import os
import random

import cv2
import numpy as np
import pydicom
import pytest
import yaml
from scipy import stats

from medseg.data.crop import crop_box
from medseg.data.transforms import (RELEASED_TRIES, Compose, HorizontalFlip, Normalize, RandomResizedCrop,
                                    RandomRotation, ToCHW, VerticalFlip, affine_run)
from medseg.data.windows import apply_windows
from medseg.registry import TRANSFORMS

N = 10_000
ALPHA = 1e-3
SIZES = [(448, 406), (448, 320), (40, 33)]
SCALE, RATIO = (0.8, 1.2), (3 / 4, 4 / 3)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("MEDSEG_SHARED_DIR") or os.path.join(os.path.dirname(ROOT), "shared")
KS_KEYS = ("h", "w", "y0", "x0", "box_aspect", "aspect", "tries", "angle")
RATE_KEYS = ("fallback", "swapped", "hflip", "vflip")


def released_reference(height, width, rand, tries=RELEASED_TRIES, log_aspect=False):
    """One slice's draws by the released algorithm, in its order: RandomResizedCrop.get_params
    (lazy draws), RandomHorizontalFlip, RandomVerticalFlip, RandomRotation(180)."""
    swapped, aspect, fallback = False, math.nan, True
    for attempt in range(1, tries + 1):
        target = rand.uniform(*SCALE) * (height * width)
        if log_aspect:
            aspect = math.exp(rand.uniform(math.log(RATIO[0]), math.log(RATIO[1])))
        else:
            aspect = rand.uniform(*RATIO)
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        swapped = rand.random() < 0.5
        if swapped:
            w, h = h, w
        if w <= width and h <= height:
            y0, x0, fallback = rand.randint(0, height - h), rand.randint(0, width - w), False
            break
    else:
        w = h = min(height, width)
        y0, x0, swapped, aspect = (height - w) // 2, (width - w) // 2, False, math.nan
    hflip, vflip = rand.random() < 0.5, rand.random() < 0.5
    return {"y0": y0, "x0": x0, "h": h, "w": w, "tries": attempt, "fallback": fallback, "swapped": swapped,
            "aspect": aspect, "hflip": hflip, "vflip": vflip, "angle": rand.uniform(-180, 180)}


def reference_draws(height, width, seed, **kwargs):
    rand = random.Random(seed)
    return table([released_reference(height, width, rand, **kwargs) for _ in range(N)])


def table(rows):
    out = {k: np.array([r[k] for r in rows], dtype=float) for k in rows[0]}
    out["box_aspect"] = out["w"] / out["h"]
    return out


class Recording:
    """Records the (params, input size) of every ``affine`` call: what the fused warp used."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []

    def affine(self, params, in_hw):
        self.seen.append((params, tuple(in_hw)))
        return super().affine(params, in_hw)


class RecCrop(Recording, RandomResizedCrop):
    pass


class RecHFlip(Recording, HorizontalFlip):
    pass


class RecVFlip(Recording, VerticalFlip):
    pass


class RecRotation(Recording, RandomRotation):
    pass


def recorded_run(sampler="released", size=8):
    # A small output: the draws do not depend on it, and the CPU path's warps stay cheap.
    return [RecCrop(size, SCALE, RATIO, sampler=sampler, interpolation="cubic"), RecHFlip(), RecVFlip(),
            RecRotation(180, centre="released")]


def our_draws(run, n_slices, hw):
    """Per slice: the box, tries, swap and drawn aspect, flips and angle the run's warp used."""
    crop = run[0]
    rows = []
    for (p_crop, in_hw), (p_h, _), (p_v, _), (p_r, _) in zip(*(t.seen for t in run), strict=True):
        assert in_hw == hw
        if crop.sampler == "released":
            y0, x0, h, w, tries, fallback, swapped, aspect = crop.released_crop(*in_hw, p_crop)
        else:  # the zoom sampler's box is fractional and may leave the image
            y0, x0, h, w = crop.box(*in_hw, p_crop)
            tries, fallback, swapped, aspect = 1, False, False, p_crop[1]
        rows.append({"y0": y0, "x0": x0, "h": h, "w": w, "tries": tries, "fallback": fallback, "swapped": swapped,
                     "aspect": aspect, "hflip": p_h, "vflip": p_v, "angle": p_r})
    assert len(rows) == n_slices
    return table(rows)


def mismatches(ours, ref, ks_keys=KS_KEYS, rate_keys=RATE_KEYS):
    """The statistics whose two-sample test rejects at ALPHA, with their p-values. ``aspect`` is
    the accepted attempt's aspect as drawn, before the swap (no fallbacks)."""
    out = {}
    for key in ks_keys:
        a, b = ours[key], ref[key]
        p = stats.ks_2samp(a[~np.isnan(a)], b[~np.isnan(b)]).pvalue
        if p < ALPHA:
            out[key] = p
    for key in rate_keys:
        a, b = int(ours[key].sum()), int(ref[key].sum())
        p = stats.chi2_contingency([[a, len(ours[key]) - a], [b, len(ref[key]) - b]])[1]
        if p < ALPHA:
            out[key] = p
    return out


def image(hw):
    return np.zeros((*hw, 3), np.uint8)


@pytest.fixture(scope="module")
def draws():
    """Per size: the released sampler's draws (the device path's, equal to the CPU path's) and
    the reference's.
    The CPU path (it warps every slice) runs all N slices on the real crop's size and the first
    2,000 on the others: the same random state gives the same draws slice after slice, so a
    prefix is the same sequence."""
    out = {}
    for k, hw in enumerate(SIZES):
        dev_run = recorded_run()
        _, plan = Compose([*dev_run, Normalize(), ToCHW()]).device_plan([image(hw)] * N, np.random.default_rng([7, k]))
        assert plan.interpolation == "cubic"
        cpu_run, n_cpu = recorded_run(), N if k == 0 else 2000
        Compose([*cpu_run, Normalize(), ToCHW()]).stack([image(hw)] * n_cpu, np.random.default_rng([7, k]))
        for a, b in zip(cpu_run, dev_run):
            assert a.seen == b.seen[:n_cpu]  # the same params for every slice: same boxes, flips and angles
        ours, cpu = our_draws(dev_run, N, hw), our_draws(cpu_run, n_cpu, hw)
        for key in ours:
            np.testing.assert_array_equal(ours[key][:n_cpu], cpu[key])
        for i in (0, n_cpu // 2, n_cpu - 1):  # and the device's matrices are the CPU warp's
            total = affine_run(cpu_run, [t.seen[i][0] for t in cpu_run], hw)[0]
            np.testing.assert_array_equal(plan.inverse[i], np.linalg.inv(total))
        out[hw] = ours, reference_draws(*hw, seed=100 + k)
    return out


@pytest.mark.parametrize("hw", SIZES)
def test_released_sampler_matches_the_reference_distribution(draws, hw):
    ours, ref = draws[hw]
    assert mismatches(ours, ref) == {}
    assert ours["h"].max() <= hw[0] and ours["w"].max() <= hw[1] and ours["y0"].min() >= 0  # never zooms out
    assert (ours["y0"] + ours["h"]).max() == hw[0] and ours["x0"].min() == 0  # both ends of the offset range


def test_fallback_rate_by_image_size(draws):
    rates = {}
    for hw in SIZES:
        n_ours, n_ref = int(draws[hw][0]["fallback"].sum()), int(draws[hw][1]["fallback"].sum())
        p = stats.chi2_contingency([[n_ours, N - n_ours], [n_ref, N - n_ref]])[1]
        assert p >= ALPHA, (hw, n_ours, n_ref, p)
        rates[hw] = n_ours / N, n_ref / N
    # the sizes span the fallback's range: rare on the real crop, common on the narrow one
    assert 0.08 < rates[(448, 406)][1] < 0.17 and 0.45 < rates[(448, 320)][1] < 0.65


def test_negative_controls_are_rejected(draws):
    """The same tests fail on what the release does not do."""
    hw = (448, 406)
    ours, _ = draws[hw]
    zoom = recorded_run(sampler="zoom")
    rng = np.random.default_rng(3)
    for _ in range(N):  # the zoom sampler's draws, as a fused warp takes them
        affine_run(zoom, [t.sample(rng) for t in zoom], hw)
    rejected = mismatches(our_draws(zoom, N, hw), draws[hw][1], ks_keys=("h", "w", "y0", "x0"), rate_keys=())
    assert {"h", "w", "y0", "x0"} <= set(rejected)  # today's sampler zooms out: boxes beyond the image
    log_aspect = reference_draws(*hw, seed=11, log_aspect=True)
    assert "aspect" in mismatches(ours, log_aspect)
    narrow = (448, 320)
    five_tries = reference_draws(*narrow, seed=12, tries=5)
    assert "fallback" in mismatches(draws[narrow][0], five_tries, ks_keys=(), rate_keys=("fallback",))


class Replay:
    """Python ``random``'s interface over the sampler's drawn uniforms, in the release's lazy
    order (what the box does not use, the flips and the angle, gets 0)."""

    def __init__(self, params):
        self.source = {SCALE: iter(params[0:3 * RELEASED_TRIES:3]), RATIO: iter(params[1:3 * RELEASED_TRIES:3])}
        self.swap = iter(params[2:3 * RELEASED_TRIES:3])
        self.offsets = iter(params[3 * RELEASED_TRIES:])

    def uniform(self, a, b):
        return a + (b - a) * next(self.source.get((a, b), iter([0.0])))

    def random(self):
        return next(self.swap, 0.0)

    def randint(self, a, b):
        return a + int(next(self.offsets) * (b - a + 1))


def test_released_crop_is_the_released_algorithm_on_the_same_uniforms():
    """Fed the sampler's uniforms, the reference gives the same box, bit for bit, including the
    fallback."""
    crop = RandomResizedCrop(16, SCALE, RATIO, sampler="released")
    rng = np.random.default_rng(0)
    fallbacks = 0
    for hw in [*SIZES, (9, 5), (100, 100)]:
        for _ in range(2000):
            params = crop.sample(rng)
            got = crop.released_crop(*hw, params)
            ref = released_reference(*hw, Replay(params))
            assert got[:4] == (ref["y0"], ref["x0"], ref["h"], ref["w"]), (hw, params)
            assert (got.tries, got.fallback, got.swapped) == (ref["tries"], ref["fallback"], ref["swapped"])
            assert crop.box(*hw, params) == tuple(map(float, got[:4]))
            fallbacks += got.fallback
    assert fallbacks > 1000


def test_defaults_are_unchanged_and_bad_names_refused():
    crop, rotation = RandomResizedCrop(32), RandomRotation(180)
    assert (crop.sampler, crop.interpolation, rotation.centre) == ("zoom", "linear", "exact")
    assert len(crop.sample(np.random.default_rng(0))) == 4
    np.testing.assert_allclose(rotation.affine(90.0, (10, 20))[0][:2] @ [9.5, 4.5, 1], [9.5, 4.5])  # exact centre
    released = RandomRotation(180, centre="released")
    np.testing.assert_allclose(released.affine(90.0, (10, 20))[0][:2] @ [10, 5, 1], [10, 5])  # (w / 2, h / 2)
    with pytest.raises(ValueError, match="sampler must be 'zoom' or 'released'"):
        RandomResizedCrop(32, sampler="torchvision")
    with pytest.raises(ValueError, match="interpolation must be one of"):
        RandomResizedCrop(32, interpolation="lanczos")
    with pytest.raises(ValueError, match="centre must be 'exact' or 'released'"):
        RandomRotation(180, centre="middle")


PAPER_YAML = """
- {type: RandomResizedCrop, size: 224, scale: [0.8, 1.2], sampler: released, interpolation: cubic}
- {type: HorizontalFlip, prob: 0.5}
- {type: VerticalFlip, prob: 0.5}
- {type: RandomRotation, degrees: 180, centre: released}
- {type: Normalize, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}
- {type: ToCHW}
"""


def test_released_transforms_build_from_yaml_for_both_paths():
    # the registry's classes by name (registry.build would first import every component module, ~4 s)
    transforms = [TRANSFORMS[entry.pop("type")](**entry) for entry in yaml.safe_load(PAPER_YAML)]
    crop, rotation = transforms[0], transforms[3]
    assert (crop.sampler, crop.interpolation, crop.scale, crop.ratio) == ("released", "cubic", SCALE, RATIO)
    assert rotation.centre == "released" and rotation.degrees == 180
    compose = Compose(transforms)
    assert [type(t) for t in compose.device_split()[1]] == [type(t) for t in transforms[:4]]
    _, plan = compose.device_plan([image((60, 50))] * 3, np.random.default_rng(0))
    assert plan.interpolation == "cubic" and plan.out_hw == (224, 224)


def real_head_crop():
    """A real head CT slice (GE series, slice 14) windowed and cropped as prepare does."""
    path = os.path.join(SHARED, "real_ct", "ge_head_tilted", "14.dcm")
    if not os.path.isfile(path):
        pytest.fail(f"{path} is missing: put real_ct in ../shared beside the checkout or set MEDSEG_SHARED_DIR")
    ds = pydicom.dcmread(path)
    windows = apply_windows(ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    y0, y1, x0, x1 = crop_box(windows[..., 2])
    return np.ascontiguousarray(windows[y0:y1, x0:x1])


def release_steps(img, box, hflip, vflip, angle, size=224):
    """The release's sequence with cv2: crop, bicubic resize, flips, bilinear rotation about (w/2, h/2)."""
    y0, x0, h, w = box
    out = cv2.resize(img[y0:y0 + h, x0:x0 + w], (size, size), interpolation=cv2.INTER_CUBIC)
    if hflip:
        out = cv2.flip(out, 1)
    if vflip:
        out = cv2.flip(out, 0)
    return cv2.warpAffine(out, cv2.getRotationMatrix2D((size / 2, size / 2), angle, 1), (size, size))


def test_cubic_warp_against_the_release_on_real_ct():
    """Unfused: bit for bit the release. Fused (one bicubic warp instead of bicubic + bilinear):
    a mean of ~2.6 grey levels (the number in RandomResizedCrop's docstring)."""
    img = real_head_crop()
    assert img.shape == (415, 402, 3)
    diffs = {}
    for interpolation in ("cubic", "linear"):
        run = [RandomResizedCrop(224, SCALE, sampler="released", interpolation=interpolation), HorizontalFlip(),
               VerticalFlip(), RandomRotation(180, centre="released")]
        fused, rng, diffs[interpolation] = Compose(run), np.random.default_rng(0), []
        for _ in range(20):
            params = [t.sample(rng) for t in run]
            expected = release_steps(img, run[0].released_crop(*img.shape[:2], params[0])[:4], *params[1:])
            got = fused._apply(fused._stages[0], img, params)
            diffs[interpolation].append(np.abs(got.astype(int) - expected).mean())
            if interpolation == "cubic":
                # fused: one cv2.INTER_CUBIC warp by the run's matrix, zeroed outside the crop's canvas
                total = affine_run(run, params, img.shape[:2])[0]
                plain = cv2.warpAffine(img, total[:2], (224, 224), flags=cv2.INTER_CUBIC)
                assert ((got == plain) | (got == 0)).all() and (got == plain).all(-1).mean() > 0.5
                one_by_one = img  # unfused, what Compose(fuse=False) does: each transform's apply
                for t, p in zip(run, params):
                    one_by_one = t.apply(one_by_one, p)
                np.testing.assert_array_equal(one_by_one, expected)
    assert 2.2 < np.mean(diffs["cubic"]) < 3.0 and max(diffs["cubic"]) < 3.5, diffs["cubic"]
    assert 1.6 < np.mean(diffs["linear"]) < 2.4, diffs["linear"]
