"""The DICOM node (medseg.node): what it accepts, refuses and records, and how it survives a
restart. One in-process node (the 64 px demo CNN, untrained) serves most tests; restart and
signals run ``python -m medseg.node`` as a subprocess."""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time

import pydicom
import pytest
from pydicom.uid import CTImageStorage, MRImageStorage, generate_uid
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

from medseg.node.demo_study import write_demo_study
from medseg.node.forward import Destination, ForwardError, send_files
from medseg.node.listen import main as listen_main
from medseg.node.scp import CANNOT_UNDERSTAND, INVALID_UID, NOT_CT
from medseg.node.service import Node, predictor_loader
from medseg.node.storage import instance_name, study_key
from medseg.utils.logger import setup_logger
from node_fixtures import (NODE_AE, SENDER_AE, SIZE, SLICES, NodeProcess, echo, files_outside, journal, make_model,
                           scu, state_is, store_all, wait_for)

pytestmark = pytest.mark.slow  # a node with a model per test: make test runs it, make test-fast does not

TIMEOUT = 60  # generous: the machine is shared; a study takes about 2 s


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[str, str]:
    return make_model(str(tmp_path_factory.mktemp("model")))


@pytest.fixture(scope="module")
def node(model, tmp_path_factory):
    """An in-process node allowing SENDER and OTHER, quiet period 1.5 s."""
    root = tmp_path_factory.mktemp("node")
    load, expected = predictor_loader(model[0], [model[1]], threads=1)
    node = Node(str(root / "out"), NODE_AE, load, allow=[SENDER_AE, "OTHER"], quiet_seconds=1.5, expected_errors=expected)
    node.start("127.0.0.1", 0)
    yield node
    node.stop(TIMEOUT)


def study(folder, index: int, slices: int = SLICES, **tags) -> list[str]:
    return write_demo_study(str(folder), seed=35, index=index, slices=slices, size=SIZE, **tags)


def key_of(path: str) -> str:
    return study_key(str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID))


def test_study_predicted_with_dicom_outputs(node, tmp_path):
    files = study(tmp_path / "in", 0)
    key = key_of(files[0])
    assert send_files(files, Destination(NODE_AE, "127.0.0.1", node.port), SENDER_AE) == [0] * SLICES
    record = wait_for(state_is(node.store.root, key, "done", "failed"), TIMEOUT, "the study to be predicted")
    assert record["state"] == "done", record.get("reason")
    assert record["files"] == SLICES and record["calling_ae"] == [SENDER_AE]
    assert [h["state"] for h in record["history"]] == ["received", "predicting", "forwarding", "done"]
    results = node.store.result_dir(key)
    with open(os.path.join(results, "predictions.json"), encoding="utf-8") as fh:
        predictions = json.load(fh)
    assert [s["n_slices"] for s in predictions["series"]] == [SLICES]
    assert os.path.isfile(os.path.join(results, "report.html"))
    outputs = [pydicom.dcmread(os.path.join(results, f)) for f in record["dicom_files"]]
    assert outputs and outputs[0].Modality == "SR"
    sent_study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    assert {str(d.StudyInstanceUID) for d in outputs} == {sent_study}
    assert sorted(os.listdir(node.store.study_dir(key))) == sorted(
        instance_name(str(pydicom.dcmread(f).SOPInstanceUID)) for f in files)


def test_allow_list_and_called_title(node, capsys):
    for calling, called, reason in (("INTRUDER", NODE_AE, 0x03), (SENDER_AE, "SOMEONE", 0x07)):
        assoc = scu(calling).associate("127.0.0.1", node.port, ae_title=called)
        assert assoc.is_rejected
        answer = assoc.acceptor.primitive
        # rejected-permanent (1), by the service user (1), calling (3) / called (7) AE title not recognised
        assert (answer.result, answer.result_source, answer.diagnostic) == (0x01, 0x01, reason)
    assert echo(node.port, "OTHER") == 0x0000  # still serving, a second allowed title
    log = capsys.readouterr().out
    assert "association from INTRUDER (127.0.0.1:" in log and "rejected: calling AE title not on --allow" in log, log
    assert "rejected: called AE title 'SOMEONE' is not 'MEDSEG'" in log, log


