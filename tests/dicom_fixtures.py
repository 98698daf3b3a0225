"""Small pydicom-written CT files for the ingestion tests: good series and a corpus of bad files."""

from __future__ import annotations

import os

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from medseg.dicom.modality import modality_params, raw_to_hu
from medseg.dicom.pixels import read_pixels
from medseg.dicom.validation import disable_value_validation


@disable_value_validation()  # RSNA-style ids are not valid UIDs: built and written as our writer does
def ct_dataset(sop_id: str, series_id: str, hu: np.ndarray, z: float, instance: int, *, patient_id: str = "ID_p0",
               study_id: str | None = None, quirk: str = "signed", orientation=(1, 0, 0, 0, 1, 0)) -> Dataset:
    """One CT slice whose true HU is ``hu`` (int), stored with the named pixel quirk."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_id
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_id
    ds.Modality = "CT"
    ds.PatientID = patient_id
    ds.StudyInstanceUID = study_id or f"{series_id}_study"
    ds.SeriesInstanceUID = series_id
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [-100.0, -100.0, float(z)]
    ds.ImageOrientationPatient = list(orientation)
    ds.PixelSpacing = [0.5, 0.5]
    ds.SliceThickness = 5.0
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.RescaleSlope = 1
    values = hu.astype(np.int32)
    if quirk == "signed":  # intercept -1024, -2000 padding outside a disc
        raw = values + 1024
        yy, xx = np.mgrid[: hu.shape[0], : hu.shape[1]]
        outside = (yy - hu.shape[0] / 2) ** 2 + (xx - hu.shape[1] / 2) ** 2 > (0.48 * hu.shape[0]) ** 2
        raw[outside] = -2000
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.RescaleIntercept = 16, 15, 1, -1024
        ds.PixelPaddingValue = -2000
        data = raw.astype(np.int16)
        ds.WindowCenter, ds.WindowWidth = [40, 300], [80, 1500]
    elif quirk == "unsigned":
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.RescaleIntercept = 12, 11, 0, -1024
        data = (values + 1024).astype(np.uint16)
    elif quirk == "bug12":
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.RescaleIntercept = 12, 11, 0, 0
        data = np.mod(values, 4096).astype(np.uint16)
    else:
        raise ValueError(quirk)
    ds.PixelData = data.tobytes()
    return ds


def read_hu(path: str, map_padding: bool = True) -> np.ndarray:
    """One slice in HU through the reader: pydicom's decode, then our modality rules."""
    ds, raw = read_pixels(path)
    return raw_to_hu(raw, modality_params(ds), map_padding=map_padding)


@disable_value_validation()
def save(ds: Dataset, path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def phantom(size: int, z_index: int, seed: int = 0) -> np.ndarray:
    """Integer HU: air, a skull ring, brain, a small bright blob, a thin 'headrest' line."""
    rng = np.random.default_rng(seed + z_index)
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size * 0.45, xx - size * 0.5) / size
    hu = np.full((size, size), -1000, dtype=np.int32)
    hu[r < 0.36] = 1200
    hu[r < 0.32] = 35 + z_index
    hu[(np.abs(yy - size * 0.3) < 2) & (np.abs(xx - size * 0.5) < 3)] = 70
    hu[int(size * 0.9), size // 4 : -size // 4] = 200  # 1-pixel "headrest" line the crop must ignore
    hu += rng.integers(-5, 6, hu.shape, dtype=np.int32) * (r < 0.32)
    return hu
