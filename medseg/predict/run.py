"""``run_predict``: a DICOM folder → predictions.csv, predictions.json, skipped.csv, report.html
(and, with ``dicom_out``, an SR and a Secondary Capture series per predicted series:
:mod:`medseg.predict.dicom_out`). :class:`Predictor` loads the model once for many folders (a
DICOM node); ``run_predict`` is one Predictor for one folder.

Every series found goes through triage first (:mod:`medseg.predict.triage`): only axial CT
series are predicted, every other file is named in skipped.csv with its reason. Series are read, preprocessed and predicted ``batch_size`` at a time (padded with the mask like
training batches), so memory holds one batch of images, not the whole study. Everything is
written below ``out_dir`` (and ``dicom_out``); neither is scanned as input even if it lies inside
the DICOM folder.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np
from tqdm import tqdm

from medseg.config import Config
from medseg.constants import DEFAULT_WINDOWS, LABELS
from medseg.data.build import build_eval_transforms, config_input_channels, config_neighbours, eval_section, eval_transform_config
from medseg.data.collate import collate_series
from medseg.data.crop import DEFAULT_CROP, check_crop_mode
from medseg.data.windows import Window, format_windows, parse_windows
from medseg.engine.tta import record as tta_record
from medseg.engine.tta import resolve_tta
from medseg.export.meta import read_meta
from medseg.predict.backend import load_models, model_kind
from medseg.predict.discover import Skipped, list_files, scan_headers
from medseg.predict.report_html import write_report
from medseg.predict.saliency import ReportViews
from medseg.predict.study import SeriesInput, load_series, unique_slice_ids
from medseg.predict.tables import SeriesResult, output_paths, write_predictions_csv, write_predictions_json, write_skipped
from medseg.predict.triage import SeriesInfo, triage_folder
from medseg.utils.logger import get_logger

logger = get_logger("predict")


class NothingReadableError(ValueError):
    """The folder holds no series to predict; the message says where to look."""


@dataclass
class PredictSummary:
    out_dir: str
    files: int
    series: int
    slices: int
    skipped: int
    flagged_series: int
    seconds: dict[str, float] = field(default_factory=dict)
    not_predicted: int = 0  # series found but not predicted (reasons in skipped.csv)
    dicom_files: list[str] = field(default_factory=list)  # absolute paths under dicom_out, each series' SR first

    def format(self) -> str:
        times = ", ".join(f"{k} {v:.2f}s" for k, v in self.seconds.items())
        return (f"{self.series} series, {self.slices} slices predicted from {self.files} files; {self.skipped} skipped; "
                f"{self.not_predicted} series not predicted; "
                f"{self.flagged_series} series with a slice at or above the threshold ({times}) → {self.out_dir}")


@dataclass
class FolderRun:
    """What :func:`predict_folder` found: the files looked at, the predicted series, the files
    left out, every series' triage record (predicted or not) and seconds per stage."""

    files: list[str]
    results: list[SeriesResult]
    skipped: list[Skipped]
    series_info: list[SeriesInfo]
    seconds: dict[str, float]


def resolve_windows(model_path: str, windows: str | None) -> tuple[Window, ...]:
    """Prepare's windows: an exported model's own (a different ``--windows`` is an error), else
    ``windows`` or the default."""
    if model_kind(model_path) == "export":
        exported = parse_windows(read_meta(model_path).windows)
        if windows is not None and parse_windows(windows) != exported:
            raise ValueError(f"{model_path}: exported for windows {format_windows(exported)}, not {windows}")
        return exported
    return parse_windows(windows) if windows else DEFAULT_WINDOWS


def check_export_transforms(cfg: Config, model_path: str, windows: int | None = None) -> None:
    """An exported model must be fed the preprocessing it was exported with (and, given the
    number of ``windows``, the input channels the config's ``neighbours`` make)."""
    if model_kind(model_path) != "export":
        return
    meta = read_meta(model_path)
    if meta.transforms != eval_transform_config(cfg):
        raise ValueError(f"{model_path}: the eval transforms of {cfg.path} differ from those the model was exported with "
                         f"(use the export's config.yml)")
    if windows is not None and meta.channels != config_input_channels(cfg, windows):
        raise ValueError(f"{model_path}: exported for {meta.channels} input channels, {cfg.path} gives "
                         f"{config_input_channels(cfg, windows)} (neighbours: {config_neighbours(cfg)}; use the export's config.yml)")


