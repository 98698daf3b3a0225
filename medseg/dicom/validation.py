"""pydicom's value validation, relaxed around our own reads and writes only.

RSNA identifiers (``ID_<hex>``) are not valid DICOM UIDs: pydicom 3 warns for each one it reads
and will not write them unless told. Instead of changing ``pydicom.config.settings`` for the whole
process on import (which would also change how any other code in the process reads DICOM), our
reads and writes run inside pydicom's own ``config.disable_value_validation()`` context manager,
and a dataset we return has its elements converted inside it (pydicom converts, and validates,
an element when it is first accessed). The setting is process-global while the block runs, so
DICOM is never read from several threads at once here (prepare uses processes).
"""

from __future__ import annotations

import pydicom
from pydicom.config import disable_value_validation
from pydicom.dataelem import RawDataElement
from pydicom.uid import UID

__all__ = ["convert_elements", "disable_value_validation", "valid_uid"]

PIXEL_GROUP = 0x7FE0


def convert_elements(ds: pydicom.Dataset) -> pydicom.Dataset:
    """Convert (and so validate) every element now, nested sequences included. Pixel data (group
    7FE0: bytes, nothing to validate, and the readers want its raw element) and deferred values
    (large elements read lazily from the file) are left as they are. Call it inside
    :func:`disable_value_validation`."""
    for tag in list(ds.keys()):
        element = ds.get_item(tag, keep_deferred=True)  # as stored: a raw element is not converted
        if tag.group == PIXEL_GROUP or (isinstance(element, RawDataElement) and element.value is None):
            continue
        element = ds[tag]
        if element.VR == "SQ":
            for item in element.value:
                convert_elements(item)
    return ds


def valid_uid(value: object) -> bool:
    """A DICOM UID pydicom would write without complaint (PS3.5 9.1: digits in dot-separated
    components without leading zeros, at most 64 characters); an RSNA ``ID_<hex>`` is not one."""
    return isinstance(value, str) and UID(value).is_valid
