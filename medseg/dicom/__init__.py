"""DICOM reading: headers, pixels, series assembly, typed errors naming the file.

pydicom's value validation is relaxed only around our own reads (see ``medseg.dicom.validation``);
importing this package changes no pydicom setting.
"""
