"""Typed DICOM errors. Each names the file and says what was wrong, so a run over 750k files can
report a bad one in ``prepare_errors.csv`` and carry on instead of dying on it."""

from __future__ import annotations


class DicomReadError(Exception):
    """Base class: ``path`` is the offending file, ``reason`` a one-line human explanation."""

    def __init__(self, path: str, reason: str, series_id: str = "") -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason
        self.series_id = series_id  # when known: the series the file claims to belong to
        # When the header was parsed: its StudyInstanceUID and the values series triage reads
        # (medseg.dicom.header.ImageTags), so a file rejected here still counts for its series.
        self.study_id = ""
        self.tags = None

    def __reduce__(self):  # keep the fields when the error crosses a process boundary
        return (type(self), (self.path, self.reason, self.series_id), {"study_id": self.study_id, "tags": self.tags})


class NotDicomError(DicomReadError):
    """Empty file, text file, or anything pydicom cannot parse as DICOM."""


class TruncatedFileError(DicomReadError):
    """The file ends in the middle of an element (download or copy cut short)."""


class MissingPixelDataError(DicomReadError):
    """The dataset has no PixelData element."""


class TruncatedPixelDataError(DicomReadError):
    """PixelData is shorter than Rows x Columns x BitsAllocated says, or cannot be decoded."""


class NotCTError(DicomReadError):
    """Modality is not CT (HU windows make no sense for MR, PET, ...)."""


class MissingTagError(DicomReadError):
    """An identifier or image attribute that every CT slice needs is absent."""


class MissingGeometryError(DicomReadError):
    """ImagePositionPatient / ImageOrientationPatient absent or malformed."""


class UnsupportedImageError(DicomReadError):
    """Multi-frame, colour or otherwise not a single greyscale CT slice."""


class UnsupportedTransferSyntaxError(DicomReadError):
    """No installed pixel data handler can decode this transfer syntax."""


class InconsistentSliceError(DicomReadError):
    """A slice that does not fit its series (different size, or no geometry when others have it)."""
