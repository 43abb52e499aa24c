"""Check a shard directory end to end before training on it (after copying it to a cluster, say):

    python -m vaedist.data.verify shards/coco [--split train] [--no-dali] [--workers N] [--quiet]

For every split (or the one named), without stopping at the first problem:
  - the split's sample count in manifest.json against the sum of its shards';
  - the split's table and hashes file (and, once per directory, duplicates.json) against their size and
    SHA-256 in the manifest: start-up checks the table too, but the duplicate finder's files only when it runs;
  - every tar and index file the manifest lists (present, sizes, index lines, members) and each tar's SHA-256,
    the tars hashed on every core (`vaedist.data.hashing`), with progress lines on stderr that say how long is left;
  - every sample: its .cls and .json readable, its JPEG decoded in full by Pillow (the reference backend's
    decoder) and by DALI on CPU threads (the loader's), so each damaged sample is named: shard, key, member,
    both decoders' reasons;
  - one pass of DALI's own `fn.readers.webdataset` over the tars with our index files.
One line per problem, a summary line per split; exit code 1 when anything is bad (0 when all is well). Every
byte is read and every image decoded twice: minutes for COCO on a few cores.
"""
from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from vaedist.data.bad_samples import damaged_member
from vaedist.data.hashing import default_hash_workers, hash_files
from vaedist.data.index import TarReader, load_split_index
from vaedist.data.backend import dali_available
from vaedist.data.reference import pillow_problem
from vaedist.data.validate import check_shard, check_split_count, check_split_name
from vaedist.remote import is_url
from vaedist.errors import UserError, run_cli
from vaedist.shard.format import (IMAGE_EXT, RESHARD, Manifest, ShardIndex, ShardInfo, load_manifest, member_exts,
                                  read_duplicates)
from vaedist.shard.table import read_hashes, read_table


@dataclass
class SplitReport:
    split: str
    samples: int = 0  # samples in the shards that could be read
    shards: int = 0
    problems: list[str] = field(default_factory=list)  # one line each
    seconds: float = 0.0

    def summary(self) -> str:
        state = "ok" if not self.problems else f"{len(self.problems)} problem{'s' * (len(self.problems) != 1)}"
        return f"{self.split}: {state}, {self.samples} samples in {self.shards} shards ({self.seconds:.1f} s)"


def verify_split(shard_dir: str | Path, manifest: Manifest, split: str, *, dali: bool = True, workers: int = 1,
                 say: Callable[[str], object] = lambda line: None,
                 progress: Callable[[str], object] = lambda line: None) -> SplitReport:
    """Every check of the module docstring on `split`; each problem is also passed to `say` as it is found,
    the hashing's progress lines (with the time left) to `progress`."""
    _require_local(shard_dir)
    shard_dir = Path(shard_dir)
    report = SplitReport(split)
    start = time.perf_counter()

    def problem(line: str) -> None:
        report.problems.append(line)
        say(f"{split}: {line}")

    try:
        check_split_name(manifest, split, shard_dir)
    except UserError as err:
        problem(str(err))
        return report
    try:
        check_split_count(manifest, split, shard_dir)
    except UserError as err:
        problem(str(err))
    for line in _table_problems(shard_dir, manifest, split):
        problem(line)
    required = member_exts(manifest.labelled)
    checked: list[tuple[ShardInfo, ShardIndex]] = []
    for info in manifest.splits[split].shards:
        try:
            checked.append((info, check_shard(shard_dir, info, required)))
        except UserError as err:
            problem(str(err))
    # Every readable tar hashed first, `workers` at a time: the one pass over every byte, on every core.
    digests = hash_files([shard_dir / info.name for info, _ in checked if info.sha256], workers=workers, label=split,
                         progress=progress)
    readable: list[ShardInfo] = []
    for info, idx in checked:
        readable.append(info)
        report.shards += 1
        report.samples += len(idx.members)
        if info.sha256 and digests[shard_dir / info.name] != info.sha256:
            problem(f"shard '{shard_dir / info.name}' does not match its SHA-256 in the manifest (changed after "
                    f"sharding); re-copy it or {RESHARD}")
        for line in _sample_problems(shard_dir, manifest, split, info, idx, dali, workers):
            problem(line)
    if dali and readable and not report.problems and dali_available():
        from vaedist.data.dali import dali_reason, read_with_webdataset_reader  # DALI stays optional (--no-dali)

        try:
            read_with_webdataset_reader([shard_dir / s.name for s in readable],
                                        [shard_dir / s.index for s in readable], list(required))
        except RuntimeError as err:
            problem(f"DALI's webdataset reader rejects split '{split}' of '{shard_dir}': {dali_reason(err)}; {RESHARD}")
    report.seconds = time.perf_counter() - start
    return report


