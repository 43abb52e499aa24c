"""A training process whose parent (the launcher) dies stops as on SIGTERM: it saves a checkpoint and exits.

    if launched():                 # under accelerate launch / torchrun (not a plain `python` from a shell)
        signal_when_parent_dies()  # first thing in the training command

`accelerate launch` with one process runs the training as a plain subprocess and forwards no signal: a
SIGTERM to the launcher killed it and left the training running on as an orphan, without a checkpoint, beside
the next start. The kernel can send a signal to a process when its parent exits (Linux's
PR_SET_PDEATHSIG): asked for SIGTERM, the training takes its ordinary stop path. Elsewhere (no prctl), a
thread notices the change of parent and sends the same signal. Only under a launcher: a training started
from a shell with nohup must outlive the shell.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_S = 1.0


def launched() -> bool:
    """True under `accelerate launch` (it always sets ACCELERATE_MIXED_PRECISION) or torchrun (LOCAL_RANK)."""
    return "ACCELERATE_MIXED_PRECISION" in os.environ or "LOCAL_RANK" in os.environ


def signal_when_parent_dies(signum: int = signal.SIGTERM) -> None:
    parent = os.getppid()
    if parent == 1:  # started by init (a daemon, or the launcher is gone already): nothing to watch
        return
    if sys.platform.startswith("linux") and _prctl_pdeathsig(signum):
        if os.getppid() != parent:  # it died between getppid() and prctl(): the kernel will not tell us
            os.kill(os.getpid(), signum)
        return
    threading.Thread(target=_watch, args=(parent, signum), name="vaedist-parent-watch", daemon=True).start()


def _prctl_pdeathsig(signum: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent: int, signum: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_S)
    os.kill(os.getpid(), signum)  # once: the stop path saves a checkpoint and exits
