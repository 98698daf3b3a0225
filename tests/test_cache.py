"""The series cache file: chain codes are lossless for any windows, slices read back exactly and
one at a time, damaged files are refused with the file's name."""

import os

import numpy as np
import pytest

from medseg.data.cache import (CHAIN, CHANNELS, CacheFormatError, SeriesCache, chain_codes, chain_table, read_crops,
                               write_cache_file)
from medseg.data.windows import apply_windows


@pytest.mark.parametrize("windows", [((40, 80), (80, 200), (40, 380)), ((40, 80), (80, 200)), ((35, 81), (-600, 1500), (300, 2001))])
def test_chain_codes_are_lossless_for_every_hu(windows):
    hu = np.concatenate([np.arange(-3000, 4000), np.random.default_rng(0).uniform(-1200, 1500, 20000)])  # integer and fractional HU
    triples = apply_windows(hu, windows)
    codes = chain_codes(triples, windows)
    assert codes is not None and codes.dtype == np.uint16
    np.testing.assert_array_equal(chain_table(windows)[codes], triples)
    assert np.all(np.diff(chain_table(windows).astype(int), axis=0) >= 0)  # a chain: every window only grows


def test_slices_round_trip_and_read_alone(tmp_path):
    rng = np.random.default_rng(1)
    windows = ((40, 80), (80, 200), (40, 380))
    hu = rng.normal(30, 200, (5, 64, 64))
    boxes = [(2, 60, 3, 50), (0, 64, 0, 64), (10, 20, 10, 40), (5, 6, 7, 8), (0, 64, 0, 64)]
    crops = [apply_windows(hu[i], windows)[y0:y1, x0:x1] for i, (y0, y1, x0, x1) in enumerate(boxes)]
    crops[4] = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)  # off the chain: stored as channels
    path = str(tmp_path / "s.hcc")
    assert write_cache_file(path, (64, 64), windows, ((b, c, None) for b, c in zip(boxes, crops))) == 5
    cache = SeriesCache(path)
    assert [s["coding"] for s in cache.slices] == [CHAIN] * 4 + [CHANNELS] and cache.frame == (64, 64)
    for got, want in zip(read_crops(path), crops, strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(cache.read(2), crops[2])
    assert os.listdir(tmp_path) == ["s.hcc"]  # no temporary left
    assert write_cache_file(str(tmp_path / "none.hcc"), (64, 64), windows, iter([])) == 0
    assert not os.path.exists(tmp_path / "none.hcc")


def test_damaged_files_are_refused_by_name(tmp_path):
    windows = ((40, 80), (80, 200), (40, 380))
    path = str(tmp_path / "s.hcc")
    image = apply_windows(np.full((8, 8), 30.0), windows)
    write_cache_file(path, (8, 8), windows, [((0, 8, 0, 8), image, None)])
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-1])
    with pytest.raises(CacheFormatError, match=r"s\.hcc: no cache footer"):
        SeriesCache(path)
    slice_start = len(chain_table(windows).tobytes())
    open(path, "wb").write(data[:slice_start] + b"\0" * 4 + data[slice_start + 4:])
    with pytest.raises(CacheFormatError, match=r"s\.hcc: slice 0 does not inflate"):
        SeriesCache(path).read(0)
    with pytest.raises(ValueError, match=r"uint8 \[h, w, 3\]"):
        write_cache_file(path, (8, 8), windows, [((0, 8, 0, 8), image[..., :2], None)])


def test_chain_crops_warp_from_their_four_byte_pixels(tmp_path):
    """A decoded crop is a view skipping each pixel's 4th byte: the warp reads the 4-byte pixels as
    they are, with the same result as from a contiguous copy; other views are copied first."""
    import cv2

    from medseg.data.transforms import _four_byte_pixels, _warp, contiguous_pixels

    windows = ((40, 80), (80, 200), (40, 380))
    crop = apply_windows(np.random.default_rng(2).normal(30, 200, (40, 52)), windows)
    path = str(tmp_path / "s.hcc")
    write_cache_file(path, (40, 52), windows, [((0, 40, 0, 52), crop, None)])
    view = next(SeriesCache(path).iter_many([0]))
    assert not view.flags.c_contiguous and _four_byte_pixels(view) is not None
    matrix = cv2.getRotationMatrix2D((20.0, 26.0), 33.0, 0.8)
    np.testing.assert_array_equal(_warp(view, matrix, (24, 24)), _warp(np.ascontiguousarray(view), matrix, (24, 24)))
    np.testing.assert_array_equal(contiguous_pixels(view), crop)
    shifted = np.zeros((40, 52, 4), np.uint8)[..., 1:]  # same strides, but the 4-byte pixels would overrun
    assert _four_byte_pixels(shifted) is None
