"""The Storage SCP: which calling AEs, SOP classes and data sets the node accepts, and the DICOM
answer to everything else.

- Association: the calling AE title must be on ``--allow`` (when given) and the called AE title
  must be the node's; otherwise A-ASSOCIATE-RJ, rejected-permanent by the service user, reason
  3 ("calling AE title not recognized") or 7 ("called AE title not recognized").
- Presentation contexts: CT Image Storage (the only class predict reads: Enhanced CT is
  multi-frame, which triage leaves out, so it is refused rather than received and dropped) in
  the transfer syntaxes the reader decodes, and Verification (C-ECHO). Any other SOP class is
  rejected at negotiation ("abstract syntax not supported"); a C-STORE for it sent on the CT
  context anyway gets 0x0122 "SOP class not supported".
- Data set: answered 0xC000 when it does not decode or ends early (truncated), 0xC001 when a Study/Series/SOP Instance UID
  is not a valid UID (a hostile or malformed value), 0xA900 when it is not a CT image (Modality,
  SOP Class UID, missing image attributes, pixel data shorter than Rows × Columns says) and
  0xA700 when it cannot be stored. Each of these is recorded under ``rejected/`` with its reason
  and echoed to the sender as the response's Error Comment.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import (CTImageStorage, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian, JPEG2000, JPEG2000Lossless, JPEGLosslessSV1, RLELossless,
                         JPEGLossless, JPEGLSLossless)
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from medseg.dicom.validation import valid_uid
from medseg.node.storage import StudyStore, printable
from medseg.utils.logger import get_logger

logger = get_logger("node")

# Uncompressed and the lossless/lossy encodings the reader decodes (pydicom, pylibjpeg).
TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
                     JPEGLosslessSV1, JPEGLossless, JPEGLSLossless, JPEG2000Lossless, JPEG2000, RLELossless]
NATIVE = {ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian}
SUCCESS = 0x0000
SOP_CLASS_NOT_SUPPORTED = 0x0122  # Refused: a C-STORE for a class other than its context's (CT)
OUT_OF_RESOURCES = 0xA700      # Refused: out of resources (the file could not be written)
NOT_CT = 0xA900                # Error: data set does not match SOP class
CANNOT_UNDERSTAND = 0xC000     # Error: cannot understand (the data set does not decode)
INVALID_UID = 0xC001           # Error: cannot understand, a UID of the data set is not a valid UID
IMAGE_KEYWORDS = ("Rows", "Columns", "BitsAllocated", "PixelData")
UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
AE_TITLE_MAX = 16
UNDEFINED_LENGTH = 0xFFFFFFFF


def check_ae_title(title: str, what: str = "AE title") -> str:
    """An AE title as PS3.5 allows it (1-16 characters, no backslash or control character)."""
    stripped = title.strip()
    if not stripped or len(title) > AE_TITLE_MAX or "\\" in title or any(ord(c) < 32 or ord(c) > 126 for c in title):
        raise ValueError(f"{what} {title!r}: 1-{AE_TITLE_MAX} printable ASCII characters, no backslash")
    return stripped


def truncated_element(ds: Dataset) -> str | None:
    """The first element whose value is shorter than its declared length, as text (None: none).

    pydicom decodes a data set that ends early without an error (the last value is just short,
    the elements after it are absent), so the raw elements are checked before any is converted."""
    for elem in ds.elements():
        if isinstance(elem, RawDataElement) and isinstance(elem.value, bytes) and elem.length != UNDEFINED_LENGTH \
                and len(elem.value) < elem.length:
            return f"the data set ends inside {elem.tag} ({len(elem.value)} of {elem.length} bytes)"
    return None


def check_dataset(ds: Dataset, sop_class: str, transfer_syntax: str) -> tuple[int, str]:
    """``(status, reason)`` for a decoded C-STORE data set received on a ``sop_class`` context:
    (0, "") when it is a CT image the node can store."""
    truncated = truncated_element(ds)
    if truncated:
        return CANNOT_UNDERSTAND, truncated
    bad_uids = [k for k in UID_KEYWORDS if not valid_uid(str(ds.get(k, "")))]
    if bad_uids:
        shown = ", ".join(f"{k} {printable(ds.get(k, ''), 40)!r}" for k in bad_uids)
        return INVALID_UID, f"not a valid UID: {shown}"
    if str(ds.get("SOPClassUID", "")) != sop_class:
        return NOT_CT, f"SOP Class UID {printable(ds.get('SOPClassUID', ''), 64)} differs from the context's {sop_class}"
    modality = str(ds.get("Modality", ""))
    if modality != "CT":
        return NOT_CT, f"Modality {printable(modality, 16)!r} is not CT"
    missing = [k for k in IMAGE_KEYWORDS if k not in ds]
    if missing:
        return NOT_CT, f"not an image: no {', '.join(missing)}"
    if transfer_syntax in NATIVE:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1) * ((int(ds.BitsAllocated) + 7) // 8) * frames
        got = len(ds.PixelData or b"")
        if got < expected:
            return NOT_CT, f"pixel data truncated: {got} bytes, {expected} expected"
    return SUCCESS, ""


def set_no_delay(event) -> None:
    """EVT_CONN_OPEN handler: TCP_NODELAY on the association's socket. pynetdicom writes a C-STORE
    as two PDUs (command, data set); with Nagle's algorithm the second waits for the peer's
    delayed ACK of the first, about 40 ms per object."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _status(code: int, comment: str = "") -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = comment[:64]  # LO: 64 characters at most
    return status


