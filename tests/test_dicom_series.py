"""Series assembly: head-to-foot order from geometry, fallbacks, odd slices reported not raised."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from medseg.dicom.errors import InconsistentSliceError, MissingGeometryError
from medseg.dicom.header import SliceHeader
from medseg.dicom.series import group_series, slice_normal

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def header(i, z, series="ID_s", orientation=AXIAL, instance=None, size=(8, 8), position=True):
    pos = (0.0, 0.0, float(z)) if position else None
    if position and orientation != AXIAL:  # place slices along the tilted normal
        pos = tuple(float(v) for v in slice_normal(orientation) * z)
    return SliceHeader(path=f"/raw/ID_{series}_{i}.dcm", slice_id=f"ID_{series}_{i}", series_id=series, study_id="ID_t",
                       patient_id="ID_p", rows=size[0], cols=size[1], position=pos, orientation=orientation,
                       instance_number=instance, slice_thickness=5.0, window_center=None, window_width=None,
                       transfer_syntax="1.2.840.10008.1.2.1")


@pytest.mark.parametrize("orientation", [AXIAL, (1, 0, 0, 0, -1, 0), (1, 0, 0, 0, 0.9272, -0.3746)])
def test_ascending_and_descending_give_the_same_head_to_foot_order(orientation):
    zs = [10.0, 0.0, 5.0, -5.0, 20.0, 15.0]
    rng = np.random.default_rng(0)
    for sign in (1, -1):  # file order and instance numbers both ways round
        headers = [header(i, z, orientation=orientation, instance=int(sign * z)) for i, z in enumerate(zs)]
        series, errs = group_series([headers[i] for i in rng.permutation(len(headers))])
        assert not errs and len(series) == 1
        ids = [s.slice_id for s in series[0].slices]
        assert ids == [f"ID_ID_s_{i}" for i in np.argsort(zs)[::-1]]  # highest z (head) first
        assert np.all(np.diff(series[0].positions) < 0)
        assert series[0].spacing == pytest.approx(5.0)


def test_normal_points_to_the_head():
    assert slice_normal(AXIAL) == pytest.approx([0, 0, 1])
    assert slice_normal((1, 0, 0, 0, -1, 0)) == pytest.approx([0, 0, 1])
    with pytest.raises(ValueError):
        slice_normal((1, 0, 0, 1, 0, 0))


def test_instance_number_fallback_warns(caplog):
    headers = [header(i, 0, instance=n, position=False) for i, n in enumerate([3, 1, 2])]
    with caplog.at_level(logging.WARNING, logger="medseg"):
        logging.getLogger("medseg").propagate = True
        try:
            series, errs = group_series(headers)
        finally:
            logging.getLogger("medseg").propagate = False
    assert not errs
    assert [s.instance_number for s in series[0].slices] == [1, 2, 3]
    assert np.isnan(series[0].positions).all()
    assert "InstanceNumber" in series[0].notes[0] and "InstanceNumber" in caplog.text


def test_duplicate_positions_kept_in_stable_order():
    headers = [header(0, 5, instance=2), header(1, 5, instance=1), header(2, 0, instance=3)]
    series, errs = group_series(headers)
    assert not errs
    assert [s.slice_id for s in series[0].slices] == ["ID_ID_s_1", "ID_ID_s_0", "ID_ID_s_2"]
    assert "duplicate" in series[0].notes[0]


def test_odd_size_and_missing_geometry_reported_not_raised():
    headers = [header(i, i * 5.0, instance=i) for i in range(4)]
    headers.append(header(9, 50.0, size=(6, 8)))
    headers.append(header(8, 0, instance=8, position=False))
    series, errs = group_series(headers)
    assert len(series[0].slices) == 4
    kinds = {e.path.split("/")[-1]: type(e) for e in errs}
    assert kinds == {"ID_ID_s_9.dcm": InconsistentSliceError, "ID_ID_s_8.dcm": MissingGeometryError}
    assert all(e.reason and "ID_s" in e.reason for e in errs)


def test_series_without_any_order_is_reported():
    series, errs = group_series([header(0, 0, position=False), header(1, 0, position=False)])
    assert series == [] and len(errs) == 2 and all(isinstance(e, MissingGeometryError) for e in errs)


def test_groups_by_series_sorted():
    series, _ = group_series([header(0, 0, series="ID_b"), header(0, 0, series="ID_a"), header(1, 5, series="ID_b")])
    assert [(s.series_id, len(s.slices)) for s in series] == [("ID_a", 1), ("ID_b", 2)]
