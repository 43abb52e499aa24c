"""The ranks of a multi-process run failing together: a frozen rank named in one line, an error agreed on.

    roll = RollCall.start(accelerator)        # every rank says who it is (host, pid); a heartbeat thread starts
    roll.at(step)                             # the step this rank is in (a Python int: free per step)
    ...
    except RuntimeError as err:
        if is_collective_timeout(err):
            raise roll.timeout(step, seconds)  # CollectiveTimeout: "rank 1 (host h, pid 123) has stopped ..."
    roll.stop()

    raise_together(accelerator, error)        # collective: any rank's UserError (or None) raised on every rank

A rank that freezes (SIGSTOP, a hung filesystem, a dead GPU) used to hold the others forever: no process
group timeout was set. With `train.collective_timeout` (Accelerate's InitProcessGroupKwargs, see
vaedist.accelerator) the backend gives up (gloo raises "Timed out waiting ... for recv"), but it does not say
on whom it waited. So every rank's heartbeat thread writes "<beat count> <step>" into the rendezvous store
(torch.distributed's key-value store, served by rank 0) every BEAT_S. A rank that timed out reads the beats
twice, STALE_S apart: a rank whose beat did not move is frozen or gone (a stopped process stops all its
threads); a rank whose beat moves but whose step is behind the others' is stuck inside its step (a hung
read, a GPU that never returns). Counting beats, not reading clocks, keeps hosts' clock skew out of it. If
the store does not answer at all, rank 0 (which serves it) is the frozen one.

NCCL's own watchdog aborts a process on a timeout (TORCH_NCCL_ASYNC_ERROR_HANDLING) before Python sees an
exception, so on GPUs the line comes from NCCL, not from here; gloo (CPU) raises and gets this line.
"""
from __future__ import annotations

import os
import socket
import threading
import time

import torch.distributed as dist
from accelerate.utils import gather_object

from vaedist.errors import UserError

_TIMEOUT_WORDS = ("timed out", "timeout", "connection closed by peer", "connection reset by peer",
                  "broken pipe", "connection refused")
BEAT_S = 1.0  # a heartbeat per second: a store write, off the training thread
STALE_S = 3.0  # a beat that does not move for this long: the rank is frozen or gone
STORE_READ_S = 5.0  # how long a rank that timed out waits for each read of the store


class CollectiveTimeout(UserError):
    """A collective did not complete within train.collective_timeout: a rank is frozen or gone."""


class AgreedError(UserError):
    """A UserError of one rank, raised on every rank (`raise_together`): printed once, by rank 0."""

    every_rank = True

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def raise_together(accelerator, error: UserError | None) -> None:
    """Collective: if any rank's `error` is not None, every rank raises the first such rank's (so that all
    of them stop at once instead of the others waiting for the failed one until the collective timeout)."""
    if accelerator.num_processes == 1:
        if error is not None:
            raise error
        return
    outcomes = gather_object([(str(error), error.exit_code) if error is not None else None])
    failed = [outcome for outcome in outcomes if outcome is not None]
    if failed:
        message, code = failed[0]
        raise AgreedError(message, code) from None


def is_collective_timeout(err: BaseException) -> bool:
    """True for a process-group failure (gloo's timeout or a lost peer), not for a bug."""
    return isinstance(err, RuntimeError) and any(w in str(err).lower() for w in _TIMEOUT_WORDS)


class RollCall:
    """The ranks' identities and heartbeats in the process group's store. Inert with one process."""

    def __init__(self, rank: int, world: int, store, who: dict[int, str]):
        self.rank, self.world, self._store, self.who = rank, world, store, who
        self.step = 0  # the step this rank is in, read by the heartbeat thread
        self._stopped = threading.Event()
        self._beats = 0
        if store is not None:
            threading.Thread(target=self._beat, name="vaedist-heartbeat", daemon=True).start()

    @classmethod
    def start(cls, accelerator) -> RollCall:
        """Collective (a barrier): each rank writes who it is, then reads everybody's once."""
        rank, world = accelerator.process_index, accelerator.num_processes
        if world == 1 or not dist.is_initialized():
            return cls(rank, world, None, {rank: _me()})
        # The default group's store: torch keeps no public handle on it (and a second TCPStore client of
        # MASTER_ADDR would need a port the launcher may not have exported). Its client is thread-safe.
        store = dist.PrefixStore("vaedist/", dist.distributed_c10d._get_default_store())
        store.set(f"who/{rank}", _me())
        accelerator.wait_for_everyone()
        who = {r: store.get(f"who/{r}").decode() for r in range(world)}
        return cls(rank, world, store, who)

    def at(self, step: int) -> None:
        self.step = step

    def stop(self) -> None:
        self._stopped.set()

    def _beat(self) -> None:
        while not self._stopped.is_set():
            self._beats += 1
            try:
                self._store.set(f"beat/{self.rank}", f"{self._beats} {self.step}")
            except Exception:  # the store is gone (rank 0 exited): nothing left to tell
                return
            self._stopped.wait(BEAT_S)

    def timeout(self, step: int, seconds: float) -> CollectiveTimeout:
        """The one-line error of this rank after a collective at `step` timed out (takes ~STALE_S)."""
        first = self._read_beats()
        time.sleep(STALE_S)
        second = self._read_beats() if first is not None else None
        if second is None:
            whom = f"rank 0 ({self.who.get(0, '?')}), which also serves the process group's store, answers nothing"
        else:
            others = [r for r in range(self.world) if r != self.rank]
            frozen = [r for r in others if second.get(r, (0, 0))[0] == first.get(r, (0, 0))[0]]
            ahead = max(s for _, s in second.values())
            behind = [r for r in others if r not in frozen and second[r][1] < ahead]
            parts = [f"rank {r} ({self.who.get(r, '?')}) has stopped (no heartbeat for {STALE_S:g} s: frozen or "
                     "gone)" for r in frozen]
            parts += [f"rank {r} ({self.who.get(r, '?')}) is stuck in step {second[r][1]}" for r in behind]
            whom = "; ".join(parts) or "every rank is alive: a lost connection between them"
        return CollectiveTimeout(
            f"rank {self.rank}: a collective at step {step} did not complete within train.collective_timeout="
            f"{seconds:g} s: {whom}; stopping so that the job ends (resume from the last checkpoint once it "
            "runs again)")

    def _read_beats(self) -> dict[int, tuple[int, int]] | None:
        """rank -> (beat count, step), or None when the store does not answer: its client ignores its own
        timeout when the server is frozen, so the reads run in a thread given STORE_READ_S (left blocked, a
        daemon thread does not keep the exiting process alive)."""
        beats: dict[int, tuple[int, int]] = {}

        def read() -> None:
            for r in range(self.world):
                if self._store.check([f"beat/{r}"]):
                    count, at = self._store.get(f"beat/{r}").decode().split()
                    beats[r] = (int(count), int(at))
                else:
                    beats[r] = (0, 0)

        reader = threading.Thread(target=read, name="vaedist-roll-call", daemon=True)
        reader.start()
        reader.join(STORE_READ_S)
        if reader.is_alive() or len(beats) < self.world:
            return None
        return beats


def _me() -> str:
    return f"host {socket.gethostname()}, pid {os.getpid()}"