class StorageSCP:
    """pynetdicom AE serving C-STORE (CT) and C-ECHO. Each accepted file goes to ``store``;
    ``on_file(key)`` is called after it is stored and ``on_association_end(keys)`` with the
    studies an association sent, when it is released, aborted or dropped."""

    def __init__(self, ae_title: str, store: StudyStore, on_file: Callable[[str], None],
                 on_association_end: Callable[[list[str]], None], allow: list[str] | None = None):
        self.ae_title = check_ae_title(ae_title, "--ae_title")
        self.allow = [check_ae_title(a, "--allow") for a in allow or []]
        self.store = store
        self.on_file = on_file
        self.on_association_end = on_association_end
        self._sent: dict[int, set[str]] = {}  # id(association) → study keys it sent
        self._lock = threading.Lock()
        self.server = None

    def build_ae(self) -> AE:
        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = True
        ae.require_calling_aet = self.allow
        ae.add_supported_context(CTImageStorage, TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        return ae

    def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (``port`` 0: any free port) in background threads; returns the port."""
        handlers = [(evt.EVT_CONN_OPEN, set_no_delay), (evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, lambda event: SUCCESS),
                    (evt.EVT_CONN_CLOSE, self._on_close), (evt.EVT_REJECTED, self._on_rejected)]
        self.server = self.build_ae().start_server((host, port), block=False, evt_handlers=handlers)
        return int(self.server.server_address[1])

    def stop(self) -> None:
        """Stop listening and end the open associations."""
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def _on_store(self, event) -> Dataset:
        calling = event.assoc.requestor.ae_title
        sop_class, sop_instance = str(event.request.AffectedSOPClassUID), str(event.request.AffectedSOPInstanceUID)
        transfer_syntax, context_class = str(event.context.transfer_syntax), str(event.context.abstract_syntax)
        ds = None
        if sop_class != context_class:
            status, reason = SOP_CLASS_NOT_SUPPORTED, f"SOP class {printable(sop_class, 64)} on the {context_class} context"
        else:
            try:
                ds = event.dataset
                status, reason = check_dataset(ds, context_class, transfer_syntax)
            except Exception as err:  # noqa: BLE001 - any decoding error is the sender's data: answered, not raised
                status, reason = CANNOT_UNDERSTAND, f"the data set does not decode: {printable(err, 120)}"
                ds = None
        if status == SUCCESS:
            try:
                key, _ = self.store.store(str(ds.StudyInstanceUID), str(ds.SOPInstanceUID), event.encoded_dataset(), calling)
            except OSError as err:
                status, reason = OUT_OF_RESOURCES, f"could not store the file: {err}"
        if status != SUCCESS:
            study = ds.get("StudyInstanceUID", "") if ds is not None else ""
            self.store.reject(calling, status, reason, sop_class=sop_class, sop_instance=sop_instance, study_uid=study)
            logger.warning("refused an object from %s (SOP instance %s): 0x%04X %s", printable(calling, 16),
                           printable(sop_instance, 64), status, reason)
            return _status(status, reason)
        with self._lock:
            self._sent.setdefault(id(event.assoc), set()).add(key)
        self.on_file(key)
        return _status(SUCCESS)

    def _on_close(self, event) -> None:
        with self._lock:
            keys = self._sent.pop(id(event.assoc), set())
        if keys:
            self.on_association_end(sorted(keys))

    def _on_rejected(self, event) -> None:
        requestor = event.assoc.requestor
        calling, called = requestor.ae_title, requestor.primitive.called_ae_title if requestor.primitive else ""
        if self.allow and calling.strip() not in self.allow:
            why = "calling AE title not on --allow"
        elif called.strip() != self.ae_title:
            why = f"called AE title {printable(called, 16)!r} is not {self.ae_title!r}"
        else:
            why = "too many associations at once"
        logger.warning("association from %s (%s:%s) rejected: %s", printable(calling, 16), requestor.address,
                       requestor.port, why)
