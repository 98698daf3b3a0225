"""C-STORE SCU: send DICOM files to a peer (``--forward AE@host:port``, the PACS).

One association per call, proposing the SOP class of each file in its own transfer syntax: the
node sends its SR and Secondary Capture objects as written, and the same function sends a study
to a node (tests, bench).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, evt

from medseg.node.scp import check_ae_title, set_no_delay

TIMEOUT_S = 30  # ACSE, DIMSE and network timeouts: a PACS that does not answer fails the study, not the node
_DESTINATION = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:@]+):(?P<port>\d{1,5})$")
# Statuses a PACS may answer a stored object with: success and the three C-STORE warnings
# (coercion of data elements, elements discarded, data set does not match SOP class).
STORED = (0x0000, 0xB000, 0xB006, 0xB007)


class ForwardError(RuntimeError):
    """The peer could not be reached or did not store every object (the message says which)."""


@dataclass(frozen=True)
class Destination:
    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        """``AE@host:port`` → Destination; a clear error otherwise."""
        match = _DESTINATION.match(text)
        if not match or not 0 < int(match["port"]) < 65536:
            raise ValueError(f"--forward {text!r}: expected AE@host:port (e.g. ORTHANC@127.0.0.1:4242)")
        return cls(check_ae_title(match["ae"], "--forward AE title"), match["host"], int(match["port"]))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def send_files(files: list[str], dest: Destination, calling_ae: str) -> list[int]:
    """C-STORE every file to ``dest`` over one association; returns the status of each file.

    Raises :class:`ForwardError` when the association fails or a file is not stored (a status
    outside :data:`STORED`)."""
    if not files:
        return []
    metas = [read_file_meta_info(path) for path in files]
    ae = AE(ae_title=check_ae_title(calling_ae, "calling AE title"))
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
    # One context per (SOP class, transfer syntax) of the files: the peer accepts one transfer
    # syntax per context, so each file has a context in its own encoding (no conversion).
    for sop_class, syntax in sorted({(str(m.MediaStorageSOPClassUID), str(m.TransferSyntaxUID)) for m in metas}):
        ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, evt_handlers=[(evt.EVT_CONN_OPEN, set_no_delay)])
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "no answer"
        raise ForwardError(f"association with {dest} failed ({why})")
    statuses, failed = [], []
    try:
        for path in files:
            try:
                answer = assoc.send_c_store(path)
            except (ValueError, AttributeError) as err:  # no accepted context for this object
                raise ForwardError(f"{path}: {dest} accepts no presentation context for it ({err})") from err
            code = int(answer.Status) if "Status" in answer else -1
            statuses.append(code)
            if code not in STORED:
                failed.append(f"{path}: " + (f"status 0x{code:04X}" if code >= 0 else "no response"))
    finally:
        if assoc.is_established:
            assoc.release()
    if failed:
        raise ForwardError(f"{len(failed)} of {len(files)} object(s) not stored by {dest}: {failed[0]}")
    return statuses
