"""`verify`'s hashing speed: one thread against every core, on the same files (warm page cache).

    python -m vaedist.bench verify [--shards DIR] [--files 8] [--mb 64] [--workers N] [--repeats 3]

With --shards it hashes that directory's tars (every split); without, it writes --files files of --mb MiB of
random bytes to a temporary folder (deleted afterwards). Each file is read once before timing so both rows
measure hashing, not the disk; each row is timed --repeats times, alternating, and the best is kept.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from vaedist.data.hashing import default_hash_workers, hash_files
from vaedist.errors import UserError
from vaedist.shard.format import load_manifest


def shard_files(shard_dir: Path) -> list[Path]:
    manifest = load_manifest(shard_dir)
    return [shard_dir / info.name for split in manifest.splits.values() for info in split.shards]


def random_files(folder: Path, count: int, mib: int) -> list[Path]:
    paths = []
    for n in range(count):
        path = folder / f"random-{n:03d}.bin"
        with open(path, "wb") as fh:
            for _ in range(mib):
                fh.write(os.urandom(1 << 20))
        paths.append(path)
    return paths


def best_seconds(paths: list[Path], workers: int) -> float:
    start = time.perf_counter()
    hash_files(paths, workers=workers)
    return time.perf_counter() - start


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m vaedist.bench verify", description=__doc__.splitlines()[0])
    parser.add_argument("--shards", default=None, help="hash this shard directory's tars (default: random files)")
    parser.add_argument("--files", type=int, default=8, help="random files to write (default: %(default)s)")
    parser.add_argument("--mb", type=int, default=64, help="MiB per random file (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=default_hash_workers(),
                        help="threads of the parallel row (default: every core, here %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timings per row, best kept (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.files < 1 or args.mb < 1 or args.workers < 1 or args.repeats < 1:
        raise UserError("--files, --mb, --workers and --repeats must be at least 1")
    folder = None
    try:
        if args.shards:
            paths = shard_files(Path(args.shards))
        else:
            folder = Path(tempfile.mkdtemp(prefix="vaedist-bench-verify-"))
            paths = random_files(folder, args.files, args.mb)
        total = sum(p.stat().st_size for p in paths)
        hash_files(paths, workers=args.workers)  # warm the page cache
        rows = {1: [], args.workers: []}
        for _ in range(args.repeats):
            for workers in rows:
                rows[workers].append(best_seconds(paths, workers))
        one = min(rows[1])
        print(f"verify hashing: {len(paths)} files, {total / 1e6:.0f} MB, warm page cache, best of {args.repeats}")
        for workers, times in rows.items():
            best = min(times)
            print(f"  {workers:>2} thread{'s' if workers > 1 else ' '}  {best:7.2f} s  {total / best / 1e9:5.2f} GB/s"
                  f"  x{one / best:.2f}")
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    return 0