def eval_crop_mode(cfg: Config) -> str:
    """The crop mode of the eval dataset section (its first entry when a list): what the model
    was validated on, so a DICOM folder is cropped the same way (``head`` when not given)."""
    key = eval_section(cfg)
    section = cfg.section(key)
    entry = section[0] if isinstance(section, list) else section
    crop = entry.get("crop") if isinstance(entry, dict) else None
    return DEFAULT_CROP if crop is None else check_crop_mode(crop, f"{cfg.path or '<config>'}: {key}.crop")


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def batch_probabilities(model, inputs: list[SeriesInput]) -> list[np.ndarray]:
    """Probabilities [S_i, 6] for each series of one padded batch (the model takes each series'
    slices in its :meth:`SeriesInput.model_image` order; the rows come back in the series' order)."""
    batch = collate_series([{"image": s.model_image(), "label": np.zeros((len(s.image), len(LABELS)), np.float32),
                             "series_id": s.series_id, "slice_ids": s.slice_ids} for s in inputs])
    probs = model(batch["image"], batch["mask"])
    return [s.from_model_order(probs[b, :len(s.slice_ids)].astype(np.float64)) for b, s in enumerate(inputs)]


def predict_folder(model, root: str, transforms, windows: tuple[Window, ...], batch_size: int = 1,
                   exclude: tuple[str, ...] = (), progress: bool = True, crop: str = DEFAULT_CROP,
                   on_series: Callable[[SeriesInput, np.ndarray], None] | None = None,
                   slab_mm: float | None = None, min_slices: int = 1, neighbours: int = 0) -> FolderRun:
    """Discover, triage, read, preprocess (``crop`` mode: :func:`eval_crop_mode`) and predict every
    series under ``root`` that triage keeps (nothing is written). ``on_series(input,
    probabilities)`` is called per predicted series, in the order of the results, while its model
    input is in memory (the report's large slices and saliency maps:
    :class:`medseg.predict.saliency.ReportViews`). ``slab_mm``: average thin series into slabs of
    about that many mm; ``min_slices``: leave out series with fewer slices; ``neighbours``: k
    neighbour slices stacked as channels (the config's, :func:`config_neighbours`).
    """
    seconds = {"scan": 0.0, "read": 0.0, "preprocess": 0.0, "model": 0.0}
    tic = time.perf_counter()
    files = list_files(root, exclude=exclude)
    headers, errors = scan_headers(files, progress)
    triage = triage_folder(headers, errors, root, min_slices)
    skipped, info = list(triage.skipped), triage.info
    slice_ids = unique_slice_ids(triage.series, root)
    seconds["scan"] = time.perf_counter() - tic

    results: list[SeriesResult] = []
    bar = tqdm(total=len(triage.series), desc="predict", unit="series", disable=not progress, leave=False)
    for group in _batches(triage.series, batch_size):
        inputs = []
        for item in group:
            loaded, bad = load_series(item, root, windows, transforms, slice_ids, crop, slab_mm, neighbours)
            skipped += bad
            entry = info[item.series_id]
            if loaded is None:
                info[item.series_id] = replace(entry, predicted=False, reason="no slice could be decoded (reasons in skipped.csv)")
                continue
            if bad:
                entry.notes.append(f"{len(bad)} slice(s) could not be decoded (skipped.csv)")
            if loaded.sources is not None:
                sizes = sorted({len(g) for g in loaded.sources})
                each = f"{sizes[0]}-{sizes[-1]}" if len(sizes) > 1 else f"{sizes[0]}"
                entry.notes.append(f"averaged into {len(loaded.sources)} slabs of ~{slab_mm:g} mm ({each} slices each)")
            loaded.notes = list(entry.notes)
            inputs.append(loaded)
            seconds["read"] += loaded.seconds["read"]
            seconds["preprocess"] += loaded.seconds["preprocess"]
        if inputs:
            tic = time.perf_counter()
            probs = batch_probabilities(model, inputs)
            seconds["model"] += time.perf_counter() - tic
            results += [SeriesResult(s.series_id, s.study_id, s.patient_id, s.files, s.slice_ids, s.positions, p,
                                     s.thumbnails, s.notes, s.sources, info[s.series_id]) for s, p in zip(inputs, probs)]
            if on_series is not None:
                for s, p in zip(inputs, probs):
                    on_series(s, p)
        bar.update(len(group))
    bar.close()
    return FolderRun(files, results, skipped, list(info.values()), seconds)