def _table_problems(shard_dir: Path, manifest: Manifest, split: str) -> list[str]:
    """The split's table and hashes file against the manifest (size, SHA-256, rows, columns), where it lists
    them: a directory sharded before the tables (or with --dedup off: no hashes) has nothing here to check."""
    info = manifest.splits[split]
    try:
        if info.table is not None:
            read_table(shard_dir, manifest, split, verify=True)  # a version 1-2 table's hash columns too
        if info.hashes is not None:
            read_hashes(shard_dir, manifest, split, verify=True)
    except UserError as err:
        return [str(err)]
    return []


def _require_local(shard_dir: str | Path) -> None:
    if is_url(shard_dir):
        raise UserError(f"verify reads every byte of every shard: run it where the shards are stored, not on "
                        f"'{shard_dir}'")


def directory_problems(shard_dir: str | Path, manifest: Manifest) -> list[str]:
    """The directory's own files beside the splits': duplicates.json against the manifest, where it lists one."""
    try:
        read_duplicates(shard_dir, manifest)
    except UserError as err:
        return [str(err)]
    return []


def _sample_problems(shard_dir: Path, manifest: Manifest, split: str, info: ShardInfo, idx: ShardIndex, dali: bool,
                     workers: int) -> list[str]:
    """A line per damaged sample of one shard: members that do not parse, JPEGs a decoder rejects."""
    tar = shard_dir / info.name
    index = load_split_index(shard_dir, manifest, split, [idx], shards=[info])
    lines = {i: damaged_member(tar, index.keys[i], member, what) for i, member, what in index.damaged}
    todo = [i for i in range(len(index)) if i not in lines]
    reader = TarReader(shard_dir, [info])
    jpegs = [reader.view(0, int(index.offset[i]), int(index.size[i])) for i in todo]
    with ThreadPoolExecutor(max(1, workers)) as pool:  # Pillow decodes without the GIL
        pillow = list(pool.map(lambda data: pillow_problem(bytes(data)), jpegs))
    dali_says: dict[int, str] = {}
    if dali and dali_available():
        from vaedist.data.dali import decode_problems  # DALI stays optional (--no-dali)

        dali_says = decode_problems([np.frombuffer(data, dtype=np.uint8) for data in jpegs], num_threads=max(1, workers))
    for position, i in enumerate(todo):
        reasons = ([f"DALI: {dali_says[position]}"] if position in dali_says else []) + (
            [f"Pillow: {pillow[position]}"] if pillow[position] else [])
        if reasons:
            lines[i] = damaged_member(tar, index.keys[i], IMAGE_EXT, f"fails to decode ({'; '.join(reasons)})")
    return [lines[i] for i in sorted(lines)]



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vaedist.data.verify", description=__doc__.splitlines()[0],
                                     epilog="One line per problem; exit code 1 when any is found.")
    parser.add_argument("shards", help="shard directory (holds manifest.json)")
    parser.add_argument("--split", default=None, help="only this split (default: every split in the manifest)")
    parser.add_argument("--no-dali", action="store_true", help="decode with Pillow only, and skip DALI's webdataset reader")
    parser.add_argument("--workers", type=int, default=default_hash_workers(),
                        help="threads that hash shards and decode images (default: every core)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr, only problems and results")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    _require_local(args.shards)  # before the manifest: no request to a server whose shards verify cannot read
    manifest = load_manifest(args.shards)
    if args.split is not None and args.split not in manifest.splits:
        raise UserError(f"split '{args.split}' is not in {args.shards}/manifest.json (it has: {', '.join(manifest.splits)})")
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1 (got {args.workers})")
    progress = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    shared = directory_problems(args.shards, manifest)
    for line in shared:
        print(line, flush=True)
    reports = []
    for split in [args.split] if args.split else list(manifest.splits):
        report = verify_split(args.shards, manifest, split, dali=not args.no_dali, workers=args.workers,
                              say=lambda line: print(line, flush=True), progress=progress)
        print(report.summary(), flush=True)
        reports.append(report)
    bad = [r.split for r in reports if r.problems]
    if bad or shared:
        count = sum(len(r.problems) for r in reports) + len(shared)
        where = ([f"split{'s' * (len(bad) != 1)} {', '.join(bad)}"] if bad else []) + (["duplicates.json"] if shared else [])
        raise UserError(f"{count} problem{'s' * (count != 1)} in {' and '.join(where)} of '{args.shards}' (listed "
                        f"above): re-copy the files named there, or {RESHARD}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    run_cli(main, prog="vaedist.data.verify")
