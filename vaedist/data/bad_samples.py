"""Samples that fail to decode: which one (shard, key, member, the decoder's reason), and what happens then.

A JPEG damaged after sharding (a flipped bit on a copy, a disk error) used to end training mid-epoch with
DALI's "Failed to decode sample #9"; the order is seeded, so every resume hit it again. Now the decoder that
fails finds the sample on the host, and `BadSamples` applies the policy (`data.bad_samples`):

    bad = BadSamples(index, "train", policy="skip", max_fraction=0.001)
    bad.add(i, "jpg", "fails to decode (...)")   # skip: recorded, logged; stop: BadSampleStop (one line)
    batch = bad.fix(batch, keep_size=True)        # before decoding: known bad samples replaced

In a multi-process training the policy is the trainer's to apply (`deferred`): a sample found on one rank is
only recorded (`found`) and the batch fixed; at the next log row the ranks exchange what they found and
every rank calls `judge` with the same records, so that all of them skip the same samples, or all of them
stop with the same line (vaedist.train.bad_samples).

Replacement rule: each bad position of a batch takes the sample of the first good position after it
(cyclically). It depends only on the batch and the set of bad samples, so a batch whose bad sample is found
while decoding it and the same batch in a later epoch or session (the sample known bad from the start) hold
the same samples. Training keeps every batch's size, so every rank runs the same steps; evaluation drops the
bad samples instead, so that no image counts twice in the metrics.

More than `max_fraction` of the split bad (at least one is always tolerated) stops the run under either
policy: that many damaged samples mean damaged shards, to check with `python -m vaedist.data.verify` and
re-shard. `damaged_member` is the one wording of a damaged member, for these errors and for `verify`.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from vaedist.data.index import SplitIndex
from vaedist.shard.format import RESHARD
from vaedist.errors import UserError

log = logging.getLogger(__name__)

POLICIES = ("skip", "stop")


@dataclass(frozen=True)
class BadSample:
    """One damaged sample; `to_json` is its record (one line of a run's bad_samples.jsonl)."""

    split: str
    shard: str  # tar file name, relative to the shard directory
    key: str
    member: str  # the member that fails: "jpg", "cls" or "json"
    reason: str  # what is wrong with it, as a predicate: "fails to decode (DALI: ...; Pillow: ...)"

    def describe(self, shard_dir: str | Path) -> str:
        return damaged_member(Path(shard_dir) / self.shard, self.key, self.member, self.reason)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, row: dict) -> "BadSample":
        return cls(**{name: str(row[name]) for name in ("split", "shard", "key", "member", "reason")})


def damaged_member(tar: str | Path, key: str, member: str, reason: str) -> str:
    return f"shard '{tar}' is damaged: sample '{key}' has a .{member} member that {reason}"


class BadSampleStop(UserError):
    """A bad sample under data.bad_samples=stop, or more bad samples than the budget: the run stops."""


