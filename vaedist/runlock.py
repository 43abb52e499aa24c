"""One run directory, one training: a lock held for the life of the run.

    lock = RunLock.acquire(run_dir)   # a RunDir or its path; or a one-line RunDirInUse naming the holder (host, pid, start time)
    ...                               # train; the kernel releases the lock if the process dies, even on kill -9
    lock.release()

Two trainings on one run.dir used to both run to exit 0: every metrics row twice, two W&B runs, checkpoints
overwritten by whichever renamed last. The lock is `fcntl.flock` on a small file in the run directory that
also names its holder. flock belongs to the open file, so a crash never leaves a stale lock behind (there is
no "lock present" state to clean up, only an open file or none), and it works on local disks and NFSv4
(Linux maps it to an NFS lock there). Taking it checks that run.dir can be created and written, so a
read-only run.dir, a run.dir that is a file or lies under a file, is one line before anything is built.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from vaedist.errors import UserError
from vaedist.rundir import RunDir


class RunDirInUse(UserError):
    """Another training holds the run directory."""

    every_rank = True  # rank 0 takes the lock and every rank raises this with rank 0's message


def create_run_dir(run_dir: Path) -> None:
    """Create run.dir (and the folders above it), or a one-line UserError for a run.dir that cannot hold a run,
    before anything is written into it. Taking the lock does this; the training command also does it at once
    (vaedist.train.cli), before it imports the trainer."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run.dir '{run_dir}' is a file, not a folder: give the run a folder of its own")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # a folder above it is a file
        raise UserError(f"cannot create run.dir '{run_dir}': a folder above it is a file") from None
    except OSError as err:
        raise UserError(f"cannot create run.dir '{run_dir}': {err.strerror or err}") from None


class RunLock:
    """The held lock of one run directory (the open, flocked lock file)."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    @classmethod
    def acquire(cls, run: RunDir | str | Path) -> "RunLock":
        run = run if isinstance(run, RunDir) else RunDir(run)
        run_dir, path = run.path, run.lock
        create_run_dir(run_dir)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise UserError(f"run.dir '{run_dir}' is not writable ({err.strerror}): choose a run.dir the "
                                "training can write to") from None
            raise UserError(f"cannot open '{path}': {err.strerror or err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read_holder(fd))
            os.close(fd)
            raise RunDirInUse(f"run.dir '{run_dir}' is in use by another training ({holder}): wait for it to end "
                              "(or stop it: it saves a checkpoint), or give this run its own run.dir") from None
        except OSError as err:  # a filesystem without locks (some FUSE mounts)
            os.close(fd)
            raise UserError(f"cannot lock '{path}' ({err.strerror or err}): put run.dir on a filesystem with file "
                            "locks, and never start two trainings on it") from None
        holder = {"host": socket.gethostname(), "pid": os.getpid(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        except OSError as err:  # a full disk: the lock is held all the same, only its note is missing
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                os.close(fd)
                raise
        return cls(path, fd)

    def release(self) -> None:
        """Let go (the file stays: removing a locked file would let a third process lock a new one beside a
        second one still waiting on the old)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "holder unknown: it has only just started"
    return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, started {holder.get('started', '?')}"
