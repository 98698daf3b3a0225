"""Test helpers for the DICOM node: a model, studies, an SCU that reports raw statuses, the node
as a subprocess (``python -m medseg.node``) and polling."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification

from predict_fixtures import write_checkpoint, write_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE_AE, SENDER_AE = "MEDSEG", "SENDER"
SLICES, SIZE = 6, 64
_LISTENING = re.compile(r"listening as (\S+) on ([\d.]+):(\d+)")


def make_model(folder: str) -> tuple[str, str]:
    """``(config, checkpoint)``: the 64 px demo CNN with untrained weights."""
    os.makedirs(folder, exist_ok=True)
    config = write_config(os.path.join(folder, "demo_64.yml"))
    return config, write_checkpoint(config, os.path.join(folder, "ckpt"))


def wait_for(check: Callable[[], object], timeout: float, what: str, every: float = 0.05):
    """Poll ``check`` until it returns something truthy (returned); AssertionError after ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


def journal(out: str, key: str) -> dict | None:
    path = os.path.join(out, "journal", f"{key}.json")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None


def state_is(out: str, key: str, *states: str) -> Callable[[], dict | None]:
    def check():
        record = journal(out, key)
        return record if record and record["state"] in states else None
    return check


def scu(calling: str = SENDER_AE, contexts: tuple[str, ...] = (CTImageStorage,)) -> AE:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for uid in contexts:
        ae.add_requested_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ae.add_requested_context(Verification)
    return ae


def store_all(port: int, items: list, calling: str = SENDER_AE, called: str = NODE_AE, raw: bool = False) -> list[int]:
    """C-STORE each item (path or Dataset) over one association; the status of each. ``raw``:
    send files byte for byte (pynetdicom's chunked mode), so a truncated file arrives truncated."""
    assoc = scu(calling).associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established, f"association with the node on port {port} failed"
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = raw
    try:
        return [int(assoc.send_c_store(item).Status) for item in items]
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old
        assoc.release()


def echo(port: int, calling: str = SENDER_AE) -> int:
    """C-ECHO status (the node still serving)."""
    assoc = scu(calling).associate("127.0.0.1", port, ae_title=NODE_AE)
    assert assoc.is_established, "association for C-ECHO failed"
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


def files_outside(folder: str, allowed: tuple[str, ...]) -> list[str]:
    """Every file under ``folder`` not under one of the ``allowed`` folders."""
    allowed = tuple(os.path.abspath(a) + os.sep for a in allowed)
    found = []
    for here, _, files in os.walk(folder):
        found += [os.path.join(here, f) for f in files if not os.path.join(here, f).startswith(allowed)]
    return found


class NodeProcess:
    """``python -m medseg.node`` on a free port; its output collected line by line."""

    def __init__(self, out: str, config: str, checkpoint: str, *extra: str, timeout: float = 120):
        env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1")
        cmd = [sys.executable, "-m", "medseg.node", "--ae_title", NODE_AE, "--port", "0", "--model", checkpoint,
               "--config", config, "--out", out, "--threads", "1", *extra]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        match = wait_for(lambda: next((m for m in map(_LISTENING.search, list(self.lines)) if m), None)
                         or (self.proc.poll() is not None and self._died()), timeout, "the node to listen")
        self.port = int(match.group(3))

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def _died(self):
        raise AssertionError("the node exited:\n" + "\n".join(self.lines[-30:]))

    def output(self) -> str:
        return "\n".join(self.lines)

    def signal(self, signum: int, timeout: float = 60) -> int:
        """Send ``signum``; the exit code (SIGKILL: immediate)."""
        self.proc.send_signal(signum)
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stdout:
            self.proc.stdout.close()

