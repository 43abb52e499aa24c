"""The bad samples of a training run: exchanged by the ranks, judged alike, recorded in the run directory.

    bad = BadSampleLog.start(accelerator, run_dir, (train_loader, val_loader))  # collective: earlier records
    bad.share(accelerator, tracker)     # collective: what any rank found, judged on every rank alike
    bad.count("train")                  # train/bad_samples, val/bad_samples in the metrics rows
    bad.summary()                       # the end-of-run line, or "" when there were none

A loader finds a sample that fails to decode and replaces it in its batch (vaedist.data.bad_samples); this
is the run's side: at the log row after a finding (LogWindow.flush counts the findings of every rank) and
after each evaluation, the ranks exchange their records; every rank skips all of them from then on (the
sample order deals a sample to another rank in the next epoch) or, under data.bad_samples=stop or past the
budget, every rank raises the same one-line error. Rank 0 appends the new records to the run's
bad_samples.jsonl and W&B's summary; a resumed run reads them back, so that it knows them from its first
batch and replaces them exactly as the interrupted session did.
"""
from __future__ import annotations

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object

from vaedist.data.bad_samples import BadSample, BadSamples, BadSampleStop
from vaedist.rundir import RunDir
from vaedist.tracking import Tracker


class BadSampleLog:
    """The records of one run (the same on every rank after each `share`) and the loaders they apply to."""

    def __init__(self, run_dir: RunDir, splits: list[BadSamples], records: list[BadSample]):
        self.run_dir, self.splits, self.records = run_dir, splits, records
        self._seen = {_identity(bad) for bad in records}

    @classmethod
    def start(cls, accelerator: Accelerator, run_dir: RunDir, loaders) -> BadSampleLog:
        """Collective. Loaders without bad-sample handling (stand-ins of benchmarks and tests) are left out."""
        splits = [loader.bad_samples for loader in loaders if isinstance(getattr(loader, "bad_samples", None), BadSamples)]
        rows = [run_dir.read_bad_samples() if accelerator.is_main_process else None]
        if accelerator.num_processes > 1:
            broadcast_object_list(rows)  # rank 0 reads: the run dir may not be shared with every node
        records = [bad for row in rows[0] if (bad := _parse(row)) is not None]
        for split in splits:
            split.deferred = True  # the policy is applied here, the same on every rank
            try:
                split.skip(records)  # judged when they were found: skipped now under either policy
            except BadSampleStop as err:  # past the budget: the same records on every rank
                err.every_rank = True
                raise
        return cls(run_dir, splits, records)

    def pending(self) -> int:
        """Samples this rank found since the last `share` (a number for the log row's gather)."""
        return sum(len(split.found) for split in self.splits)

    def share(self, accelerator: Accelerator, tracker: Tracker) -> None:
        """Collective: every rank's findings to every rank; recorded (rank 0), then judged alike."""
        mine = [bad for split in self.splits for bad in split.take_found()]
        everyone = gather_object(mine) if accelerator.num_processes > 1 else mine  # rank order: the same list
        new = []
        for bad in everyone:
            if _identity(bad) not in self._seen:
                self._seen.add(_identity(bad))
                new.append(bad)
        if new:
            self.records += new
            if accelerator.is_main_process:
                self.run_dir.append_bad_samples([bad.to_json() for bad in new])
            tracker.summarize("bad_samples", [bad.to_json() for bad in self.records])
        for split in self.splits:
            split.judge(everyone, every_rank=True)

    def count(self, split: str) -> int | None:
        """Bad samples known in `split`, None when no loader of that split handles them."""
        counts = [len(s) for s in self.splits if s.split == split]
        return counts[0] if counts else None

    def summary(self) -> str:
        if not self.records:
            return ""
        splits = sorted({bad.split for bad in self.records})
        per_split = ", ".join(f"{s}: {sum(bad.split == s for bad in self.records)}" for s in splits)
        noun = "sample" if len(self.records) == 1 else "samples"
        return (f"{len(self.records)} bad {noun} skipped ({per_split}), listed in {self.run_dir.bad_samples}; "
                "check the shards with python -m vaedist.data.verify")


def _identity(bad: BadSample) -> tuple[str, str, str]:
    return bad.split, bad.shard, bad.key


def _parse(row: dict) -> BadSample | None:
    try:
        return BadSample.from_json(row)
    except (KeyError, TypeError):  # a line written by something else: not ours to judge
        return None
