"""One queue, one worker thread, one model: the node predicts a study at a time while the SCP
keeps receiving.

A study enters the queue when the association that sent it ends, or when no file of it arrived
for ``quiet_seconds`` (a sender that keeps its association open), or at start-up when the journal
says it was received but not finished. The worker loads the model itself (``load()``, in its own
thread: a Paddle dygraph model is used from the thread that owns it), then per study: predicts
into a temporary sibling of ``results/<key>/``, moves it into place whole, forwards the DICOM
outputs and records done or failed with a reason. Files that arrive while a study is being
predicted make it be predicted again, with them.
"""

from __future__ import annotations

import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from typing import Any

from medseg.node.storage import StudyStore
from medseg.utils.atomic import read_json_object, replace_dir
from medseg.utils.logger import get_logger

logger = get_logger("node")

# predict_study(study_dir, out_dir) → the DICOM files to forward (absolute paths under out_dir).
PredictStudy = Callable[[str, str], list[str]]
Forward = Callable[[list[str]], Any]
POLL_S = 0.2  # how often the idle worker checks for quiet studies and for a stop request


class Worker:
    """``load()`` → the study predictor, called once in the worker thread; ``forward(files)``
    sends the outputs (None: keep them under ``results/`` only); ``skip_reason(exc)`` turns an
    expected prediction failure (nothing to predict) into the study's reason, None for a bug."""

    def __init__(self, store: StudyStore, load: Callable[[], PredictStudy], forward: Forward | None = None,
                 quiet_seconds: float = 30.0, forward_label: str = "",
                 expected_errors: tuple[type[BaseException], ...] = ()):
        self.store = store
        self.load = load
        self.forward = forward
        self.forward_label = forward_label
        self.quiet_seconds = quiet_seconds
        self.expected_errors = expected_errors
        self._queue: queue.Queue[str] = queue.Queue()
        self._queued: set[str] = set()
        self._last_file: dict[str, float] = {}  # key → monotonic time of its last file (quiet timer)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.ready = threading.Event()
        self.load_error: BaseException | None = None
        self.load_seconds = 0.0
        self._thread = threading.Thread(target=self._run, name="medseg-node-worker", daemon=True)

    def start(self, timeout: float | None = None) -> None:
        """Start the thread; wait until the model is loaded (its error is raised here)."""
        self._thread.start()
        self.ready.wait(timeout)
        if self.load_error is not None:
            raise self.load_error

    def stop(self, timeout: float | None = None) -> bool:
        """Finish the study being predicted, start no other (they stay ``received`` for the next
        start); True when the thread ended within ``timeout``."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def file_received(self, key: str) -> None:
        with self._lock:
            self._last_file[key] = time.monotonic()

    def submit(self, key: str) -> None:
        """Queue a study (once: a study already waiting is not queued twice)."""
        with self._lock:
            self._last_file.pop(key, None)
            if key in self._queued:
                return
            self._queued.add(key)
        self._queue.put(key)

    def submit_many(self, keys: list[str]) -> None:
        for key in keys:
            self.submit(key)

    def idle(self) -> bool:
        """Nothing queued, nothing waiting for its quiet period, nothing being predicted."""
        with self._lock:
            return not self._queued and not self._last_file and self._queue.unfinished_tasks == 0

    def _quiet_studies(self) -> list[str]:
        now = time.monotonic()
        with self._lock:
            return [k for k, t in self._last_file.items() if now - t >= self.quiet_seconds]

    def _run(self) -> None:
        try:
            tic = time.perf_counter()
            predict_study = self.load()
            self.load_seconds = time.perf_counter() - tic
        except BaseException as err:  # noqa: BLE001 - handed to start() in the main thread
            self.load_error = err
            self.ready.set()
            return
        self.ready.set()
        while not self._stop.is_set():
            for key in self._quiet_studies():
                self.submit(key)
            try:
                key = self._queue.get(timeout=POLL_S)
            except queue.Empty:
                continue
            with self._lock:
                self._queued.discard(key)
            try:
                if not self._stop.is_set():
                    self.process(key, predict_study)
            except Exception:  # noqa: BLE001 - the node's own failure (a journal it cannot write): logged, next study
                logger.exception("study %s: not processed", key)
            finally:
                self._queue.task_done()

    def process(self, key: str, predict_study: PredictStudy) -> None:
        """Predict (unless the study waits only for forwarding), forward, record; never raises
        for the study's own failure (the node keeps serving)."""
        journal = self.store.journal(key) or {}
        tic = time.perf_counter()
        final = self.store.result_dir(key)
        files = journal.get("dicom_files") if journal.get("state") == "forwarding" else None
        seq = self.store.begin(key, "forwarding" if files is not None else "predicting")
        if files is None:
            tmp = os.path.join(self.store.results, f".{key}.partial")
            shutil.rmtree(tmp, ignore_errors=True)  # left by a run that was killed
            try:
                written = predict_study(self.store.study_dir(key), tmp)
            except Exception as err:  # noqa: BLE001 - recorded as the study's reason; a bug also gets its traceback
                if os.path.isdir(tmp):
                    replace_dir(tmp, final)  # skipped.csv says why each file was left out
                if not isinstance(err, self.expected_errors):
                    logger.exception("study %s: prediction failed", key)
                self._finish(key, seq, "failed", "prediction: " + str(err).replace(tmp, final), tic)
                return
            replace_dir(tmp, final)
            files = [os.path.relpath(os.path.abspath(p), os.path.abspath(tmp)) for p in written]
            if not self.store.finish(key, seq, "forwarding", dicom_files=files, results=os.path.relpath(final, self.store.root),
                                     predict_seconds=round(time.perf_counter() - tic, 3)):
                self.submit(key)
                return
        forwarded = 0
        if self.forward is not None and files:
            try:
                self.forward([os.path.join(final, f) for f in files])
                forwarded = len(files)
            except Exception as err:  # noqa: BLE001 - the PACS' failure is the study's reason, the node goes on
                self._finish(key, seq, "failed", f"forward to {self.forward_label}: {err}", tic)
                return
        self._finish(key, seq, "done", "", tic, forwarded=forwarded)

    def _finish(self, key: str, seq: int, state: str, reason: str, tic: float, **fields: Any) -> None:
        seconds = round(time.perf_counter() - tic, 3)
        if not self.store.finish(key, seq, state, reason, seconds=seconds, finished=time.time(), **fields):
            self.submit(key)
            return
        journal = self.store.journal(key) or {}
        if state == "failed":
            logger.info("study %s: failed after %.1f s (%d file(s) from %s): %s", key, seconds, journal.get("files", 0),
                        ",".join(journal.get("calling_ae", [])), reason)
            return
        summary = study_summary(os.path.join(self.store.result_dir(key), "predictions.json"))
        sent = f"; {fields.get('forwarded', 0)} DICOM object(s) forwarded to {self.forward_label}" if self.forward else ""
        logger.info("study %s: done in %.1f s (%d file(s) from %s): %s → %s%s", key, seconds, journal.get("files", 0),
                    ",".join(journal.get("calling_ae", [])), summary, os.path.relpath(self.store.result_dir(key), self.store.root), sent)


def study_summary(predictions_json: str) -> str:
    """``N of M series predicted, K with a slice at or above the threshold`` from predict's
    predictions.json (the study's log line)."""
    try:
        record = read_json_object(predictions_json, ValueError, "predictions file") or {}
    except ValueError as err:
        return str(err)
    series = record.get("series", [])
    predicted = [s for s in series if s.get("predicted") and "slices_above_threshold" in s]
    flagged = [s for s in predicted if any(s["slices_above_threshold"].values())]
    return f"{len(predicted)} of {len(series)} series predicted, {len(flagged)} with a slice at or above {record.get('threshold')}"
