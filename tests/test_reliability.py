"""The trainer under a demanding cluster's attacks, with real processes, real signals, real shards: a JPEG
damaged after sharding, SIGTERM / SIGKILL to the launcher, two trainings on one run.dir, a frozen rank, a full
disk, a run.dir that cannot hold a run."""
from __future__ import annotations

import fcntl
import itertools
import json
import os
import select
import shlex
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
# 60 training images, batch 16, drop-last: 3 steps per epoch, 12 steps in all; a checkpoint every 2 steps
RUN = ["--config", "configs/demo.yaml", "train.epochs=4", "train.batch_size=16", "train.log_every=1",
       "train.checkpoint_every=2", "train.keep_checkpoints=2", "train.eval_every=0", "logging.wandb=false"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true", "ACCELERATE_USE_CPU": "true"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def readme_command(comment: str) -> tuple[dict[str, str], list[str]]:
    """The command the README's Train block gives under `# <comment>...`: (environment, argv)."""
    block = (REPO / "README.md").read_text().split("## Train\n\n```bash\n", 1)[1].split("```", 1)[0]
    lines = block.split(f"# {comment}", 1)[1].split("\n", 1)[1].replace("\\\n", " ").split("\n", 1)[0]
    words = shlex.split(lines, comments=True)
    env = dict(word.split("=", 1) for word in itertools.takewhile(lambda w: "=" in w and not w.startswith("-"), words))
    return env, words[len(env):]


# The README's launcher command lines, up to the script (the script's own arguments are the tests')
LAUNCHERS = {"one": "one GPU (or the CPU", "two": "CPU only, two processes"}


def train_command(shards: Path, run_dir: Path, *extra: str, launcher: str | None = None) -> list[str]:
    """`python launch/train.py ...`, or the same under the README's launcher command (launcher "one": its one-GPU
    command, "two": its two-process CPU command), the launcher's part word for word."""
    args = ["launch/train.py", *RUN, f"data.shards={shards}", f"run.dir={run_dir}", *extra]
    if launcher is None:
        return [sys.executable, *args]
    env, words = readme_command(LAUNCHERS[launcher])
    assert words[0] == "python" and "launch/train.py" in words and set(env.items()) <= set(ENV.items()), words
    return [sys.executable, *words[1:words.index("launch/train.py")], *args]


def start(cmd: list[str], env: dict | None = None) -> subprocess.Popen:
    """In a process group of its own, as a shell runs a command: a terminal's Ctrl-C goes to the whole group."""
    return subprocess.Popen(cmd, cwd=REPO, env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def wait_for(condition, proc: subprocess.Popen | None = None, timeout: float = 180, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"ended before {what}:\n" + (proc.stdout.read()[-3000:] if proc.stdout else ""))
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def checkpoints(run_dir: Path) -> list[str]:
    root = run_dir / "checkpoints"
    return sorted(p.name for p in root.iterdir() if p.name.startswith("step-")) if root.is_dir() else []


def lock_holder(run_dir: Path) -> int | None:
    try:
        return json.loads((run_dir / "run.lock").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def wandb_summary(offline_run: Path) -> dict:
    """The run's summary as W&B's own reader (`wandb leet inspect --json`) replays it from the .wandb log."""
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(offline_run)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    summary: dict = {}
    for record in map(json.loads, filter(str.strip, out.splitlines())):
        if record["type"] == "summary":
            summary.update(record["summary"].get("update", {}))
    return summary


def assert_same_weights(run: Path, reference: Path) -> None:
    got, want = load_file(run / "final" / "model.safetensors"), load_file(reference / "final" / "model.safetensors")
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.fixture(scope="module")
def straight_run(food_shards, tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must end equal to."""
    run = tmp_path_factory.mktemp("straight") / "run"
    proc = subprocess.run(train_command(food_shards, run), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run


# --- 1. a JPEG damaged after sharding --------------------------------------------------------------------


def test_a_damaged_jpeg_never_ends_the_run_is_recorded_and_skipped_after_resume(damaged_food_shards, tmp_path):
    shards, damaged = damaged_food_shards
    straight = tmp_path / "straight"
    # the run never stopped goes on beside the interrupted one (independent run dirs; two cores): its output to files
    with open(tmp_path / "straight.out", "w") as out_file, open(tmp_path / "straight.err", "w") as err_file:
        reference = subprocess.Popen(train_command(shards, straight, "logging.wandb=true", "train.eval_every=2"),
                                     cwd=REPO, env=ENV, stdout=out_file, stderr=err_file, text=True)
    try:
        # Interrupted (before or after the samples were found), resumed: the records are read back, the run ends equal.
        run = tmp_path / "interrupted"
        proc = start(train_command(shards, run, "train.eval_every=2"))
        wait_for(lambda: "step-00000004" in checkpoints(run), proc, what="a checkpoint after the bad sample")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM
        proc.stdout.close()
        resumed = subprocess.run(train_command(shards, run, "train.eval_every=2"), cwd=REPO, env=ENV,
                                 capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        code = reference.wait(timeout=600)
    finally:
        if reference.poll() is None:
            reference.kill()
            reference.wait()
    out = (tmp_path / "straight.out").read_text() + (tmp_path / "straight.err").read_text()
    assert code == 0 and "Traceback" not in out, out[-3000:]
    records = [json.loads(line) for line in (straight / "bad_samples.jsonl").read_text().splitlines()]
    assert sorted((r["split"], r["shard"], r["key"], r["member"]) for r in records) == sorted(
        (split, tar, key, "jpg") for split, tar, key in damaged)  # each once, though seen every epoch
    assert all(r["reason"].startswith("fails to decode (") for r in records)
    for split, tar, key in damaged:
        assert sum(f"'{key}'" in line and "skipping a bad sample" in line for line in out.splitlines()) == 1
    assert "2 bad samples skipped" in out and "bad_samples.jsonl" in out  # named in the final summary
    rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in rows if "train/loss_encoder" in r][-1]["train/bad_samples"] == 1  # W&B's count metrics too
    assert [r for r in rows if "val/psnr" in r][-1]["val/bad_samples"] == 1
    (offline,) = (straight / "wandb").glob("offline-run-*")
    assert {r["key"] for r in wandb_summary(offline)["bad_samples"]} == {key for _, _, key in damaged}

    lines = (run / "bad_samples.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines)) == 2
    assert_same_weights(run, straight)


def test_a_damaged_jpeg_under_the_stop_policy_is_one_line_on_two_processes(damaged_food_shards, tmp_path):
    shards, damaged = damaged_food_shards
    proc = subprocess.run(train_command(shards, tmp_path / "run", "data.bad_samples=stop", launcher="two"), cwd=REPO,
                          env=ENV, capture_output=True, text=True, timeout=600)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("train: error:")]
    assert proc.returncode == 1 and len(errors) == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    (_, tar, key), = [d for d in damaged if d[0] == "train"]
    assert tar in errors[0] and f"'{key}'" in errors[0] and "data.bad_samples=stop" in errors[0]


# --- 2. a signal to the launcher ------------------------------------------------------------------------


def trainers(launcher: subprocess.Popen) -> list[int]:
    return [pid for pid in children(launcher.pid) if "launch/train.py" in Path(f"/proc/{pid}/cmdline").read_text()]


def latest_step(run_dir: Path) -> int:
    return int(checkpoints(run_dir)[-1].split("-")[1]) if checkpoints(run_dir) else 0


# (how, signal): SIGTERM to the launcher (SLURM's pre-emption; with two processes SLURM's path is
# tests/test_train_distributed.py's), twice, 0.3 s apart, as the kernel repeats its parent-death notice (below),
# a terminal's Ctrl-C (SIGINT to the whole process group: with one process
# the training used to get it twice and abort), the launcher's terminal closed (hangup: SIGHUP to it, and every
# write to the terminal fails from then on; the training processes used to die of the signal), SIGKILL to the
# launcher (no time to pass anything on: the kernel tells the training, vaedist.parent, more than once with two
# processes: the second SIGTERM used to kill them in the middle of their checkpoint)
STOPS = {"one": [("twice", signal.SIGTERM), ("group", signal.SIGINT), ("kill", signal.SIGKILL)],
         "two": [("hangup", signal.SIGHUP), ("group", signal.SIGINT), ("kill", signal.SIGKILL)]}


class Terminal:
    """A pseudo-terminal that a command runs on as its controlling terminal, as in an ssh session: its output
    is collected; `hang_up` closes the terminal (the kernel sends SIGHUP to the command)."""

    def __init__(self):
        self._master, self._slave = os.openpty()
        self._chunks: list[bytes] = []
        self._closing = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)

    def start(self, cmd: list[str]) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdin=self._slave, stdout=self._slave, stderr=self._slave,
                                start_new_session=True, preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        os.close(self._slave)
        self._reader.start()
        return proc

    def _read(self) -> None:
        while not self._closing.is_set():
            if select.select([self._master], [], [], 0.05)[0]:
                try:
                    self._chunks.append(os.read(self._master, 65536))
                except OSError:  # every process on it has closed it
                    break
        os.close(self._master)

    def hang_up(self) -> None:
        self._closing.set()
        self._reader.join(timeout=10)

    def text(self) -> str:
        return b"".join(self._chunks).decode(errors="replace")


def unsaved(step: int) -> bool:
    """No checkpoint follows this step's log row (RUN: one every 2 steps, and at each epoch's end: 3 steps)."""
    return step % 2 == 1 and step % 3 != 0


def last_logged_step(run_dir: Path) -> int:
    """The step of metrics.jsonl's last whole row (0 before any)."""
    path = run_dir / "metrics.jsonl"
    for line in reversed(path.read_text().splitlines() if path.is_file() else []):
        try:
            return json.loads(line)["step"]
        except ValueError:  # a row being written
            continue
    return 0


@pytest.fixture(scope="module")
def straight_two(food_shards, tmp_path_factory) -> Path:
    """The uninterrupted two-process run (its BatchNorm statistics are per rank: not the one-process weights)."""
    run = tmp_path_factory.mktemp("straight_two") / "run"
    proc = subprocess.run(train_command(food_shards, run, launcher="two"), cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run


@pytest.mark.parametrize("launcher", ["one", "two"])
def test_each_signal_to_the_readme_launcher_stops_every_training_process_with_a_checkpoint_and_128_plus_signal_and_the_same_command_resumes_exactly(
        launcher, food_shards, tmp_path, request):
    """The README's launcher command line, stopped again and again, resumed each time by the same command, ends
    with the weights of the run never stopped. `accelerate launch` used to exit 1 with a SignalException
    traceback (two processes) or leave the training running as an orphan (one process)."""
    run = tmp_path / "run"
    for number, (how, sig) in enumerate(STOPS[launcher]):
        terminal = Terminal() if how == "hangup" else None
        command = train_command(food_shards, run, launcher=launcher)
        proc = terminal.start(command) if terminal else start(command)
        after = latest_step(run)
        wait_for(lambda: latest_step(run) > after, proc, what=f"a checkpoint after step {after}")
        workers = trainers(proc)
        assert len(workers) == (2 if launcher == "two" else 1) and lock_holder(run) in workers, workers
        if terminal:  # once a step that no checkpoint follows is logged: a process that dies of it leaves none there
            wait_for(lambda: unsaved(last_logged_step(run)) and last_logged_step(run) > latest_step(run), proc,
                     what="a step logged after the checkpoint")
            terminal.hang_up()
        else:
            (os.killpg if how == "group" else os.kill)(proc.pid, sig)
        if how == "twice":
            time.sleep(0.3)
            os.kill(proc.pid, sig)
        code = proc.wait(timeout=120)
        wait_for(lambda: not any(map(alive, workers)), timeout=120, what="the training processes to stop")
        out = terminal.text() if terminal else proc.stdout.read()  # the training processes' lines too, to their end
        if not terminal:
            proc.stdout.close()
        name = "SIGTERM" if sig == signal.SIGKILL else sig.name  # the kernel's SIGTERM when the launcher died
        assert code == (-sig if sig == signal.SIGKILL else 128 + sig), (how, sig, code, out[-3000:])
        if number:
            assert f"resuming from {run / 'checkpoints' / f'step-{after:08d}'}" in out, out[-3000:]
        if terminal:  # what they wrote after the hang-up went nowhere: the run dir tells where they stopped
            stopped_at = last_logged_step(run)
            assert checkpoints(run)[-1] == f"step-{stopped_at:08d}" and stopped_at > after, (stopped_at, checkpoints(run))
            continue
        assert "Traceback" not in out and "stopped by " + name in out, out[-3000:]
        for rank in range(len(workers)):  # each process got the signal once (a second one would abort it)
            assert out.count(f"[rank {rank}] {name}: saving a checkpoint, then exiting") == 1, out[-3000:]
        stopped_at = int(out.split(f"stopped by {name} at step ")[1].split(":")[0])
        assert checkpoints(run)[-1] == f"step-{stopped_at:08d}" and stopped_at > after
    resumed = subprocess.run(train_command(food_shards, run, launcher=launcher), cwd=REPO, env=ENV, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0 and "resuming from" in resumed.stdout, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert_same_weights(run, request.getfixturevalue("straight_run" if launcher == "one" else "straight_two"))


@pytest.mark.parametrize("launcher", ["one", "two"])
def test_the_readme_launcher_exits_with_the_trainings_code_after_one_line_without_a_traceback(launcher, tmp_path):
    """A config mistake: exit code 2 and its one line. `accelerate launch` added a CalledProcessError (one process)
    or ChildFailedError (two) traceback and exited 1."""
    proc = subprocess.run(train_command(tmp_path / "no-shards", tmp_path / "run", "model.latent_dim=many",
                                        launcher=launcher), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out and "FailedError" not in out, out[-3000:]
    assert [line for line in out.splitlines() if "error:" in line] == [
        "train: error: config key 'model.latent_dim' must be an integer, got 'many'"], out[-3000:]


def test_the_launcher_passes_on_the_signals_the_training_stops_on():
    from vaedist.launch import FORWARDED
    from vaedist.train.signals import StopRequest

    assert FORWARDED == StopRequest.SIGNALS


# --- 3. two trainings, one run.dir -------------------------------------------------------------------------


def _snapshot(run_dir: Path) -> dict[str, tuple[int, int]]:
    """The files the first training does not keep writing (its checkpoints, metrics rows and W&B logs)."""
    return {str(p.relative_to(run_dir)): (p.stat().st_mtime_ns, p.stat().st_size) for p in run_dir.rglob("*")
            if p.is_file() and not {"checkpoints", "wandb"} & set(p.parts) and p.name != "metrics.jsonl"}


def test_a_second_training_on_a_busy_run_dir_is_refused_naming_the_holder_before_it_writes(food_shards, tmp_path):
    run = tmp_path / "run"
    first = start(train_command(food_shards, run, "train.epochs=200", "logging.wandb=true"))  # SIGTERM ends it
    try:
        wait_for(lambda: checkpoints(run), first, what="the first training's first checkpoint")
        holder = json.loads((run / "run.lock").read_text())
        before = _snapshot(run)
        runs_before = sorted((run / "wandb").glob("offline-run-*"))
        # python launch/train.py and the README's two-process launcher, side by side (each is refused on its own)
        seconds = {second: subprocess.Popen(train_command(food_shards, run, "train.epochs=200", "logging.wandb=true",
                                                          launcher=second), cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True)
                   for second in (None, "two")}
        for second, proc in seconds.items():
            stdout, stderr = proc.communicate(timeout=300)
            errors = [line for line in stderr.splitlines() if line.startswith("train: error:")]
            assert proc.returncode == 1 and len(errors) == 1, (second, stdout[-2000:] + stderr[-3000:])
            assert "Traceback" not in stdout + stderr, stderr[-3000:]
            assert f"run.dir '{run}' is in use by another training (host {holder['host']}, pid {first.pid}, started " \
                   f"{holder['started']})" in errors[0]
            assert _snapshot(run) == before  # no config.yaml rewrite, no metrics truncation, no W&B run
            assert sorted((run / "wandb").glob("offline-run-*")) == runs_before
    finally:  # a failed check must not leave the first training running its 200 epochs
        first.send_signal(signal.SIGTERM)
        code = first.wait(timeout=120)
        first.stdout.close()
    assert code == 128 + signal.SIGTERM
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # every row once


# --- 4. a frozen rank ---------------------------------------------------------------------------------------


def test_a_frozen_rank_makes_the_other_exit_in_bounded_time_with_one_line_naming_it(food_shards, tmp_path):
    run = tmp_path / "run"
    launcher = start(train_command(food_shards, run, "train.epochs=40", "train.collective_timeout=15", launcher="two"))
    try:
        wait_for(lambda: checkpoints(run), launcher, timeout=240, what="the first checkpoint")
        rank0 = lock_holder(run)
        (rank1,) = [pid for pid in trainers(launcher) if pid != rank0]
        os.kill(rank1, signal.SIGSTOP)
        stopped = time.monotonic()
        wait_for(lambda: not alive(rank0), timeout=15 + 60, what="rank 0 to give up on the frozen rank 1")
        rank0_waited = time.monotonic() - stopped  # the timeout, two heartbeat reads, slack for a busy CI
        code = launcher.wait(timeout=30 + 60)  # the launcher's 30 s grace for the stopped rank, slack
    finally:
        for pid in children(launcher.pid):
            os.kill(pid, signal.SIGKILL)
        if launcher.poll() is None:
            launcher.kill()
    out = launcher.stdout.read()
    launcher.stdout.close()
    lines = [line for line in out.splitlines() if "train: error:" in line]
    assert code == 1 and len(lines) == 1 and "Traceback" not in out, out[-4000:]  # rank 0's exit code
    assert "rank 0: a collective at step" in lines[0] and "within train.collective_timeout=15 s" in lines[0]
    assert f"rank 1 (host {socket.gethostname()}, pid {rank1}) has stopped" in lines[0]
    assert rank0_waited < 15 + 30, rank0_waited
    print(f"rank 0 exited {rank0_waited:.1f} s after rank 1 froze: {lines[0]}")


# --- 6. one line where a traceback was ------------------------------------------------------------------


def _file(tmp_path: Path) -> Path:
    (tmp_path / "taken").write_text("x\n")
    return tmp_path / "taken"


@pytest.mark.parametrize("where, says", [("file", "is a file, not a folder"), ("under_file", "a folder above it is a file"),
                                         ("read_only", "")])
def test_a_run_dir_that_cannot_hold_a_run_is_one_line_before_any_loader_is_built(where, says, tmp_path, request):
    run = {"file": lambda: _file(tmp_path), "under_file": lambda: _file(tmp_path) / "run",
           "read_only": lambda: request.getfixturevalue("read_only_dir") / "run"}[where]()
    # the shards do not exist: had the loaders been built first, the line would be about them
    proc = subprocess.run(train_command(tmp_path / "no-shards", run), cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("train: error: ") and str(run) in lines[0] and says in lines[0]


@pytest.mark.parametrize("size, saving", [("20m", "checkpoint"), ("34m", "final weights")])
def test_a_full_disk_while_saving_is_one_line_and_leaves_no_partial_folder(size, saving, food_shards, tmp_path):
    """Checkpoints of the demo model are ~26 MB, its weights ~13 MB: 20 MB take no checkpoint, 34 MB one
    checkpoint (epoch 1's) and not the weights beside it."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)]).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        run = mount / "run"
        proc = subprocess.run(train_command(food_shards, run, "train.epochs=1", "train.checkpoint_every=0",
                                            "train.keep_checkpoints=1"), cwd=REPO, env=ENV, capture_output=True,
                              text=True, timeout=300)
        lines = [line for line in proc.stderr.splitlines() if line.startswith("train: error:")]
        assert proc.returncode == 1 and "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-3000:]
        assert "No space left on device" in lines[0] and f"saving the {saving}" in lines[0]
        assert not (run / "final").exists()  # no empty or partial final/
        assert not list((run / "checkpoints").glob(".tmp-*")) if (run / "checkpoints").is_dir() else True
        if saving == "final weights":
            assert checkpoints(run) == ["step-00000003"]  # the checkpoint before is intact: resume from it
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_checkpoint_folder_can_be_evaluated_directly(straight_run, food_shards, tmp_path):
    checkpoint = straight_run / "checkpoints" / checkpoints(straight_run)[-1]
    out = tmp_path / "metrics.json"
    # the two evaluations side by side (two cores): a checkpoint folder, and the final weights
    procs = [subprocess.Popen([sys.executable, "-m", "vaedist.evaluate", str(model), "--shards", str(food_shards), *extra],
                              cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for model, extra in ((checkpoint, ["--out", str(out)]), (straight_run / "final", []))]
    (stdout, stderr), (final_stdout, final_stderr) = (p.communicate(timeout=300) for p in procs)
    assert procs[0].returncode == 0, stderr[-3000:]
    assert procs[1].returncode == 0, final_stderr[-3000:]
    assert json.loads(out.read_text())["val/images"] == 24
    assert stdout.strip().splitlines()[-1] == final_stdout.strip().splitlines()[-1]  # the same weights