def folder_results(model, root: str, transforms, windows: tuple[Window, ...], batch_size: int = 1,
                   exclude: tuple[str, ...] = (), progress: bool = True, crop: str = DEFAULT_CROP,
                   on_series: Callable[[SeriesInput, np.ndarray], None] | None = None,
                   ) -> tuple[list[str], list[SeriesResult], list[Skipped], dict[str, float]]:
    """:func:`predict_folder` as ``(files looked at, results, skipped files, seconds per stage)``."""
    run = predict_folder(model, root, transforms, windows, batch_size, exclude, progress, crop, on_series)
    return run.files, run.results, run.skipped, run.seconds


class Predictor:
    """The model(s), transforms, windows, crop mode and TTA views of one config, loaded once:
    a DICOM node predicts study after study with one model in memory. ``saliency``: Grad-CAM
    maps on the report's large slices (checkpoint models only); ``tta``: test-time views
    (``--tta``) over the config's ``test_time_augmentation``."""

    def __init__(self, cfg: Config, model_path: str | list[str], threads: int = 1, chunk_size: int | None = None,
                 windows: str | None = None, tta: tuple[str, ...] | None = None, saliency: bool = True):
        start = time.perf_counter()
        self.cfg = cfg
        self.models = [model_path] if isinstance(model_path, str) else list(model_path)  # several: their average
        self.windows = resolve_windows(self.models[0], windows)
        self.neighbours = config_neighbours(cfg)
        for path in self.models:
            check_export_transforms(cfg, path, len(self.windows))
            if resolve_windows(path, windows) != self.windows:
                raise ValueError(f"{path}: exported for other windows than {self.models[0]} ({format_windows(self.windows)})")
        self.transforms = build_eval_transforms(eval_transform_config(cfg), f"{cfg.path}: eval transforms")
        self.crop = eval_crop_mode(cfg)
        self.test_time = resolve_tta(cfg, tta)
        self.saliency = saliency
        self.model = load_models(cfg, self.models, threads=threads, chunk_size=chunk_size, tta=self.test_time)
        self.load_seconds = time.perf_counter() - start

    def info(self) -> dict:
        """What predictions.json records about the model side of a run."""
        return {"model": os.path.abspath(self.models[0]) if len(self.models) == 1 else [os.path.abspath(p) for p in self.models],
                "model_kind": self.model.kind, "config": os.path.abspath(self.cfg.path) if self.cfg.path else None,
                "windows": format_windows(self.windows), "crop": self.crop,
                "test_time_augmentation": tta_record(self.test_time)}

    def predict(self, dicom_dir: str, out_dir: str, threshold: float = 0.5, batch_size: int = 1, progress: bool = True,
                slab_mm: float | None = None, min_slices: int = 1, dicom_out: str | None = None) -> PredictSummary:
        """Predict every axial CT series under ``dicom_dir`` into ``out_dir`` (module docstring);
        ``slab_mm``, ``min_slices``: see :func:`predict_folder`. ``dicom_out``: also write each
        series' DICOM results there (:mod:`medseg.predict.dicom_out`); neither output folder is
        read as input."""
        check_predict_args(dicom_dir, threshold, batch_size, slab_mm, min_slices, dicom_out)
        root, out_dir = os.path.abspath(dicom_dir), os.path.abspath(out_dir)
        exclude = (out_dir,) if dicom_out is None else (out_dir, os.path.abspath(dicom_out))
        start = time.perf_counter()
        views = ReportViews(self.model, self.transforms, self.windows, threshold, saliency=self.saliency,
                            neighbours=self.neighbours)
        on_series = views
        if dicom_out is not None:  # highdicom is imported only when DICOM outputs are asked for
            from medseg.predict.dicom_capture import CaptureCollector
            from medseg.predict.dicom_out import write_dicom_outputs

            on_series = CaptureCollector(views)
        run = predict_folder(self.model, root, self.transforms, self.windows, batch_size, exclude, progress, self.crop,
                             on_series, slab_mm, min_slices, self.neighbours)
        files, results, skipped, series_info = run.files, run.results, run.skipped, run.series_info
        seconds = dict(run.seconds)
        seconds["report_views"] = views.seconds

        paths = output_paths(out_dir)
        os.makedirs(out_dir, exist_ok=True)
        write_skipped(paths["skipped"], skipped)
        if not results:
            raise NothingReadableError(f"{dicom_dir}: no readable CT slice of an axial series among {len(files)} file(s) "
                                       f"({len(series_info)} series found, none predicted; reasons in {paths['skipped']})")
        info = {"dicom_dir": root, **self.info(), "slab_mm": slab_mm, "min_slices": min_slices,
                "files": len(files), "skipped": len(skipped)}
        dicom_files: list[str] = []
        dicom: dict[str, dict] = {}
        if dicom_out is not None:
            tic = time.perf_counter()
            written = write_dicom_outputs(dicom_out, root, results, on_series.series, threshold, self)
            info["dicom_out"] = written.folder
            dicom_files, dicom = written.paths(), written.by_series()
            seconds["dicom_out"] = time.perf_counter() - tic
        tic = time.perf_counter()
        write_predictions_csv(paths["csv"], results)
        write_predictions_json(paths["json"], results, threshold, info, series_info, dicom)
        write_report(out_dir, results, skipped, threshold, info, series_info=series_info, views=views.views)
        seconds["outputs"] = time.perf_counter() - tic
        seconds["total"] = time.perf_counter() - start
        summary = PredictSummary(out_dir, len(files), len(results), sum(len(r.slice_ids) for r in results), len(skipped),
                                 sum(bool(r.flagged(threshold).any()) for r in results), seconds,
                                 sum(not s.predicted for s in series_info), dicom_files)
        logger.debug("%s", summary.format())
        return summary


