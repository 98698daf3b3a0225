"""pydicom settings for RSNA-style files.

RSNA identifiers (``ID_<hex>``) are not valid DICOM UIDs. With default settings pydicom warns on
every file it reads and refuses to write them, so both validation modes are relaxed once, here,
for every module that reads or writes DICOM.
"""

import pydicom.config

pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
