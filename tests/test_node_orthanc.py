"""The node against a real PACS: Debian's Orthanc with a throw-away config. A synthetic study sent
to the node (``medseg.node.service.Node``, what ``medseg-listen --forward ORTHANC@…`` runs)
comes back as the node's SR and Secondary Capture series in the same study in Orthanc, with the
SR's values those of predictions.json.
Skipped only when Orthanc is not installed (``make dicom-tools`` installs it; ``make test``
depends on that target)."""

from __future__ import annotations

import io
import json
import os
import runpy
import sys

import highdicom as hd
import pydicom
import pytest

from medseg.constants import LABELS
from medseg.node.demo_study import write_demo_study
from medseg.node.forward import Destination
from medseg.node.orthanc import INSTALL_HINT, Orthanc, find_orthanc
from medseg.node.service import Node, predictor_loader
from medseg.node.storage import study_key
from medseg.predict.dicom_sr import finding_code
from node_fixtures import NODE_AE, ROOT, SIZE, SLICES, make_model, state_is, store_all, wait_for

# slow: a node process and an Orthanc server per test (make test-fast leaves them out)
pytestmark = [pytest.mark.slow, pytest.mark.skipif(find_orthanc() is None, reason=INSTALL_HINT)]
TIMEOUT = 90


def sr_values(sr: hd.sr.Comprehensive3DSR) -> dict[str, tuple[float, str]]:
    """``label → (probability, Present/Absent)`` from the SR's TID 1501 measurement groups."""
    by_code = {finding_code(label).value: label for label in LABELS}
    values = {}
    for group in sr.content.get_image_measurement_groups():
        label = by_code[group.finding_type.value]
        (measurement,) = group.get_measurements()
        (evaluation,) = group.get_qualitative_evaluations()
        values[label] = (float(measurement.value), evaluation.value.meaning)
    return values


def test_results_arrive_in_orthanc(tmp_path):
    config, checkpoint = make_model(str(tmp_path / "model"))
    files = write_demo_study(str(tmp_path / "study"), seed=35, index=30, slices=SLICES, size=SIZE)
    study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    with Orthanc(modalities={"medseg": (NODE_AE, "127.0.0.1", 1)}) as pacs:
        load, expected = predictor_loader(config, [checkpoint], threads=1)
        node = Node(str(tmp_path / "out"), NODE_AE, load, Destination.parse(f"ORTHANC@127.0.0.1:{pacs.dicom_port}"),
                    allow=["SENDER"], expected_errors=expected)
        node.start()
        try:
            assert store_all(node.port, files) == [0] * SLICES
            record = wait_for(state_is(node.store.root, study_key(study_uid), "done", "failed"), TIMEOUT, "the study")
        finally:
            node.stop(TIMEOUT)
        assert record["state"] == "done", record.get("reason")
        assert record["forwarded"] == len(record["dicom_files"]) >= 2

        series = pacs.study_series(study_uid)  # only the node's results: the study itself was sent to the node
        modalities = sorted(s["MainDicomTags"]["Modality"] for s in series)
        assert modalities == ["OT", "SR"], series  # the Secondary Capture series, the Structured Report
        stored = {}
        for s in series:
            for instance in s["Instances"]:
                ds = pydicom.dcmread(io.BytesIO(pacs.instance_file(instance)))
                stored[str(ds.SOPInstanceUID)] = ds
        results = os.path.join(node.store.root, record["results"])
        local = {str(pydicom.dcmread(os.path.join(results, f)).SOPInstanceUID) for f in record["dicom_files"]}
        assert set(stored) == local
        assert {str(ds.StudyInstanceUID) for ds in stored.values()} == {study_uid}
        assert {str(ds.PatientID) for ds in stored.values()} == {str(pydicom.dcmread(files[0]).PatientID)}

        (sr,) = [ds for ds in stored.values() if ds.Modality == "SR"]
        with open(os.path.join(results, "predictions.json"), encoding="utf-8") as fh:
            predictions = json.load(fh)
        (entry,) = predictions["series"]
        values = sr_values(hd.sr.Comprehensive3DSR.from_dataset(sr))
        assert values.keys() == set(LABELS)
        for label in LABELS:
            probability, presence = values[label]
            assert probability == pytest.approx(entry["max"][label], abs=1e-6)
            assert presence == ("Present" if entry["max"][label] >= predictions["threshold"] else "Absent")


def test_node_bench_toy(monkeypatch, capsys):
    """bench/node_bench.py end to end at toy size (its numbers mean nothing), run in this process:
    the imports and the first model call are then already paid for."""
    bench = os.path.join(ROOT, "bench")
    monkeypatch.syspath_prepend(bench)
    monkeypatch.setattr(sys, "argv", [os.path.join(bench, "node_bench.py"), "--toy", "--no_fail", "--threads", "1"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(os.path.join(bench, "node_bench.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert exit_info.value.code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("provenance: commit=")
    assert any(line.startswith("target: results in Orthanc ≤ 10 s after the last file (first study:") for line in lines), out
    assert any(line.startswith("target: 2 studies at once: all finished, none lost (2 of 2, files [6, 6])") for line in lines), out