class BadSamples:
    """The bad samples of one split known to this process, the policy for new ones, and the replacement rule."""

    def __init__(self, index: SplitIndex, split: str, policy: str = "skip", max_fraction: float = 0.001):
        if policy not in POLICIES:
            raise ValueError(f"unknown bad-sample policy {policy!r}")
        self.index, self.split, self.policy, self.max_fraction = index, split, policy, max_fraction
        self.allowed = max(1, int(max_fraction * len(index)))
        self.known: dict[int, BadSample] = {}  # position in the split -> record
        self.found: list[BadSample] = []  # found by this process and not yet handed on (`take_found`)
        self.deferred = False  # True: `add` only records, the caller applies the policy with `judge`
        self._sorted = np.empty(0, dtype=np.int64)  # the keys of `known`, for np.isin

    def __len__(self) -> int:
        return len(self.known)

    def record(self, i: int, member: str, reason: str) -> BadSample:
        ix = self.index
        return BadSample(self.split, ix.shards[int(ix.shard[i])].name, ix.keys[i], member, reason)

    def add(self, i: int, member: str, reason: str) -> BadSample:
        """A sample of this split found bad here: stop (policy, budget) or remember it (logged once)."""
        i = int(i)
        if i in self.known:
            return self.known[i]
        bad = self.record(i, member, reason)
        if self.policy == "stop" and not self.deferred:
            raise self.stop_error(bad)
        self._remember(i, bad)
        self.found.append(bad)
        if self.policy == "skip":
            log.warning("skipping a bad sample: %s", bad.describe(self.index.shard_dir))
        if not self.deferred:
            self.check_budget()
        return bad

    def judge(self, records: list[BadSample], every_rank: bool = False) -> int:
        """The policy applied to `records` (found here or on any rank): under stop, BadSampleStop naming the
        first; under skip, they are skipped from now on (and the budget checked). `every_rank`: every rank
        judges the same records (its error is printed once). Returns how many were new here."""
        try:
            if self.policy == "stop" and any(bad.split == self.split for bad in records):
                raise self.stop_error(next(bad for bad in records if bad.split == self.split))
            new = self.skip(records)
            self.check_budget()
            return new
        except BadSampleStop as err:
            err.every_rank = every_rank
            raise

    def stop_error(self, bad: BadSample) -> BadSampleStop:
        return BadSampleStop(f"{bad.describe(self.index.shard_dir)} (data.bad_samples=stop); {RESHARD}, "
                             "or set data.bad_samples=skip to train on without it")

    def skip(self, records: Iterable[BadSample]) -> int:
        """Samples known bad from elsewhere (the run directory, other ranks): skipped from now on, without
        the policy (they were judged when found). Records of other splits or unknown keys are ignored.
        Returns how many were new here."""
        records = [bad for bad in records if bad.split == self.split]
        if not records:  # the usual case (a resumed run with no bad sample): no map of the whole split to build
            return 0
        names = [shard.name for shard in self.index.shards]
        where = {(names[s], key): i for i, (s, key) in enumerate(zip(self.index.shard.tolist(), self.index.keys))}
        new = 0
        for bad in records:
            i = where.get((bad.shard, bad.key)) if bad.split == self.split else None
            if i is not None and i not in self.known:
                self._remember(i, bad)
                new += 1
        if new:
            self.check_budget()
        return new

    def take_found(self) -> list[BadSample]:
        found, self.found = self.found, []
        return found

    def check_budget(self) -> None:
        if len(self.known) > self.allowed:
            total = len(self.index)
            raise BadSampleStop(
                f"{len(self.known)} of the {total} samples of split '{self.split}' in '{self.index.shard_dir}' are "
                f"damaged, more than data.max_bad_fraction={self.max_fraction:g} allows ({self.allowed}): the "
                f"shards are damaged; check them with python -m vaedist.data.verify {self.index.shard_dir}, then "
                f"re-copy them or {RESHARD}")

    def _remember(self, i: int, bad: BadSample) -> None:
        self.known[i] = bad
        self._sorted = np.asarray(sorted(self.known), dtype=np.int64)

    def fix(self, batch: np.ndarray, keep_size: bool) -> np.ndarray:
        """`batch` (global sample indices) without its bad samples: replaced (keep_size) or dropped."""
        if not self.known:  # the fast path: nothing known bad
            return batch
        bad = np.isin(batch, self._sorted)
        if not bad.any():
            return batch
        if not keep_size:
            return batch[~bad]
        good = np.flatnonzero(~bad)
        if not len(good):
            raise BadSampleStop(f"every sample of a batch of split '{self.split}' in '{self.index.shard_dir}' is "
                                f"damaged (e.g. {self.known[int(batch[0])].describe(self.index.shard_dir)}); {RESHARD}")
        positions = np.arange(len(batch))
        at = np.flatnonzero(bad)
        positions[at] = good[np.searchsorted(good, at) % len(good)]  # the first good position after each bad one
        return batch[positions]
