"""Semi-supervised stage: pseudo-label rules and table, leakage check, mixing, the student's loss."""

import os

import numpy as np
import pandas as pd
import paddle
import pytest

from engine_fixtures import TinySeriesNet, write_config
from medseg.constants import LABELS
from medseg.data.mixing import MixedSeriesDataset, source_counts
from medseg.data.meta import META_COLUMNS, read_meta
from medseg.data.dataset import RSNASeriesDataset
from medseg.data.transforms import Normalize, Resize, ToCHW
from medseg.engine.losses import MaskedWeightedBCE
from medseg.semi import pseudo_label as pl
from medseg.semi.dataset import PseudoSeriesDataset
from medseg.semi.leakage import LeakageError, check_no_leakage, check_pseudo_file
from medseg.semi.noise import GaussianNoise, RandomIntensity
from medseg.semi.rules import PseudoLabelRules, harden, keep_mask, pseudo_labels, sharpen
from medseg.semi.subset import split_labelled

TRANSFORMS = [Resize(16), Normalize(), ToCHW()]


@pytest.fixture(scope="module")
def root(prepared_dataset):
    return prepared_dataset({"train": 4, "val": 3, "test": 4}, size=24, min_slices=3, max_slices=5)


def fake_predictions(meta: pd.DataFrame, values: np.ndarray) -> pd.DataFrame:
    frame = meta[["slice_id", "series_id"]].copy()
    frame[list(LABELS)] = values
    return frame


# --- rules -----------------------------------------------------------------------------------

def test_sharpen_and_harden_follow_their_formulas():
    p = np.array([[0.1, 0.5, 0.7, 0.95, 0.02, 0.6]])
    assert np.allclose(sharpen(p, 0.5), p**2 / (p**2 + (1 - p) ** 2))
    assert np.allclose(sharpen(p, 1.0), p)
    assert np.all(np.abs(sharpen(p, 2.0) - 0.5) <= np.abs(p - 0.5))  # T > 1 softens
    assert harden(p, 0.9, 0.05).tolist() == [[0.1, 0.5, 0.7, 1.0, 0.0, 0.6]]


def test_confidence_filter_drops_slices_or_series():
    probs = np.full((5, 6), 0.02)
    probs[1, 3] = 0.5  # one uncertain slice in series a
    probs[3:, 5] = 0.97  # series b: confident positives
    series = np.array(["a", "a", "a", "b", "b"])
    band = (0.2, 0.8)
    assert keep_mask(probs, series, PseudoLabelRules(uncertain_band=band, drop="slice")).tolist() == [True, False, True, True, True]
    assert keep_mask(probs, series, PseudoLabelRules(uncertain_band=band, drop="series")).tolist() == [False] * 3 + [True] * 2
    lenient = PseudoLabelRules(uncertain_band=band, drop="series", max_uncertain_fraction=0.4)
    assert keep_mask(probs, series, lenient).all()
    labels, keep = pseudo_labels(probs, series, PseudoLabelRules(uncertain_band=band, drop="slice", hard_threshold=(0.9, 0.05)))
    assert np.isnan(labels[1]).all() and np.isfinite(labels[keep]).all()
    assert set(np.unique(labels[keep])) == {0.0, 1.0}
    with pytest.raises(ValueError, match="uncertain_band"):
        PseudoLabelRules(uncertain_band=(0.8, 0.2))


# --- pseudo table ----------------------------------------------------------------------------

