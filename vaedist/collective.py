"""When a collective times out: which rank is late, in one line, so that every other rank can exit.

    roll = RollCall.start(accelerator)        # every rank says who it is (host, pid)
    roll.mark(step)                           # before each log row's collective: "I got here"
    ...
    except RuntimeError as err:
        if is_collective_timeout(err):
            raise roll.timeout(step, seconds)  # CollectiveTimeout: "rank 1 (host h, pid 123) ..."

A rank that freezes (SIGSTOP, a hung filesystem, a dead GPU) used to hold the others forever: no process
group timeout was set. With `train.collective_timeout` the backend gives up (gloo raises "Timed out waiting
... for recv"), but it does not say on whom it waited. The ranks leave marks in the rendezvous store
(torch.distributed's key-value store, served by rank 0), so a rank that timed out can name the ranks whose
mark is behind its own. If the store does not answer either, rank 0 (which serves it) is the one frozen.
"""
from __future__ import annotations

import os
import socket
import threading

import torch.distributed as dist

from vaedist.errors import UserError

_TIMEOUT_WORDS = ("timed out", "timeout", "connection closed by peer", "connection reset by peer",
                  "broken pipe", "connection refused")
STORE_READ_S = 5  # how long a rank that timed out waits for the store's answers


class CollectiveTimeout(UserError):
    """A collective did not complete within train.collective_timeout: a rank is frozen or gone."""


def is_collective_timeout(err: BaseException) -> bool:
    """True for a process-group failure (gloo's timeout or a lost peer; NCCL's watchdog), not for a bug."""
    return isinstance(err, RuntimeError) and any(w in str(err).lower() for w in _TIMEOUT_WORDS)


class RollCall:
    """The ranks' identities and their latest marks, in the process group's store. Inert with one process."""

    def __init__(self, rank: int, world: int, store, who: dict[int, str]):
        self.rank, self.world, self._store, self.who = rank, world, store, who

    @classmethod
    def start(cls, accelerator) -> "RollCall":
        """Collective (a barrier): each rank writes who it is, then reads everybody's once."""
        rank, world = accelerator.process_index, accelerator.num_processes
        if world == 1 or not dist.is_initialized():
            return cls(rank, world, None, {rank: _me()})
        # The default group's store: torch keeps no public handle on it (and a second TCPStore client of
        # MASTER_ADDR would need a port the launcher may not have exported).
        store = dist.PrefixStore("vaedist/", dist.distributed_c10d._get_default_store())
        store.set(f"who/{rank}", _me())
        accelerator.wait_for_everyone()
        who = {r: store.get(f"who/{r}").decode() for r in range(world)}
        return cls(rank, world, store, who)

    def mark(self, step: int) -> None:
        if self._store is not None:
            self._store.set(f"at/{self.rank}", str(step))

    def timeout(self, step: int, seconds: float) -> CollectiveTimeout:
        """The one-line error of this rank after a collective at `step` timed out."""
        late = self._late(step)
        if late is None:
            whom = f"rank 0 ({self.who.get(0, '?')}), which also serves the process group's store, answers nothing"
        elif late:
            whom = ", ".join(f"rank {r} ({self.who.get(r, '?')}) is at step {at}" for r, at in late)
        else:
            whom = "every rank reached it: a lost connection"
        return CollectiveTimeout(
            f"rank {self.rank}: a collective at step {step} did not complete within train.collective_timeout="
            f"{seconds:g} s: {whom} (frozen or gone); stopping so that the job ends (resume from the last "
            "checkpoint once it runs again)")

    def _late(self, step: int) -> list[tuple[int, str]] | None:
        """Ranks whose mark is behind `step` (rank, its mark), or None when the store does not answer: its
        client ignores its own timeout when the server is frozen, so the reads run in a thread given
        STORE_READ_S (left blocked, a daemon thread does not keep the exiting process alive)."""
        marks: dict[int, str] = {}

        def read() -> None:
            for r in range(self.world):
                marks[r] = self._store.get(f"at/{r}").decode() if self._store.check([f"at/{r}"]) else "none"

        reader = threading.Thread(target=read, name="vaedist-roll-call", daemon=True)
        reader.start()
        reader.join(STORE_READ_S)
        if reader.is_alive() or len(marks) < self.world:
            return None
        return [(r, at) for r, at in marks.items() if r != self.rank and (not at.isdigit() or int(at) < step)]


def _me() -> str:
    return f"host {socket.gethostname()}, pid {os.getpid()}"