def test_unsupported_sop_class(node, tmp_path):
    assoc = scu(SENDER_AE, (CTImageStorage, MRImageStorage)).associate("127.0.0.1", node.port, ae_title=NODE_AE)
    assert assoc.is_established
    try:
        rejected = {str(c.abstract_syntax): c.result for c in assoc.rejected_contexts}
        assert rejected == {MRImageStorage: 0x03}  # abstract syntax not supported
        mr = pydicom.dcmread(pydicom.data.get_testdata_file("MR_small.dcm"))
        with pytest.raises(ValueError, match="presentation context"):
            assoc.send_c_store(mr)
        # An MR C-STORE sent on the CT context anyway: 0x0122 SOP class not supported.
        ct_context = next(c for c in assoc.accepted_contexts if c.abstract_syntax == CTImageStorage)
        request = C_STORE()
        request.MessageID, request.Priority = 7, 2
        request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = MRImageStorage, generate_uid()
        request.DataSet = io.BytesIO(encode(mr, True, True))  # implicit VR little endian, the context's
        assoc._reactor_checkpoint.clear()  # pause the association's reactor as send_c_store does, so the
        while not assoc._is_paused:  # response comes to get_msg below, not to the reactor
            time.sleep(0.001)
        try:
            assoc.dimse.send_msg(request, ct_context.context_id)
            _, response = assoc.dimse.get_msg(block=True)
        finally:
            assoc._reactor_checkpoint.set()
        assert response is not None and response.Status == 0x0122
    finally:
        assoc.release()
    records = [json.load(open(os.path.join(node.store.rejected, n), encoding="utf-8")) for n in os.listdir(node.store.rejected)]
    assert any(r["status"] == "0x0122" and r["sop_class"] == MRImageStorage for r in records), records
    assert echo(node.port) == 0


def test_bad_objects_answered_recorded_and_contained(node, tmp_path):
    good = study(tmp_path / "good", 1, slices=2)
    truncated_pixels = str(tmp_path / "truncated_pixels.dcm")
    with open(good[0], "rb") as fh:
        data = fh.read()
    with open(truncated_pixels, "wb") as fh:
        fh.write(data[:-SIZE * SIZE])  # half the pixel data is missing
    cut_header = str(tmp_path / "cut_header.dcm")
    with open(cut_header, "wb") as fh:  # cut inside the SOP Instance UID's value
        fh.write(data[:data.index(b"\x08\x00\x18\x00") + 20])
    mr = study(tmp_path / "mr", 2, slices=2, Modality="MR")[0]
    hostile = study(tmp_path / "hostile", 3, slices=2, StudyInstanceUID="../../../../escape",
                    SOPInstanceUID="../../escaped.dcm")[0]
    before = set(os.listdir(node.store.rejected))
    statuses = store_all(node.port, [truncated_pixels, cut_header], raw=True) + store_all(node.port, [mr, hostile])
    assert statuses == [CANNOT_UNDERSTAND, CANNOT_UNDERSTAND, NOT_CT, INVALID_UID]
    records = []
    for name in sorted(set(os.listdir(node.store.rejected)) - before):
        with open(os.path.join(node.store.rejected, name), encoding="utf-8") as fh:
            records.append(json.load(fh))
    reasons = " | ".join(r["reason"] for r in records)
    assert len(records) == 4, reasons
    assert "the data set ends inside (7FE0,0010)" in reasons and "the data set ends inside (0008,0018)" in reasons
    assert "Modality 'MR' is not CT" in reasons and "not a valid UID: StudyInstanceUID '../../../../escape'" in reasons
    assert all(r["calling_ae"] == SENDER_AE for r in records)
    outside = files_outside(os.path.dirname(node.store.root), (node.store.root,))
    assert outside == [], outside
    assert not os.path.exists(os.path.join(os.path.dirname(node.store.root), "escape"))
    assert echo(node.port) == 0  # still serving (the next tests store through the same node)


