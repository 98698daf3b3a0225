"""Every experiment config under config/ (config/semi/ included; not the _base_ pieces) builds its
model, its loss and its datasets against a tiny prepared cohort, and the model runs on one series
of it: a config that only breaks when someone finally runs it is caught here."""

import glob
import os

import numpy as np
import paddle
import pytest

from engine_fixtures import make_prepared
from medseg.config import Config
from medseg.models.outputs import prediction_logits
from medseg.data.build import build_dataset
from medseg.data.collate import collate_series
from medseg.data.device_augment import to_model_input

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "config", "**", "*.yml"), recursive=True)
                 if f"{os.sep}_base_{os.sep}" not in p)
# Every split a config may name: the prepared ones plus the semi-supervised tags.
SPLITS = {"train": 3, "val": 2, "test": 2, "train_labelled": 2, "train_unlabelled": 2, "semi_pseudo": 2, "test_pseudo": 2}


def test_the_config_list_is_complete():
    names = {os.path.relpath(p, ROOT) for p in CONFIGS}
    assert {"config/demo_cpu.yml", "config/demo_cpu_pretrain.yml", "config/brain_intracranial_hemorrhage_clas_sequential.yml",
            "config/semi/teacher_synthetic.yml", "config/semi/student_synthetic.yml", "config/semi/student_paper.yml",
            "config/semi/head_synthetic.yml"} <= names


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_prepared(str(tmp_path_factory.mktemp("cfg") / "data"), SPLITS, size=40, max_slices=4)


def pointed_at(node, root):
    """The config dict with every dataset_root (lists of datasets included) replaced by ``root``."""
    if isinstance(node, dict):
        return {k: root if k == "dataset_root" else pointed_at(v, root) for k, v in node.items()}
    return [pointed_at(v, root) for v in node] if isinstance(node, list) else node


@pytest.mark.slow  # builds the full-size paper models (Swin-B: about 5-20 s each)
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, os.path.join(ROOT, "config")))
def test_config_builds_model_and_datasets(path, prepared):
    cfg = Config(data=pointed_at(Config(path).dict, prepared))
    cfg.path = path  # error messages name the file
    if cfg.get("train_dataset.type") == "RSNAEmbeddingDataset":
        pytest.skip("a stage 2 on saved embeddings: tests/test_embeddings.py trains it on embeddings of its image config")
    paddle.seed(0)
    model = cfg.build("model")
    cfg.build("loss")
    train = build_dataset(cfg, "train_dataset", seed=0)
    val = build_dataset(cfg, "val_dataset")
    assert len(train) > 0 and len(val) == SPLITS["val"]
    size = int(cfg.get("model.encoder.img_size"))
    channels = 3 * (2 * int(cfg.get("neighbours", 0)) + 1)  # 3 windows of each of the 2k + 1 stacked slices
    for item in (val[0], train[0]):  # as the trainer and evaluator feed the model (CPU or device augmentation)
        batch = to_model_input(collate_series([item]))
        slices = len(item["slice_ids"])
        assert tuple(batch["image"].shape) == (1, slices, channels, size, size), (batch["image"].shape, size)
    model.eval()
    with paddle.no_grad():
        image, mask = (x if isinstance(x, paddle.Tensor) else paddle.to_tensor(x) for x in (batch["image"], batch["mask"]))
        logits = prediction_logits(model(image, mask))
    assert tuple(logits.shape) == (1, slices, 6) and np.isfinite(logits.numpy()).all()