def test_pseudo_table_format_filtering_and_dataset(root):
    meta = read_meta(root, "test")
    rng = np.random.default_rng(0)
    probs = rng.uniform(0.0, 0.1, size=(len(meta), 6))
    first, second = meta["series_id"].unique()[:2]
    probs[(meta["series_id"] == first).to_numpy(), 0] = 0.5          # whole series uncertain
    uncertain_slice = int(np.flatnonzero((meta["series_id"] == second).to_numpy())[1])
    probs[uncertain_slice, 2] = 0.5                                    # one uncertain slice
    out = os.path.join(root, "test_pseudo_meta.csv")
    rules = PseudoLabelRules(temperature=0.5, uncertain_band=(0.3, 0.7), drop="slice")
    table = pl.pseudo_label(root, ["test"], out, rules, {"test": fake_predictions(meta, probs)})

    written = pd.read_csv(out, dtype={"slice_id": str, "series_id": str})
    assert list(written.columns) == list(META_COLUMNS)
    assert len(written) == len(table)
    assert first not in set(written["series_id"])  # every slice uncertain → series removed
    assert written.equals(written.sort_values(["series_id", "slice_idx"]).reset_index(drop=True))
    merged = written.merge(meta, on="slice_id", suffixes=("", "_src"))
    assert (merged["cache"] == merged["cache_src"]).all() and (merged["crop_y0"] == merged["crop_y0_src"]).all()
    dropped = written["slice_id"] == meta.loc[uncertain_slice, "slice_id"]
    assert written.loc[dropped, list(LABELS)].isna().all(axis=None)
    kept = written.loc[~dropped, list(LABELS)].to_numpy()
    assert np.isfinite(kept).all() and kept.min() >= 0 and kept.max() <= 1
    source = fake_predictions(meta, probs).set_index("slice_id").loc[written.loc[~dropped, "slice_id"], list(LABELS)]
    assert np.allclose(kept, sharpen(source.to_numpy(), 0.5))

    dataset = PseudoSeriesDataset(root, "test_pseudo", TRANSFORMS)
    index = dataset.series_ids.index(second)
    item = dataset[(index, 0)]
    assert len(item["image"]) == dataset.num_slices(index) == int((written["series_id"] == second).sum()) - 1
    assert meta.loc[uncertain_slice, "slice_id"] not in item["slice_ids"]
    assert np.isfinite(item["label"]).all()
    # Training windows run over the kept slices only, and images match their slice ids.
    windowed = PseudoSeriesDataset(root, "test_pseudo", TRANSFORMS, max_slices=2)
    for epoch in range(4):
        part = windowed[(index, epoch)]
        assert len(part["slice_ids"]) == len(part["image"]) == 2
        at = [item["slice_ids"].index(s) for s in part["slice_ids"]]
        assert at[1] == at[0] + 1
        np.testing.assert_array_equal(part["label"], item["label"][at])
        np.testing.assert_array_equal(part["image"], item["image"][at])


def test_cli_with_a_teacher_checkpoint_and_its_refusals(root, tmp_path, capsys):
    config = write_config(str(tmp_path / "teacher.yml"), root, size=16)
    model = TinySeriesNet(width=8)
    weights = str(tmp_path / "model.pdparams")
    paddle.save(model.state_dict(), weights)
    out = os.path.join(root, "cli_pseudo_meta.csv")
    base = ["--config", config, "--model", weights, "--out", out]
    assert pl.main(base + ["--split", "test", "--temperature", "0.5", "--hard_threshold", "0.9", "0.1"]) == 0
    table = pd.read_csv(out)
    assert table["series_id"].nunique() == 4 and np.isfinite(table[list(LABELS)].to_numpy()).all()
    assert "wrote" in capsys.readouterr().out
    before = os.path.getmtime(out)
    assert pl.main(base + ["--split", "val"]) == 2           # validation is never pseudo-labelled
    assert "validation is never pseudo-labelled" in capsys.readouterr().err
    assert pl.main(base + ["--split", "train"]) == 2         # train is in the default --exclude
    assert pl.main(["--config", config, "--model", weights, "--split", "test",
                    "--out", os.path.join(root, "test_meta.csv")]) == 2  # never overwrite a prepared table
    assert pl.main(["--config", config, "--model", weights, "--split", "test",
                    "--out", str(tmp_path / "x_meta.csv")]) == 2  # outside the dataset root
    assert os.path.getmtime(out) == before


