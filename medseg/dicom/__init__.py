"""DICOM reading. Importing this package relaxes pydicom's UID validation (see ``pydicom_setup``)."""

from medseg.dicom import pydicom_setup  # noqa: F401  (side effect: quiet, permissive pydicom)
