"""script/brain_ih_clas.sh and script/slurm_train.sbatch hand the launcher its multi-node
arguments (checked with a stand-in python/srun/scontrol that record their command lines)."""

import os
import shlex
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RECORDER = """#!/usr/bin/env bash
printf '%s\\n' "$*" >> "$RECORD"
"""


def fake_bin(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in {
        "python": RECORDER,
        "scontrol": "#!/usr/bin/env bash\nprintf 'gpu-a\\ngpu-b\\n'\n",
        # run the srun'd command once, as node 1 of 2 would
        "srun": "#!/usr/bin/env bash\nwhile [[ $1 == --* ]]; do shift; done\nSLURM_NODEID=1 exec \"$@\"\n",
    }.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def run(tmp_path, cmd, **env):
    bin_dir = fake_bin(tmp_path) if not (tmp_path / "bin").exists() else tmp_path / "bin"
    record = tmp_path / "record.txt"
    record.unlink(missing_ok=True)
    full = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", RECORD=str(record), PYTHON=str(bin_dir / "python"), **env)
    full.pop("CUDA_VISIBLE_DEVICES", None)
    done = subprocess.run(cmd, env=full, capture_output=True, text=True, timeout=60, cwd=ROOT)
    return done, record.read_text().splitlines() if record.exists() else []


def test_two_node_launch_arguments_reach_the_launcher(tmp_path):
    save = tmp_path / "run"
    (save / "iter_10").mkdir(parents=True)
    done, calls = run(tmp_path, ["bash", "script/brain_ih_clas.sh", "config/x.yml", str(save), "--scale_lr", "linear"],
                      NNODES="2", MASTER="10.0.0.1:8090", NPROC="8", NODE_RANK="1", LAUNCH_ARGS="--job_id ich1",
                      LOG_DIR=str(tmp_path / "log"))
    assert done.returncode == 0, done.stderr
    train, infer = (shlex.split(c) for c in calls)
    for args in (train, infer):
        text = " ".join(args)
        assert "--nproc_per_node 8 --nnodes 2 --master 10.0.0.1:8090 --rank 1 --job_id ich1" in text
    assert train[-2:] == ["--scale_lr", "linear"] and "train.py" in train
    assert "infer.py" in infer and f"{save}/iter_10" in infer


def test_more_than_one_node_needs_a_master(tmp_path):
    done, calls = run(tmp_path, ["bash", "script/brain_ih_clas.sh", "config/x.yml", str(tmp_path / "r")], NNODES="2")
    assert done.returncode == 2 and "MASTER" in done.stderr and not calls


def test_slurm_batch_runs_one_launcher_per_node_with_slurms_master(tmp_path):
    done, calls = run(tmp_path, ["bash", "script/slurm_train.sbatch", "config/x.yml", str(tmp_path / "run"), "--iters", "5"],
                      SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="gpu-[a-b]", SLURM_NNODES="2", SLURM_GPUS_ON_NODE="4",
                      SLURM_SUBMIT_DIR=ROOT)
    assert done.returncode == 0, done.stderr
    (call,) = calls
    assert ("-m paddle.distributed.launch --nnodes 2 --rank 1 --master gpu-a:24242 --nproc_per_node 4 "
            "--job_id ich-4242") in call
    assert call.endswith(f"--save_dir {tmp_path}/run --do_eval --use_vdl --iters 5")