def check_predict_args(dicom_dir: str, threshold: float, batch_size: int, slab_mm: float | None, min_slices: int,
                       dicom_out: str | None = None) -> None:
    """One clear error per bad argument of :meth:`Predictor.predict`."""
    if not os.path.isdir(dicom_dir):
        raise FileNotFoundError(f"{dicom_dir}: DICOM folder not found")
    if dicom_out is not None and os.path.exists(dicom_out) and not os.path.isdir(dicom_out):
        raise NotADirectoryError(f"{dicom_out}: --dicom_out exists and is not a folder")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    if slab_mm is not None and not slab_mm > 0:
        raise ValueError(f"--slab_mm must be positive, got {slab_mm}")
    if min_slices < 1:
        raise ValueError(f"--min_slices must be at least 1, got {min_slices}")


def run_predict(cfg: Config, model_path: str | list[str], dicom_dir: str, out_dir: str, threshold: float = 0.5,
                batch_size: int = 1, chunk_size: int | None = None, threads: int = 1, windows: str | None = None,
                progress: bool = True, saliency: bool = True, slab_mm: float | None = None,
                min_slices: int = 1, tta: tuple[str, ...] | None = None, dicom_out: str | None = None) -> PredictSummary:
    """``Predictor(...).predict(...)`` for one folder (the model load is counted in ``seconds``)."""
    check_predict_args(dicom_dir, threshold, batch_size, slab_mm, min_slices, dicom_out)
    predictor = Predictor(cfg, model_path, threads, chunk_size, windows, tta, saliency)
    summary = predictor.predict(dicom_dir, out_dir, threshold, batch_size, progress, slab_mm, min_slices, dicom_out)
    summary.seconds = {"load_model": predictor.load_seconds, **summary.seconds,
                       "total": predictor.load_seconds + summary.seconds["total"]}
    return summary
