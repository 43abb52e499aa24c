"""A stop request by SIGTERM, SIGINT or SIGHUP (SLURM's time limit, Ctrl-C, a closed terminal or dropped ssh
session; also the kernel's notice that the launcher died, vaedist.parent): noted by the rank it reaches,
acted on by all of them.

The handler only records the signal (`requested`). A signal may reach only some ranks, so they agree on it
at the next log row (`LogWindow.flush`, which sets `agreed`); the loop then saves a checkpoint and exits with
128 + the signal. A second Ctrl-C aborts at once. A repeated SIGTERM or SIGHUP is ignored: the kernel sends
the parent-death signal again each time the dying launcher's thread holding the training is reaped (seen:
two SIGTERMs 80 ms apart after a `kill -9` of the two-process launcher), and the second one used to kill the
process in the middle of its checkpoint. SIGKILL is the way to abort a stop.

A SIGHUP usually means the terminal is gone: its stdout and stderr would fail every write (EIO), so the
checkpoint's messages would end the process. They go to /dev/null then, as under nohup.
"""
from __future__ import annotations

import os
import signal
import sys

from vaedist.errors import redirect_to_devnull


class StopRequest:
    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self, process_index: int):
        self.process_index = process_index
        self.requested = 0  # the signal this rank received, 0 for none
        self.agreed = 0  # the signal every rank knows of since the last log row, 0 for none: stop now
        self._previous: dict = {}

    def install(self) -> None:
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def restore(self) -> None:
        """Give the signals back to the handlers they had before `install`."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, _frame) -> None:
        if self.requested:  # a stop is under way: only a second Ctrl-C (below) ends it sooner
            return
        self.requested = signum
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C aborts at once
        if signum == signal.SIGHUP:
            detach_from_hung_up_terminal()
        print(f"[rank {self.process_index}] {signal.Signals(signum).name}: saving a checkpoint, then exiting",
              file=sys.stderr, flush=True)


def detach_from_hung_up_terminal() -> None:
    """Point stdout and stderr at /dev/null where writing to them fails (a terminal that hung up)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
            os.write(stream.fileno(), b"")
        except (OSError, ValueError):
            try:
                redirect_to_devnull(stream.fileno())
            except (OSError, ValueError):
                pass
