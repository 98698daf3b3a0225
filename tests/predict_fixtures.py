"""Test helpers for predict/export: a 64 px demo-CNN config, an untrained checkpoint, a study folder."""

from __future__ import annotations

import os
import shutil

import paddle
from pydicom.data import get_testdata_file

from medseg.config import Config
from medseg.data.synthetic import synthesize_series
from medseg.data.synthetic.dicom_writer import write_series

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_CT = ("CT_small.dcm", "693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm")  # fetched by name, never a glob
SYNTH_SLICES = 6
SIZE = 64


def write_config(path: str, model: str = "") -> str:
    """The demo CNN model (ResNet-18 + sequence transformer) at 64 px with the demo's eval transforms.

    ``model``: more YAML lines of the ``model`` section (indented by two spaces), e.g. another head.
    """
    base = os.path.join(ROOT, "config", "_base_", "models", "demo_cnn.yml")
    text = f"""\
_base_: {base}
model:
  encoder: {{img_size: {SIZE}, chunk_size: 4}}
{model}val_dataset:
  type: RSNASeriesDataset
  dataset_root: unused
  split: val
  transforms:
    - {{type: Resize, size: {SIZE}}}
    - {{type: Normalize, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}}
    - {{type: ToCHW}}
"""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


def write_checkpoint(config: str, folder: str, seed: int = 3) -> str:
    """Untrained weights saved the way the trainer saves them (``folder/model.pdparams``)."""
    paddle.seed(seed)
    model = Config(config).build("model")
    os.makedirs(folder, exist_ok=True)
    paddle.save(model.state_dict(), os.path.join(folder, "model.pdparams"))
    return folder


def write_study(folder: str) -> dict[str, list[str]]:
    """Real pydicom CT files (renamed, no extension), a nested synthetic series, and strays.

    Returns the expected CT slice ids per kind and the stray files (relative paths).
    """
    nested = os.path.join(folder, "patient 1", "study", "series_a")
    os.makedirs(nested)
    series = synthesize_series(11, 0, size=SIZE, n_slices=SYNTH_SLICES)
    synth = [os.path.splitext(os.path.basename(p))[0] for p in write_series(series, nested)]
    real_dir = os.path.join(folder, "other", "real")
    os.makedirs(real_dir)
    real = []
    for name in REAL_CT:
        stem = os.path.splitext(name)[0]
        shutil.copy(get_testdata_file(name), os.path.join(real_dir, stem))
        real.append(stem)
    strays = write_strays(folder)
    return {"synthetic": synth, "real": real, "strays": strays, "series_id": [series.plan.series_id]}


def write_strays(folder: str) -> list[str]:
    """A text file, a zero-byte file and an MR image: files predict must skip with a reason."""
    os.makedirs(os.path.join(folder, "misc"), exist_ok=True)
    with open(os.path.join(folder, "notes.txt"), "w", encoding="utf-8") as fh:
        fh.write("not an image\n")
    open(os.path.join(folder, "misc", "empty"), "wb").close()
    shutil.copy(get_testdata_file("MR_small.dcm"), os.path.join(folder, "misc", "mr_slice.dcm"))
    return ["notes.txt", "misc/empty", "misc/mr_slice.dcm"]


def tree_state(folder: str, skip: str | None = None) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime_ns)}`` of every file and folder under ``folder`` except ``skip``."""
    state = {}
    skip = os.path.abspath(skip) if skip else None
    for here, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if os.path.abspath(os.path.join(here, d)) != skip]
        for name in dirs + files:
            path = os.path.join(here, name)
            st = os.stat(path)
            state[os.path.relpath(path, folder)] = (st.st_size if name in files else 0, st.st_mtime_ns)
    return state
