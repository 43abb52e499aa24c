"""The trainer with two real CPU processes (python -m vaedist.launch, gloo): DDP update rule, a whole run, errors,
SLURM; one test through plain `accelerate launch`, which the README says works too."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vaedist.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    """A port no other process listens on now: several test runs on one machine must not share 29500."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


PRODUCT_LAUNCHER = "vaedist.launch"  # what the README's command lines, the sweeps and the GPU check run
PLAIN_ACCELERATE = "accelerate.commands.launch"  # `accelerate launch`


def launch_two_processes(args: list[str], timeout: int = 300, launcher: str = PRODUCT_LAUNCHER) -> subprocess.CompletedProcess:
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    cmd = [sys.executable, "-m", launcher, "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--main_process_port", "0", "--mixed_precision", "no", "--dynamo_backend", "no", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("arch", ["seed", "spatial"])
def test_two_processes_hold_identical_parameters_and_match_the_one_process_update(arch, tmp_path):
    """See tests/ddp_worker.py: per-step rank identity + equality with the autograd.grad reference, for each
    architecture (the spatial one with per-image mean losses)."""
    ok = tmp_path / "ok"
    proc = launch_two_processes(["tests/ddp_worker.py", str(ok), str(tmp_path / "run"), arch])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert ok.read_text().strip() == "OK 3"


def test_two_process_run_writes_the_run_dir_and_its_evaluation_matches_one_process(food_shards, tmp_path):
    run = tmp_path / "run"
    proc = launch_two_processes(["launch/train.py", "--config", "configs/demo.yaml", f"data.shards={food_shards}",
                                 f"run.dir={run}", "train.epochs=2", "train.log_every=1", "train.eval_every=1",
                                 "train.batch_size=16", "logging.wandb=false"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # 60 training images, 8 per process and batch, drop-last: 3 steps per epoch
    assert (run / "config.yaml").is_file() and (run / "final" / "model.safetensors").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000003", "step-00000006"]
    rows = RunDir(run).read_metrics()
    train_rows = [r for r in rows if "train/loss_encoder" in r]
    val_rows = [r for r in rows if "val/psnr" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4, 5, 6]
    for key in ("epoch", "train/loss_decoder", "train/kl", "train/mse", "train/lr_encoder", "train/lr_decoder",
                "train/images_per_s", "train/data_wait"):
        assert key in train_rows[0], key
    assert train_rows[-1]["train/lr_encoder"] == pytest.approx(1e-3 * 0.9)  # ExponentialLR stepped once per epoch
    assert len(val_rows) == 2 and val_rows[-1]["val/images"] == 24  # the whole val split (4 x 6 classes), once
    assert any(p.name.startswith("reconstructions_e") for p in (run / "images").iterdir())

    # The same weights evaluated by ONE process (standalone CLI) give the same numbers as the two ranks did
    out = tmp_path / "eval.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}  # like the ranks, on a GPU host too
    single = subprocess.run([sys.executable, "-m", "vaedist.evaluate", str(run), "--shards", str(food_shards),
                             "--batch-size", "5", "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    one_process = json.loads(out.read_text())
    for key in ("val/mse", "val/psnr", "val/ssim", "val/pcc", "val/kl", "val/images"):
        assert one_process[key] == pytest.approx(val_rows[-1][key], rel=1e-4), key


def test_a_config_mistake_under_two_processes_is_one_line_once(tmp_path):
    """Every rank reads the same bad config: rank 0 alone prints the line (the launcher adds its own report).
    Through plain `accelerate launch` on purpose: the one test that it still works (README, Train, and its
    Troubleshooting entry on ChildFailedError); python -m vaedist.launch's exit code 2 is tests/test_reliability.py's."""
    proc = launch_two_processes(["launch/train.py", "--config", "configs/demo.yaml", "model.latent_dim=many",
                                 f"run.dir={tmp_path / 'run'}"], timeout=120, launcher=PLAIN_ACCELERATE)
    assert proc.returncode != 0
    ours = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("train: error: ")]
    assert ours == ["train: error: config key 'model.latent_dim' must be an integer, got 'many'"], proc.stderr[-3000:]


FAKE_SRUN = """#!/bin/bash
# srun's part here: run the task in its own process group and forward SIGTERM to it, as slurmstepd does.
while [[ "$1" == --* ]]; do shift; done
setsid "$@" &
task=$!
trap 'kill -TERM -- -$task 2>/dev/null' TERM
wait $task; status=$?
while kill -0 $task 2>/dev/null; do wait $task; status=$?; done
exit $status
"""
FAKE_SCONTROL = """#!/bin/bash
case "$1" in
  show) echo 127.0.0.1 ;;                       # scontrol show hostnames NODELIST: the first node
  requeue) echo "requeue $2" >> "$SCONTROL_LOG" ;;
esac
"""


def test_slurm_script_checkpoints_on_the_time_limit_signal_requeues_and_resumes(food_shards, tmp_path):
    """launch/slurm.sbatch with the real launcher and two CPU processes; only SLURM's srun and scontrol are
    stand-ins. SLURM's `--signal=B:TERM@180` is a SIGTERM to the batch script alone."""
    if not (Path(sys.prefix) / ".vaedist-installed").is_file():
        pytest.skip("the script sources launch/env.sh: run the tests from the environment it made (launch/test.sh)")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (fake_bin / name).write_text(text)
        (fake_bin / name).chmod(0o755)
    run, log = tmp_path / "run", tmp_path / "scontrol.log"
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}", "VAEDIST_VENV": sys.prefix, "SCONTROL_LOG": str(log),
           "SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "node[1]", "SLURM_NNODES": "1", "SLURM_NODEID": "0",
           "SLURM_SUBMIT_DIR": str(REPO), "GPUS_PER_NODE": "2", "MAIN_PORT": str(_free_port()), "ACCELERATE_USE_CPU": "true",
           "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    args = ["--config", "configs/demo.yaml", f"data.shards={food_shards}", f"run.dir={run}", "train.batch_size=16",
            "logging.wandb=false"]
    job = subprocess.Popen(["bash", "launch/slurm.sbatch", *args, "train.epochs=200"], cwd=REPO, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while RunDir(run).latest_checkpoint() is None:
        assert job.poll() is None and time.monotonic() < deadline, job.stdout.read()[-3000:]
        time.sleep(0.2)
    job.send_signal(signal.SIGTERM)  # the time limit is near
    out = job.communicate(timeout=120)[0]
    assert job.returncode == 0, out[-3000:]
    assert log.read_text() == "requeue 42\n" and "stopped by SIGTERM at step" in out, out[-3000:]
    stopped_at = int(out.split("stopped by SIGTERM at step ")[1].split(":")[0])
    assert RunDir(run).latest_checkpoint().name == f"step-{stopped_at:08d}"

    # The requeued job: the same command resumes from that checkpoint (here capped a few steps later)
    again = subprocess.run(["bash", "launch/slurm.sbatch", *args, "train.epochs=200", f"train.max_steps={stopped_at + 3}"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resuming from {run / 'checkpoints' / f'step-{stopped_at:08d}'}" in again.stdout + again.stderr
    assert log.read_text() == "requeue 42\n"  # finished normally: not queued again
