"""Check a shard directory end to end before training on it (after copying it to a cluster, say):

    python -m vaedist.data.verify shards/coco [--split train] [--no-dali] [--workers N] [--quiet]

For every split (or the one named): the tars and index files the manifest lists, each tar's SHA-256 against
the manifest (every byte is read, by one thread per core; progress lines on stderr say how long is left), then one pass of DALI's own `fn.readers.webdataset`
over the tars with our index files. Training start-up checks only sizes and indexes, so a byte changed in
place inside a tar is found here, not there. One line per split; a damaged shard is a one-line error.
"""
from __future__ import annotations

import argparse
import sys
import time

from vaedist.data.hashing import default_hash_workers
from vaedist.data.validate import verify_split
from vaedist.errors import UserError, run_cli
from vaedist.shard.format import load_manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vaedist.data.verify", description=__doc__.splitlines()[0])
    parser.add_argument("shards", help="shard directory (holds manifest.json)")
    parser.add_argument("--split", default=None, help="only this split (default: every split in the manifest)")
    parser.add_argument("--no-dali", action="store_true", help="skip the pass of DALI's webdataset reader")
    parser.add_argument("--workers", type=int, default=None,
                        help=f"shards hashed at once (default: every core, here {default_hash_workers()})")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr, only the result")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1 (got {args.workers})")
    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    manifest = load_manifest(args.shards)
    splits = [args.split] if args.split else list(manifest.splits)
    for split in splits:
        if split not in manifest.splits:
            raise UserError(f"split '{split}' is not in {args.shards}/manifest.json (it has: {', '.join(manifest.splits)})")
        start = time.perf_counter()
        verify_split(args.shards, manifest, split, dali_reader=not args.no_dali, workers=args.workers,
                     progress=progress)
        info = manifest.splits[split]
        print(f"{split}: ok, {sum(s.samples for s in info.shards)} samples in {len(info.shards)} shards "
              f"({time.perf_counter() - start:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    run_cli(main, prog="vaedist.data.verify")