def test_study_triage_skips_entirely(node, tmp_path):
    files = study(tmp_path / "scout", 4, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    key = key_of(files[0])
    assert store_all(node.port, files) == [0] * SLICES  # CT images: stored, then left out by triage
    record = wait_for(state_is(node.store.root, key, "done", "failed"), TIMEOUT, "the study to be recorded")
    assert record["state"] == "failed"
    assert "none predicted" in record["reason"] and node.store.result_dir(key) + "/skipped.csv" in record["reason"]
    with open(os.path.join(node.store.result_dir(key), "skipped.csv"), encoding="utf-8") as fh:
        skipped = fh.read()
    assert skipped.count("localizer") >= SLICES, skipped
    assert echo(node.port) == 0


def test_three_studies_at_once_one_left_open(node, tmp_path):
    """Three senders at once; the third keeps its association open: its study is predicted after
    the quiet period. None is lost, each is predicted whole."""
    studies = [study(tmp_path / f"s{i}", 10 + i) for i in range(3)]
    keys = [key_of(files[0]) for files in studies]
    statuses: dict[int, list[int]] = {}
    opened = scu().associate("127.0.0.1", node.port, ae_title=NODE_AE)
    assert opened.is_established

    def send(i: int) -> None:
        if i < 2:
            statuses[i] = store_all(node.port, studies[i])
        else:
            statuses[i] = [int(opened.send_c_store(f).Status) for f in studies[i]]

    try:
        threads = [threading.Thread(target=send, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        assert statuses == {i: [0] * SLICES for i in range(3)}
        for key, files in zip(keys, studies):
            record = wait_for(state_is(node.store.root, key, "done", "failed"), TIMEOUT, f"study {key}")
            assert record["state"] == "done" and record["files"] == len(files)
            with open(os.path.join(node.store.result_dir(key), "predictions.json"), encoding="utf-8") as fh:
                series = json.load(fh)["series"]
            assert [s["n_slices"] for s in series] == [SLICES]
            assert series[0]["study_id"] == str(pydicom.dcmread(files[0]).StudyInstanceUID)
        assert opened.is_established  # predicted on the quiet period, not on the association's end
    finally:
        opened.release()


def test_restart_finishes_an_interrupted_study_and_ctrl_c_stops_cleanly(model, tmp_path):
    """kill -9 while a study is predicted; the next start predicts it again; Ctrl-C (SIGINT, the
    same handler as SIGTERM) during that prediction lets it finish, then exits 0."""
    out = str(tmp_path / "out")
    files = study(tmp_path / "in", 20)
    key = key_of(files[0])
    first = NodeProcess(out, *model)
    try:
        assert store_all(first.port, files) == [0] * SLICES
        wait_for(state_is(out, key, "predicting", "forwarding", "done"), TIMEOUT, "the prediction to start", every=0.01)
        assert first.signal(signal.SIGKILL) == -signal.SIGKILL
    finally:
        first.close()
    assert journal(out, key)["state"] == "predicting", journal(out, key)
    second = NodeProcess(out, *model)
    try:
        wait_for(lambda: journal(out, key)["history"][-1]["state"] == "predicting" and len(journal(out, key)["history"]) > 2,
                 TIMEOUT, "the restarted node to predict the study again", every=0.01)
        assert second.signal(signal.SIGINT) == 0
    finally:
        second.close()
    record = journal(out, key)
    assert record["state"] == "done" and record["files"] == SLICES, record
    assert [h["state"] for h in record["history"]] == ["received", "predicting", "predicting", "forwarding", "done"]
    assert not [n for n in os.listdir(os.path.join(out, "results")) if n.startswith(".")]  # no partial results left
    log = second.output()
    assert "1 study(ies) received but not finished before: queued again" in log
    assert "SIGINT: stopping" in log and f"study {key}: done in" in log and log.rstrip().endswith("stopped"), log


def test_cli_errors_are_one_line(model, tmp_path, capsys):
    base = ["--ae_title", NODE_AE, "--port", "0", "--model", model[1], "--config", model[0], "--out", str(tmp_path / "o")]
    try:
        assert listen_main(base + ["--forward", "PACS@host"]) == 2
        assert "--forward 'PACS@host': expected AE@host:port" in capsys.readouterr().err
        assert listen_main(base[:1] + ["A\\B"] + base[2:]) == 2
        assert "--ae_title 'A\\\\B'" in capsys.readouterr().err
        assert listen_main(base + ["--quiet_seconds", "0"]) == 2
        assert "--quiet_seconds must be positive" in capsys.readouterr().err
    finally:
        setup_logger()


def test_forward_failure_is_the_study_reason(model, tmp_path):
    """A PACS that is down: the study fails with the reason, results stay, the node goes on."""
    load, expected = predictor_loader(model[0], [model[1]], threads=1)
    down = Destination("PACS", "127.0.0.1", 9)  # discard port: nothing listens
    node = Node(str(tmp_path / "out"), NODE_AE, load, forward=down, expected_errors=expected)
    node.start()
    try:
        files = study(tmp_path / "in", 6)
        key = key_of(files[0])
        assert store_all(node.port, files) == [0] * SLICES
        record = wait_for(state_is(node.store.root, key, "done", "failed"), TIMEOUT, "the study")
        assert record["state"] == "failed" and record["reason"].startswith("forward to PACS@127.0.0.1:9: association")
        assert os.path.isfile(os.path.join(node.store.result_dir(key), "predictions.json"))
        with pytest.raises(ForwardError):
            send_files(files[:1], down, SENDER_AE)
    finally:
        node.stop(TIMEOUT)
