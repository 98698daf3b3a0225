"""The benches at toy size, end to end: each ``bench/*_bench.py`` runs as a subprocess and its printed
lines parse (the provenance line first, every ratio present and finite, the targets reported);
every shell bench and the semi summary print the provenance line first; the prepare bench's
"original" arm reproduces the released preprocess on a real series (fixture ``easymia_parity``:
../shared beside the checkout, or ``MEDSEG_SHARED_DIR``; missing, the test fails, never skips)."""

import datetime
import glob
import importlib.metadata
import math
import os
import platform
import re
import shutil
import subprocess
import sys

import numpy as np
import pydicom
import pytest

from bench.provenance import LINE
from bench.released_preprocess import dicom_metadata, preprocess_series, series_windows, sort_slices, window_uint8

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("MEDSEG_SHARED_DIR") or os.path.join(os.path.dirname(ROOT), "shared")
NUMBER = r"([-+0-9.eE]+|nan|inf)"


def shared(*parts: str) -> str:
    path = os.path.join(SHARED, *parts)
    if not os.path.exists(path):
        pytest.fail(f"{path} is missing: put ../shared beside the checkout or set MEDSEG_SHARED_DIR")
    return path


def bench_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("BENCH_NO_FAIL", "BENCH_TOY")}
    return dict(env, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", PYTHON=sys.executable, **extra)


def run(cmd: list[str], timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=bench_env(**env), capture_output=True, text=True, timeout=timeout)


def check_provenance(line: str) -> None:
    """The line parses and says this machine and interpreter."""
    match = LINE.fullmatch(line)
    assert match, line
    commit, utc, cpu, cores, load, python, paddle = match.groups()
    assert re.fullmatch(r"[0-9a-f]{4,40}(\+dirty)?|unknown", commit), commit
    stamp = datetime.datetime.strptime(utc, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    assert abs((datetime.datetime.now(datetime.timezone.utc) - stamp).total_seconds()) < 3600
    assert cpu and int(cores) == os.cpu_count()
    assert load == "unknown" or math.isfinite(float(load))
    assert python == platform.python_version()
    assert paddle == importlib.metadata.version("paddlepaddle")


def value(pattern: str, text: str) -> list[float]:
    """The numbers a pattern's groups catch, each finite."""
    match = re.search(pattern, text, re.M)
    assert match, f"no line matching {pattern!r} in:\n{text}"
    numbers = [float(g) for g in match.groups()]
    assert all(math.isfinite(x) for x in numbers), match.group(0)
    return numbers


def check_targets(proc: subprocess.CompletedProcess, count: int) -> None:
    """--no_fail: exit 0 whatever the toy numbers, every target still reported."""
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert len(re.findall(r"^target: .* (PASS|MISS)$", proc.stdout, re.M)) == count, proc.stdout
    assert re.search(r"^(all targets met|\d target\(s\) missed \(exit 0: --no_fail / BENCH_NO_FAIL\))$", proc.stdout, re.M)


def test_provenance_line_in_and_outside_a_checkout(tmp_path):
    proc = run([sys.executable, "-m", "bench.provenance"])
    assert proc.returncode == 0, proc.stderr
    check_provenance(proc.stdout.strip())
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # a checkout: the short sha, +dirty or not
        assert LINE.fullmatch(proc.stdout.strip()).group(1).split("+")[0] == head.stdout.strip()
    (tmp_path / "bench").mkdir()
    shutil.copy(os.path.join(ROOT, "bench", "provenance.py"), tmp_path / "bench")
    outside = run([sys.executable, str(tmp_path / "bench" / "provenance.py")])
    assert outside.returncode == 0, outside.stderr
    check_provenance(outside.stdout.strip())
    assert LINE.fullmatch(outside.stdout.strip()).group(1) == "unknown"


@pytest.mark.parametrize("script,env,reason", [
    ("ablation.sh", {"ABL_SEEDS": "1", "RAW": "{tmp}/missing", "ABL_OUT": "{tmp}/out"}, "not a directory"),
    ("semi.sh", {"SEMI_SEEDS": "1", "RAW": "{tmp}/missing", "SEMI_OUT": "{tmp}/out"}, "not a directory"),
    ("external.sh", {"HOLDOUT": "nowhere", "EXT_SEED": "1", "OUT": "{tmp}/out"}, "unknown site(s) ['nowhere']"),
])
def test_shell_benches_print_provenance_first(tmp_path, script, env, reason):
    """Each stops early here (a missing RAW folder, an unknown site), after its first line."""
    proc = run(["bash", os.path.join(ROOT, "bench", script)], timeout=120,
               **{k: v.format(tmp=tmp_path) for k, v in env.items()})
    assert proc.returncode != 0 and reason in proc.stderr, proc.stdout + proc.stderr
    check_provenance(proc.stdout.splitlines()[0])


def test_semi_summary_prints_provenance_first(tmp_path):
    proc = run([sys.executable, "-m", "bench.semi_summary", "--out", str(tmp_path), "--seeds", "1"])
    assert proc.returncode == 2 and proc.stderr.startswith("error: "), proc.stderr  # no seed folder
    check_provenance(proc.stdout.splitlines()[0])


def test_released_windows_scale_uint16_volumes_in_float64():
    """SimpleITK hands some RSNA series over as uint16: scaled as float64 (numpy 2 refuses uint16 - (-20))."""
    volume = np.array([[[0, 20, 40, 1000, 65535]]], np.uint16)
    expected = (np.clip((volume.astype(np.float64) + 20) / 200, 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(window_uint8(volume, -20, 180), expected)
    assert series_windows(volume).shape == (1, 1, 5, 3)
    floats = np.array([[[np.nan, 40.0]]], np.float32)  # NaN -> -2000 HU, below every window
    np.testing.assert_array_equal(window_uint8(floats, 0, 80), [[[0, 127]]])


def test_prepare_bench_original_arm_reproduces_the_release(tmp_path):
    """The real GE head series in Kaggle's layout (``<SOPInstanceUID>.dcm``, a copy in tmp_path), through
    the arm's header reads, sort, SimpleITK read, windows, crop and npz: the release's array."""
    expected = np.load(shared("fixtures", "easymia_parity", "ge_head_expected.npz"))
    dicom = tmp_path / "stage_2_test"
    dicom.mkdir()
    names = {}
    for path in sorted(glob.glob(os.path.join(shared("real_ct", "ge_head_tilted"), "*.dcm"))):
        sop = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        names[sop] = os.path.basename(path)
        shutil.copy(path, dicom / f"{sop}.dcm")
    table = sort_slices(dicom_metadata(str(dicom / f"{sop}.dcm")) for sop in names)
    assert table.series_id.nunique() == 1
    assert [names[s] for s in table.slice_id] == expected["files"].tolist()  # the released slice order
    path = preprocess_series(table.series_id.iloc[0], table.slice_id.tolist(), str(dicom), str(tmp_path))
    windows = np.load(path)["arr_0"]
    assert windows.dtype == np.uint8
    assert list(windows.shape) == expected["windows_shape"].tolist() == [28, 448, 406, 3]
    assert int(windows.sum(dtype=np.int64)) == int(expected["windows_uint8_sum"]) == 993_481_938
    np.testing.assert_array_equal(windows.sum(axis=(1, 2), dtype=np.int64), expected["windows_uint8_sum_per_slice_channel"])


@pytest.mark.slow  # ~35-50 s on two loaded cores: five cold interpreters (the methods and the RSS probe)
def test_prepare_bench_toy(tmp_path):
    proc = run([sys.executable, "bench/prepare_bench.py", "--toy", "--no_fail", "--work", str(tmp_path)])
    out = proc.stdout
    check_targets(proc, 3)
    check_provenance(out.splitlines()[0])
    assert "toy size" in out
    labels = {"ours": "ours (medseg.data.prepare, whole run)", "fsync": "ours with --fsync",
              "original": "original (the released preprocess)", "floor": "floor (dcmread + pixel_array + modality LUT)"}
    # wall s, slices/s, CPU s, slices/CPU s
    rows = {key: value(rf"^{re.escape(label)}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}", out) for key, label in labels.items()}
    for other in ("original", "floor"):
        wall, cpu = value(rf"^ours / {other}\s+wall {NUMBER}x, CPU {NUMBER}x \(target: wall >= [0-9.]+\)$", out)
        assert wall == pytest.approx(rows[other][0] / rows["ours"][0], rel=0.02, abs=0.01)
        assert cpu == pytest.approx(rows[other][2] / rows["ours"][2], rel=0.02, abs=0.01)
    value(rf"^ours --fsync / floor wall {NUMBER}x, CPU {NUMBER}x", out)
    rss, base = value(rf"^peak RSS of one worker process, 8-slice 64\^2 series: {NUMBER} MiB \(imports and header scan alone: {NUMBER} MiB", out)
    assert 0 < base <= rss


@pytest.mark.slow
def test_loader_bench_toy(tmp_path):
    """BENCH_TOY=1 (the env knob): three loader arms, the whole ratio split into cache x augmentation."""
    proc = run([sys.executable, "bench/loader_bench.py", "--no_fail", "--work", str(tmp_path)], BENCH_TOY="1")
    out = proc.stdout
    check_targets(proc, 3)
    check_provenance(out.splitlines()[0])
    assert "toy size" in out
    # the middle arm ran the released augmentation's semantics, the first our own
    assert re.search(r"^augmentation \(a_released\): RandomResizedCrop\(.*sampler='released', interpolation='cubic'\), "
                     r"HorizontalFlip\(prob=0.5\), VerticalFlip\(prob=0.5\), RandomRotation\(degrees=180.0, centre='released'\)",
                     out, re.M), out
    assert re.search(r"^augmentation \(a\): RandomResizedCrop\(.*sampler='zoom', interpolation='linear'\), .*"
                     r"RandomRotation\(degrees=180.0, centre='exact'\)", out, re.M), out
    ours, = value(rf"^  \(a\) ours \(our augmentation\)\s+{NUMBER}$", out)
    released_aug, = value(rf"^  \(a_released\) ours, released augmentation\s+{NUMBER}$", out)
    published, = value(rf"^  published \(released loader\)\s+{NUMBER}$", out)
    value(rf"^  \(a_released\) unfused \(fuse: false\)\s+{NUMBER}  \(for information: the release's two interpolations\)$", out)
    whole, cache, aug = value(rf"^speed-up published -> ours: whole {NUMBER}x = cache and loader {NUMBER}x "
                              rf"\(published / a_released, equal augmentation semantics\) x augmentation {NUMBER}x \(a_released / a\)$", out)
    # the table's rates are rounded to whole slices/s
    assert whole == pytest.approx(ours / published, rel=0.01, abs=0.01)
    assert cache == pytest.approx(released_aug / published, rel=0.01, abs=0.01)
    assert aug == pytest.approx(ours / released_aug, rel=0.01, abs=0.01)
    assert cache * aug == pytest.approx(whole, rel=0.03)  # each printed to 2 decimals
    # the speed-up target keeps its meaning: checked on the whole ratio, and says so
    assert re.search(r"^target: loader speed-up \(a\) / published [0-9.]+x >= 4.0 \(on the whole ratio: "
                     r"cache and loader x augmentation\) (PASS|MISS)$", out, re.M), out
    value(rf"^cache KiB per slice\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x", out)
    value(rf"^CPU part with augment_on_device, slices/s\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x", out)


@pytest.mark.slow  # ~30 s on two loaded cores: a model export and two inference processes
def test_predict_bench_toy():
    proc = run([sys.executable, "bench/predict_bench.py", "--toy", "--no_fail"])
    out = proc.stdout
    check_targets(proc, 4)
    check_provenance(out.splitlines()[0])
    assert "toy size" in out
    for backend in ("dygraph", "exported"):
        load, read, model, total, peak = value(rf"^{backend}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}$", out)
        assert 0 < model <= total and peak > 0
    speedup, diff = value(rf"^model-part speed-up \(exported vs dygraph\): {NUMBER}x; max \|Δp\| between backends {NUMBER}$", out)
    assert speedup > 0 and diff < 1e-4


def test_every_python_bench_has_a_smoke_test():
    """A new bench/*_bench.py gets its toy run here, or in the test file of what it measures
    (bench/node_bench.py needs Orthanc: tests/test_node_orthanc.py)."""
    benches = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "bench", "*_bench.py")))
    source = open(__file__, encoding="utf-8").read()
    elsewhere = {"node_bench.py": os.path.join(ROOT, "tests", "test_node_orthanc.py")}

    def smoked(name: str) -> bool:
        if name in elsewhere:
            return f'"{name}"' in open(elsewhere[name], encoding="utf-8").read()
        return f'"bench/{name}"' in source

    missing = [name for name in benches if not smoked(name)]
    assert benches and not missing, missing
