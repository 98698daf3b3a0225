"""A synthetic CT study with valid DICOM UIDs, to try the node without patient data.

The synthetic cohort keeps the RSNA identifier style (``ID_3f2a…``), which is not a DICOM UID:
the node refuses such objects (0xC001), as a PACS may. This writes the same series with each
identifier mapped to a UID derived from it (so a study written twice has the same UIDs), and
optionally other header values (a localizer, another modality) for tests.

    python -m medseg.node.demo_study OUT_DIR [--slices 40] [--size 512] [--seed 2019] [--index 0]
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import pydicom
from pydicom.uid import generate_uid

from medseg.data.synthetic import synthesize_series
from medseg.data.synthetic.dicom_writer import write_series
from medseg.dicom.validation import disable_value_validation
from medseg.utils.atomic import atomic_open

UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def dicom_uid(identifier: str) -> str:
    """A valid UID derived from any identifier (the same one every time)."""
    return generate_uid(entropy_srcs=[identifier])


def write_demo_study(folder: str, seed: int = 2019, index: int = 0, slices: int = 40, size: int = 512,
                     **tags: Any) -> list[str]:
    """Write one synthetic series into ``folder`` with valid UIDs; ``tags``: header values set on
    every slice (after the UIDs, so a test can set an invalid one). Returns the file paths."""
    os.makedirs(folder, exist_ok=True)
    paths = write_series(synthesize_series(seed, index, size=size, n_slices=slices), folder)
    with disable_value_validation():
        for path in paths:
            ds = pydicom.dcmread(path)
            for keyword in UID_KEYWORDS:
                setattr(ds, keyword, dicom_uid(str(getattr(ds, keyword))))
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            for keyword, value in tags.items():
                setattr(ds, keyword, value)
            with atomic_open(path, "wb") as fh:
                ds.save_as(fh, enforce_file_format=True)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medseg.node.demo_study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="folder for the files (one per slice)")
    p.add_argument("--slices", type=int, default=40)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--seed", type=int, default=2019)
    p.add_argument("--index", type=int, default=0, help="series index in the synthetic cohort of --seed")
    args = p.parse_args(argv)
    paths = write_demo_study(args.out, args.seed, args.index, args.slices, args.size)
    print(f"{len(paths)} files in {os.path.abspath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
