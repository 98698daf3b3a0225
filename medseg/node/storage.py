"""Where the node keeps what it receives, and what it knows about each study (the journal).

Layout under the node's ``--out`` folder (nothing is written anywhere else)::

    incoming/<key>/<name>.dcm    every accepted object, as received (file meta + data set)
    journal/<key>.json           the study's state: received → predicting → forwarding → done | failed
    results/<key>/               predict's outputs (predictions.csv/json, report.html, dicom/)
    rejected/<time>-<id>.json    every object answered with a failure status, and why

``<key>`` is a hash of the StudyInstanceUID and ``<name>`` the SOPInstanceUID when it is a valid
UID, else its hash: a UID read from the network never becomes a path by itself, so a hostile
one (``../..``, a NUL, 10 000 characters) cannot escape ``--out``. Every file is written
atomically (:mod:`medseg.utils.atomic`): after a crash the journal and the received files are
either the old or the new version, which is what lets a restart finish every study the journal
does not mark done or failed.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from typing import Any

from medseg.dicom.validation import valid_uid
from medseg.utils.atomic import atomic_open, atomic_write_json, read_json_object

UID_MAX = 64  # characters of a DICOM UID (PS3.5 9.1)
UNFINISHED = ("received", "predicting", "forwarding")
FINISHED = ("done", "failed")
HISTORY_MAX = 50  # journal entries kept per study (a study re-sent many times stays small)


class JournalError(ValueError):
    """A journal file that cannot be read (names the file)."""


def study_key(study_uid: str) -> str:
    """The folder name of a study: 32 hex digits of SHA-256 (never the UID itself)."""
    return hashlib.sha256(study_uid.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def instance_name(sop_uid: str) -> str:
    """The file name of an instance: its UID when valid (digits and dots only), else a hash."""
    if valid_uid(sop_uid):
        return f"{sop_uid}.dcm"
    return f"sop-{hashlib.sha256(sop_uid.encode('utf-8', 'surrogateescape')).hexdigest()[:32]}.dcm"


def printable(value: Any, limit: int = 80) -> str:
    """A value received from the network as safe text for a log line or a record: control
    characters escaped, cut to ``limit`` characters."""
    text = repr(str(value))[1:-1]
    return text if len(text) <= limit else text[:limit - 1] + "…"


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class StudyStore:
    """Received files and the journal of each study under ``out_dir``; safe to call from the
    association threads and the worker at once (one lock around every journal change)."""

    def __init__(self, out_dir: str):
        self.root = os.path.abspath(out_dir)
        self.incoming = os.path.join(self.root, "incoming")
        self.results = os.path.join(self.root, "results")
        self.journals = os.path.join(self.root, "journal")
        self.rejected = os.path.join(self.root, "rejected")
        for folder in (self.incoming, self.results, self.journals, self.rejected):
            os.makedirs(folder, exist_ok=True)
        self._lock = threading.Lock()

    def study_dir(self, key: str) -> str:
        return os.path.join(self.incoming, key)

    def result_dir(self, key: str) -> str:
        return os.path.join(self.results, key)

    def journal_path(self, key: str) -> str:
        return os.path.join(self.journals, f"{key}.json")

    def journal(self, key: str) -> dict | None:
        """The study's journal (None when nothing was received for it)."""
        return read_json_object(self.journal_path(key), JournalError, "study journal")

    def keys(self) -> list[str]:
        return sorted(name[:-5] for name in os.listdir(self.journals) if name.endswith(".json") and not name.startswith("."))

    def unfinished(self) -> list[str]:
        """Studies received but neither done nor failed (a restart predicts them), oldest first."""
        pending = [(j.get("last_received", ""), key) for key in self.keys()
                   if (j := self.journal(key)) is not None and j.get("state") in UNFINISHED]
        return [key for _, key in sorted(pending)]

    def store(self, study_uid: str, sop_uid: str, data: bytes, calling_ae: str) -> tuple[str, str]:
        """Write one received object (Part 10 bytes) atomically; mark its study ``received``.

        Returns ``(key, path)``. The same SOPInstanceUID sent again replaces its file; a file
        arriving after the study was predicted puts the study back to ``received`` (it is
        predicted again, whole)."""
        key = study_key(study_uid)
        path = os.path.join(self.study_dir(key), instance_name(sop_uid))
        new = not os.path.exists(path)
        with atomic_open(path, "wb") as fh:
            fh.write(data)
        with self._lock:
            record = self.journal(key) or {"key": key, "study_uid": printable(study_uid, UID_MAX + 16),
                                           "state": "received", "files": 0, "received_seq": 0,
                                           "first_received": utc_now(), "calling_ae": [], "history": []}
            record["files"] += int(new)
            record["received_seq"] += 1
            record["last_received"] = utc_now()
            if calling_ae not in record["calling_ae"]:
                record["calling_ae"].append(calling_ae)
            if record["state"] != "received":
                self._transition(record, "received", "more files after the study was " + record["state"])
            elif not record["history"]:
                self._transition(record, "received")
            atomic_write_json(self.journal_path(key), record)
        return key, path

    def begin(self, key: str, state: str) -> int:
        """Move a study to ``predicting`` or ``forwarding``; returns its ``received_seq`` (to tell
        later whether files arrived meanwhile)."""
        with self._lock:
            record = self._require(key)
            self._transition(record, state)
            record.pop("reason", None)
            atomic_write_json(self.journal_path(key), record)
            return int(record["received_seq"])

    def finish(self, key: str, seq: int, state: str, reason: str = "", **fields: Any) -> bool:
        """Record the outcome (``done``/``failed``, or ``forwarding`` between the two steps) with
        ``fields`` (results folder, seconds, forwarded count…). Returns False, leaving the study
        ``received``, when files arrived since :meth:`begin` returned ``seq``: the study is then
        predicted again with them."""
        with self._lock:
            record = self._require(key)
            record.update(fields)
            stale = int(record["received_seq"]) != seq
            if stale:
                self._transition(record, "received", f"new files while {record['state']}; the study is predicted again")
            else:
                self._transition(record, state, reason)
                if reason:
                    record["reason"] = reason
                else:
                    record.pop("reason", None)
            atomic_write_json(self.journal_path(key), record)
            return not stale

    def reject(self, calling_ae: str, status: int, reason: str, **fields: Any) -> str:
        """Record an object answered with failure ``status`` (one JSON file per object, so
        concurrent associations never contend for one file). Values from the network are made
        printable here."""
        name = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:12]}.json"
        record = {"time": utc_now(), "calling_ae": printable(calling_ae, 16), "status": f"0x{status:04X}",
                  "reason": reason, **{k: printable(v) for k, v in fields.items()}}
        path = os.path.join(self.rejected, name)
        atomic_write_json(path, record)
        return path

    def _require(self, key: str) -> dict:
        record = self.journal(key)
        if record is None:
            raise JournalError(f"{self.journal_path(key)}: no journal for study {key}")
        return record

    @staticmethod
    def _transition(record: dict, state: str, note: str = "") -> None:
        record["state"] = state
        entry = {"state": state, "time": utc_now()}
        if note:
            entry["note"] = note
        record["history"] = (record.get("history", []) + [entry])[-HISTORY_MAX:]
