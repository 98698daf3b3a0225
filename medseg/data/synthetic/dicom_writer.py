"""Write a synthetic series as RSNA-like DICOM files (one per slice, named ``<SOPInstanceUID>.dcm``).

Files are real DICOM Part 10 (128-byte preamble, file meta, Explicit VR Little Endian), with
the RSNA identifier style and the storage quirk of the series (see ``quirks``). Optionally one
slice gets truncated PixelData: it still parses, but ``pixel_array`` fails, like the real
``ID_6431af929.dcm``.
"""

from __future__ import annotations

import os

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian

from medseg.data.synthetic.quirks import encode_pixels
from medseg.data.synthetic.series import SyntheticSeries
from medseg.dicom.validation import disable_value_validation
from medseg.utils.atomic import atomic_open


def _series_header(series: SyntheticSeries, pixel_tags: dict) -> dict:
    plan = series.plan
    header = {
        "SOPClassUID": CTImageStorage,
        "Modality": "CT",
        "PatientID": plan.patient_id,
        "PatientName": plan.patient_id,
        "StudyInstanceUID": plan.study_id,
        "SeriesInstanceUID": plan.series_id,
        "StudyID": "",
        "SeriesNumber": 1,
        "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
        "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2",
        "Rows": series.size,
        "Columns": series.size,
        "PixelSpacing": [series.pixel_mm, series.pixel_mm],
        # The site's slice sensitivity width where it has one; else the spacing (classic).
        "SliceThickness": round(plan.site_params.thickness_mm, 3) if plan.site_params and plan.site_params.thickness_mm
        else plan.spacing_mm,
    }
    header.update(plan.window)
    header.update(pixel_tags)
    return header


def _slice_dataset(series: SyntheticSeries, k: int, header: dict, pixels: bytes) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = series.sop_ids[k]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128
    for keyword, value in header.items():
        setattr(ds, keyword, value)
    ds.SOPInstanceUID = series.sop_ids[k]
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [series.origin[0], series.origin[1], float(series.positions[k])]
    ds.PixelData = pixels
    ds["PixelData"].VR = "OW"
    return ds


def write_series(series: SyntheticSeries, folder: str, truncate_slice: int | None = None) -> list[str]:
    """Write every slice of ``series`` into ``folder`` atomically; return the file paths.

    RSNA-style ids (``ID_<hex>``) are not valid UIDs: pydicom's validation is off while the
    datasets are built and written (``medseg.dicom.validation``)."""
    raw, pixel_tags = encode_pixels(series.hu, series.quirk, series.fov)
    paths = []
    with disable_value_validation():
        header = _series_header(series, pixel_tags)
        for k in range(len(series.sop_ids)):
            data = raw[k].astype(raw.dtype.newbyteorder("<"), copy=False).tobytes()
            if k == truncate_slice:
                data = data[: (len(data) // 2) & ~1]
            ds = _slice_dataset(series, k, header, data)
            path = os.path.join(folder, f"{series.sop_ids[k]}.dcm")
            with atomic_open(path, "wb") as fh:
                pydicom.dcmwrite(fh, ds, enforce_file_format=True)
            paths.append(path)
    return paths
