"""The node assembled: storage, SCP, worker, forwarder; start-up recovery; the predict step.

:class:`Node` is what ``medseg-listen`` runs and what the tests start in-process. Start-up
order: the worker loads the model first (a bad model or config fails before the port opens),
then every study the journal left unfinished is queued, then the SCP listens.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from medseg.node.forward import Destination, send_files
from medseg.node.scp import StorageSCP
from medseg.node.storage import StudyStore
from medseg.node.worker import PredictStudy, Worker
from medseg.utils.logger import get_logger

logger = get_logger("node")


def predictor_loader(config: str | None, model: list[str], threshold: float = 0.5,
                     threads: int = 1) -> tuple[Callable[[], PredictStudy], tuple[type[BaseException], ...]]:
    """``(load, expected errors)``: ``load()`` builds one :class:`medseg.predict.run.Predictor`
    and returns the study step (predict's outputs plus ``dicom/``; the DICOM files to forward).
    Expected errors (a study with nothing to predict) are recorded as the study's reason
    without a traceback."""
    from medseg.predict.run import NothingReadableError

    def load() -> PredictStudy:
        from medseg.config import Config
        from medseg.export.meta import is_export_dir
        from medseg.predict.run import Predictor

        path = config
        if path is None:
            if not all(is_export_dir(m) for m in model):
                raise ValueError("--config is required with a training checkpoint")
            path = os.path.join(model[0], "config.yml")
        predictor = Predictor(Config(path), model, threads=threads)

        def predict_study(study_dir: str, out_dir: str) -> list[str]:
            summary = predictor.predict(study_dir, out_dir, threshold, progress=False,
                                        dicom_out=os.path.join(out_dir, "dicom"))
            return summary.dicom_files

        return predict_study

    return load, (NothingReadableError,)


class Node:
    """A DICOM node writing below ``out_dir`` only. ``load``/``expected_errors``: see
    :func:`predictor_loader`; ``forward``: where the DICOM outputs go (None: nowhere)."""

    def __init__(self, out_dir: str, ae_title: str, load: Callable[[], PredictStudy],
                 forward: Destination | None = None, allow: list[str] | None = None, quiet_seconds: float = 30.0,
                 expected_errors: tuple[type[BaseException], ...] = ()):
        if not quiet_seconds > 0:
            raise ValueError(f"--quiet_seconds must be positive, got {quiet_seconds}")
        self.store = StudyStore(out_dir)
        self.forward = forward
        send = None if forward is None else (lambda files: send_files(files, forward, self.scp.ae_title))
        self.worker = Worker(self.store, load, send, quiet_seconds, str(forward or ""), expected_errors)
        self.scp = StorageSCP(ae_title, self.store, self.worker.file_received, self.worker.submit_many, allow)
        self.port: int | None = None

    def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Load the model, queue the unfinished studies, listen; returns the port."""
        self.worker.start()
        pending = self.store.unfinished()
        if pending:
            logger.info("%d study(ies) received but not finished before: queued again", len(pending))
            self.worker.submit_many(pending)
        self.port = self.scp.start(host, port)
        return self.port

    def stop(self, timeout: float | None = None) -> bool:
        """Stop listening, then let the worker finish its current study; True if it did in time."""
        self.scp.stop()
        return self.worker.stop(timeout)
