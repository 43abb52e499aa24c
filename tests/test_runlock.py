"""One run directory, one training: the lock file names its holder, a second holder is refused in one line,
and a holder killed with -9 leaves no stale lock. Run dirs that cannot hold a run are refused up front."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from vaedist.errors import UserError
from vaedist.runlock import RunDirInUse, RunLock

REPO = Path(__file__).resolve().parents[1]
HOLD = ("import sys, time\nfrom vaedist.runlock import RunLock\nRunLock.acquire(sys.argv[1])\n"
        "print('holding', flush=True)\ntime.sleep(600)\n")


def test_a_second_start_is_refused_naming_the_holder_and_a_killed_holder_leaves_no_stale_lock(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(RunDirInUse) as err:
            RunLock.acquire(run_dir)
        message = str(err.value)
        assert "\n" not in message and f"'{run_dir}' is in use by another training" in message
        assert f"host {socket.gethostname()}, pid {holder.pid}, started 20" in message
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = RunLock.acquire(run_dir)  # the kernel released the dead holder's lock: nothing stale to clean up
    assert f'"pid": {os.getpid()}' in (run_dir / "run.lock").read_text()
    lock.release()
    RunLock.acquire(run_dir).release()


def test_a_run_dir_that_is_a_file_or_lies_under_a_file_is_one_line(tmp_path):
    (tmp_path / "taken").write_text("a file where the run dir should be\n")
    with pytest.raises(UserError, match="is a file, not a folder"):
        RunLock.acquire(tmp_path / "taken")
    with pytest.raises(UserError, match="a folder above it is a file"):
        RunLock.acquire(tmp_path / "taken" / "run")
    assert (tmp_path / "taken").read_text() == "a file where the run dir should be\n"


def test_a_read_only_run_dir_is_one_line(read_only_dir):
    with pytest.raises(UserError) as err:
        RunLock.acquire(read_only_dir / "run")
    assert "\n" not in str(err.value) and str(read_only_dir / "run") in str(err.value)
    assert "Read-only file system" in str(err.value) or "Permission denied" in str(err.value)
