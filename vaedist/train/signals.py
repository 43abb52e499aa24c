"""A stop request by SIGTERM or SIGINT (SLURM's time limit, Ctrl-C): noted by the rank it reaches, acted on
by all of them.

The handler only records the signal (`requested`). A signal may reach only some ranks, so they agree on it
at the next log row (`LogWindow.flush`, which sets `agreed`); the loop then saves a checkpoint and exits with
128 + the signal. A second Ctrl-C aborts at once.
"""
from __future__ import annotations

import signal
import sys


class StopRequest:
    SIGNALS = (signal.SIGTERM, signal.SIGINT)

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
        self.requested = signum
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C aborts at once
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        print(f"[rank {self.process_index}] {signal.Signals(signum).name}: saving a checkpoint, then exiting",
              file=sys.stderr, flush=True)
