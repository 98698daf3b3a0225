"""A tiny Kaggle-layout cohort written with pydicom: good series of every pixel quirk, a bad-file
corpus, a hostile SeriesInstanceUID, label-table oddities. Returns the ground truth to check."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from dicom_fixtures import ct_dataset, phantom, save
from medseg.constants import LABELS, TEST_DIR, TRAIN_CSV, TRAIN_DIR


@dataclass
class Cohort:
    hu: dict[str, np.ndarray] = field(default_factory=dict)  # slice_id → true HU
    z: dict[str, float] = field(default_factory=dict)
    series_of: dict[str, str] = field(default_factory=dict)
    patient_of: dict[str, str] = field(default_factory=dict)  # series → patient
    bad: dict[str, str] = field(default_factory=dict)  # file (relative) → expected reason keyword
    labels: pd.DataFrame | None = None


def make_cohort(raw: str, size: int = 32, n_extra: int = 0, slices: int = 4) -> Cohort:
    cohort = Cohort()
    plan = [  # series, patient, quirk, z step (negative = descending acquisition), split
        ("ID_serA", "ID_pat1", "signed", 5.0, TRAIN_DIR),
        ("ID_serB", "ID_pat1", "unsigned", -5.0, TRAIN_DIR),
        ("ID_serC", "ID_pat2", "bug12", 2.5, TRAIN_DIR),
        ("ID_serD", "ID_pat3", "signed", -5.0, TRAIN_DIR),
        ("../../x", "ID_pat4", "unsigned", 5.0, TRAIN_DIR),
        ("ID_serE", "ID_pat5", "bug12", 5.0, TRAIN_DIR),
        ("ID_serF", "ID_pat6", "signed", 5.0, TRAIN_DIR),
        ("ID_serT", "ID_pat9", "unsigned", 5.0, TEST_DIR),
    ] + [(f"ID_extra{i:02d}", f"ID_patx{i:02d}", ("signed", "unsigned", "bug12")[i % 3], 5.0, TRAIN_DIR) for i in range(n_extra)]
    rows = []
    for s, (series, patient, quirk, step, folder) in enumerate(plan):
        cohort.patient_of[series] = patient
        for k in range(slices):
            sop = f"ID_{s:03x}{k:03x}"
            hu = phantom(size, k, seed=s)
            z = 100.0 + k * step
            save(ct_dataset(sop, series, hu, z, k + 1, patient_id=patient, quirk=quirk), os.path.join(raw, folder, f"{sop}.dcm"))
            cohort.hu[sop], cohort.z[sop], cohort.series_of[sop] = hu, z, series
            if folder == TRAIN_DIR:
                positive = {"epidural": s == 5, "subdural": k == 1, "intraventricular": s == 2 and k == 2}
                flags = [float(positive.get(name, False)) for name in LABELS[:-1]]
                rows += [(f"{sop}_{name}", flag) for name, flag in zip(LABELS, flags + [float(any(flags))])]
    train = os.path.join(raw, TRAIN_DIR)

    def bad(name, reason, ds=None, label=True):
        if ds is not None:
            save(ds, os.path.join(train, name))
        cohort.bad[f"{TRAIN_DIR}/{name}"] = reason
        if label:
            rows.extend((f"{name[:-4]}_{n}", 0.0) for n in LABELS)

    # The RSNA truncated file: PixelData cut short, label rows present.
    path = save(ct_dataset("ID_trunc", "ID_serA", phantom(size, 9), 999.0, 99, patient_id="ID_pat1"), os.path.join(train, "ID_trunc.dcm"))
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) - 64)
    bad("ID_trunc.dcm", "bytes into PixelData")
    open(os.path.join(train, "ID_zero.dcm"), "wb").close()
    bad("ID_zero.dcm", "empty file")
    with open(os.path.join(train, "ID_text.dcm"), "w") as fh:
        fh.write("not an image\n" * 50)
    bad("ID_text.dcm", "not a DICOM file")
    ds = ct_dataset("ID_nopix", "ID_serD", phantom(size, 9), 50.0, 50, patient_id="ID_pat3")
    del ds.PixelData
    bad("ID_nopix.dcm", "no PixelData", ds)
    ds = ct_dataset("ID_mr", "ID_serD", phantom(size, 9), 51.0, 51, patient_id="ID_pat3")
    ds.Modality = "MR"
    bad("ID_mr.dcm", "Modality is 'MR'", ds)
    ds = ct_dataset("ID_noipp", "ID_serC", phantom(size, 9), 52.0, 52, patient_id="ID_pat2", quirk="bug12")
    del ds.ImagePositionPatient
    bad("ID_noipp.dcm", "ImagePositionPatient missing", ds)
    ds = ct_dataset("ID_odd", "ID_serF", phantom(size + 2, 9), 53.0, 53, patient_id="ID_pat6")
    bad("ID_odd.dcm", f"slice is {size + 2}x{size + 2}", ds)
    ds = ct_dataset("ID_nolabel", "ID_serF", phantom(size, 9), 54.0, 54, patient_id="ID_pat6")
    bad("ID_nolabel.dcm", "no label rows", ds, label=False)
    rows.extend((f"ID_ghost_{n}", 0.0) for n in LABELS)  # labelled image without a file
    rows.extend(rows[:6])  # a repeated six-row group, as in the real stage_2_train.csv
    pd.DataFrame(rows, columns=["ID", "Label"]).to_csv(os.path.join(raw, TRAIN_CSV), index=False)
    table = pd.DataFrame(rows, columns=["ID", "Label"]).drop_duplicates("ID")
    parts = table["ID"].str.rsplit("_", n=1, expand=True)
    cohort.labels = table.assign(slice_id=parts[0], subtype=parts[1]).pivot(index="slice_id", columns="subtype", values="Label")[list(LABELS)]
    return cohort