def test_cli_with_tables_in_either_format_one_per_part(root, tmp_path, capsys):
    """--predictions takes several tables, a predictions CSV and a Kaggle ID,Label file (how bench/semi.sh
    feeds the true labels to its oracle): their slices are combined, the labels pass through unchanged;
    a slice in two tables or in none is an error naming the file, and the output is left alone."""
    from medseg.outputs.predictions import wide_to_kaggle
    config = write_config(str(tmp_path / "teacher.yml"), root, size=16)
    meta = read_meta(root, "test")
    values = np.random.default_rng(5).integers(0, 2, size=(len(meta), 6)).astype(float)
    frame = fake_predictions(meta, values)
    half = meta["series_id"].isin(meta["series_id"].unique()[:2]).to_numpy()
    wide, kaggle = str(tmp_path / "part_a.csv"), str(tmp_path / "part_b.csv")
    frame[half].to_csv(wide, index=False)
    wide_to_kaggle(frame[~half]).to_csv(kaggle, index=False)
    out = os.path.join(root, "tables_pseudo_meta.csv")
    base = ["--config", config, "--split", "test", "--out", out]
    assert pl.main(base + ["--predictions", wide, kaggle]) == 0
    written = pd.read_csv(out, dtype={"slice_id": str}).set_index("slice_id").loc[meta["slice_id"], list(LABELS)]
    np.testing.assert_array_equal(written.to_numpy(), values)
    before = os.path.getmtime(out)
    capsys.readouterr()
    assert pl.main(base + ["--predictions", wide, kaggle, wide]) == 2
    assert f"{wide}: {int(half.sum())} slice(s) also in {wide}" in capsys.readouterr().err
    assert pl.main(base + ["--predictions", kaggle]) == 2  # the other half has no prediction
    assert f"{int(half.sum())} slice(s) of the split have no teacher prediction" in capsys.readouterr().err
    assert os.path.getmtime(out) == before


def test_teacher_calibration_is_applied_before_the_rules(root, tmp_path):
    """A calibration.json beside the teacher's weights turns its probabilities into calibrated ones
    before any sharpening, as infer.py does; --no_calibration keeps the raw ones."""
    from medseg.outputs.calibrate import Calibration, apply_calibration, write_calibration
    folder = tmp_path / "teacher"
    folder.mkdir()
    config = write_config(str(tmp_path / "teacher.yml"), root, size=16)
    weights = str(folder / "model.pdparams")
    paddle.seed(3)
    paddle.save(TinySeriesNet(width=8).state_dict(), weights)
    raw_out, cal_out = os.path.join(root, "raw_pseudo_meta.csv"), os.path.join(root, "cal_pseudo_meta.csv")
    base = ["--config", config, "--model", weights, "--split", "test"]
    assert pl.main(base + ["--out", raw_out]) == 0
    temperature = (2.0, 0.5, 1.0, 3.0, 1.5, 0.7)
    write_calibration(Calibration(temperature=temperature, n_slices=10), str(folder / "calibration.json"))
    assert pl.main(base + ["--out", cal_out, "--temperature", "0.5"]) == 0
    assert pl.main(base + ["--out", os.path.join(root, "nocal_pseudo_meta.csv"), "--no_calibration"]) == 0
    raw = pd.read_csv(raw_out)[list(LABELS)].to_numpy()
    calibrated = pd.read_csv(cal_out)[list(LABELS)].to_numpy()
    np.testing.assert_allclose(pd.read_csv(os.path.join(root, "nocal_pseudo_meta.csv"))[list(LABELS)].to_numpy(), raw)
    expected = sharpen(apply_calibration(raw, Calibration(temperature=temperature, n_slices=10)), 0.5)
    np.testing.assert_allclose(calibrated, expected, atol=1e-5)
    assert not np.allclose(calibrated, sharpen(raw, 0.5), atol=1e-3)


# --- leakage ---------------------------------------------------------------------------------

def test_leakage_check_by_series_and_by_patient(root, tmp_path):
    test = read_meta(root, "test")
    val = read_meta(root, "val")
    check_no_leakage(test, root)  # clean
    with pytest.raises(LeakageError, match="series also in .*val_meta.csv"):
        check_no_leakage(pd.concat([test, val]), root)
    renamed = read_meta(root, "train").head(3).assign(series_id="ID_new", slice_id=lambda f: f["slice_id"] + "x")
    with pytest.raises(LeakageError, match="patient"):
        check_no_leakage(pd.concat([test, renamed]), root)
    # The same check guards a training config that loads the tag.
    leaky = pd.concat([test, val])
    leaky.to_csv(os.path.join(root, "leaky_pseudo_meta.csv"), index=False)
    with pytest.raises(LeakageError):
        PseudoSeriesDataset(root, "leaky_pseudo", TRANSFORMS)
    with pytest.raises(LeakageError, match="not a pseudo-labelled"):
        check_pseudo_file(root, "val")


def test_labelled_subset_is_split_by_patient(root):
    labelled, hidden = split_labelled(read_meta(root, "train"), 0.5, seed=0)
    assert not set(labelled["patient_id"]) & set(hidden["patient_id"])
    assert len(labelled) + len(hidden) == len(read_meta(root, "train"))
    assert hidden[list(LABELS)].isna().all(axis=None) and labelled[list(LABELS)].notna().all(axis=None)


# --- student training pieces ------------------------------------------------------------------

def test_soft_label_loss_equals_the_bce_formula():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 5, 6)).astype(np.float32)
    labels = sharpen(rng.uniform(size=(2, 5, 6)), 0.7).astype(np.float32)  # pseudo-labels are soft
    mask = np.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], bool)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    bce = -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    weights = np.array([1, 1, 1, 1, 1, 2.0])
    expected = ((bce * weights).sum(-1) / weights.sum())[mask].mean()
    loss = MaskedWeightedBCE()(paddle.to_tensor(logits), paddle.to_tensor(labels), paddle.to_tensor(mask))
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_mixing_draws_both_sources_in_ratio(root):
    out = os.path.join(root, "mix_pseudo_meta.csv")
    meta = read_meta(root, "test")
    pl.pseudo_label(root, ["test"], out, PseudoLabelRules(), {"test": fake_predictions(meta, np.full((len(meta), 6), 0.1))})
    labelled = RSNASeriesDataset(root, "train", TRANSFORMS)
    pseudo = PseudoSeriesDataset(root, "mix_pseudo", TRANSFORMS)
    mixed = MixedSeriesDataset([labelled, pseudo], ratios=[3, 1], epoch_size=12, seed=1)
    assert mixed.counts == [9, 3] and len(mixed) == 12
    sources = {0: set(labelled.series_ids), 1: set(pseudo.series_ids)}
    drawn = [mixed[(i, 0)]["series_id"] for i in range(len(mixed))]
    from_labelled = [s for s in drawn if s in sources[0]]
    assert len(from_labelled) == 9 and len(drawn) - len(from_labelled) == 3
    assert set(from_labelled) == sources[0]  # the small source is cycled through completely
    assert [mixed.locate(i, 0) for i in range(12)] == [mixed.locate(i, 0) for i in range(12)]  # deterministic
    assert [mixed.locate(i, 0)[1] for i in range(12)] != [mixed.locate(i, 1)[1] for i in range(12)]
    assert source_counts([10, 10], [1, 1e-6], 10) == [9, 1]
    assert source_counts([4, 4], [1, 0], 6) == [6, 0]  # a source switched off (the bench's control)
    with pytest.raises(ValueError, match="a series must come from one source"):
        MixedSeriesDataset([labelled, RSNASeriesDataset(root, "train", TRANSFORMS)])


def test_noise_transforms_are_reproducible_and_keep_uint8():
    image = np.random.default_rng(0).integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
    for transform in (RandomIntensity(prob=1.0), GaussianNoise(std=(4, 8), prob=1.0)):
        a = transform(image, np.random.default_rng(5))
        b = transform(image, np.random.default_rng(5))
        assert a.dtype == np.uint8 and a.shape == image.shape and np.array_equal(a, b) and not np.array_equal(a, image)


def test_student_config_trains_on_the_mixture(root, tmp_path):
    from medseg.config import Config
    from medseg.engine.trainer import TrainOptions, train

    meta = read_meta(root, "test")
    pl.pseudo_label(root, ["test"], os.path.join(root, "student_pseudo_meta.csv"), PseudoLabelRules(),
                    {"test": fake_predictions(meta, np.full((len(meta), 6), 0.2))})
    config = write_config(str(tmp_path / "student.yml"), root, size=16, iters=2)
    source = {"type": "RSNASeriesDataset", "dataset_root": root, "split": "train",
              "transforms": [{"type": "Resize", "size": 16}, {"type": "Normalize"}, {"type": "ToCHW"}]}
    mixture = {"type": "MixedSeriesDataset", "ratios": [1, 1],
               "datasets": [source, {**source, "type": "PseudoSeriesDataset", "split": "student_pseudo"}]}
    cfg = Config(config)
    cfg.dict["train_dataset"] = mixture
    result = train(cfg, TrainOptions(save_dir=str(tmp_path / "run"), save_interval=2, log_iters=1))
    assert result["iteration"] == 2 and os.path.isdir(result["checkpoint"])
