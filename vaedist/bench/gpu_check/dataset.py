"""Stage `data`, first command: COCO-like full-size JPEG photographs laid out as a COCO 2017 tree.

    python -m vaedist.bench.gpu_check.dataset ROOT --images N [--val-images M] [--workers W] [--shards DIR] [--json FILE]

ROOT/train2017 and ROOT/test2017 get N 640x480 photographs between them (3:1, like COCO's 118k:41k),
ROOT/val2017 gets M, cut from the embedded sample's real photographs (`vaedist.sample.build_full_size_jpegs`,
~58 KB each, 90 % quality), written by W processes. The second command of the stage shards ROOT with
`python -m vaedist.shard coco`. A tree already complete with the same sizes is reused; a tree written anew
removes --shards (the sharder leaves a complete output unchanged, which would then be stale).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from vaedist.errors import UserError
from vaedist.files import write_text_atomic
from vaedist.sample import build_full_size_jpegs

DONE = ".complete.json"


def _write_chunk(job: tuple[Path, int, int, int]) -> int:
    """One worker's share: `count` photographs named <chunk><index>.jpg directly in `folder`."""
    folder, chunk, count, seed = job
    scratch = folder / f".chunk-{chunk:03d}"
    shutil.rmtree(scratch, ignore_errors=True)
    build_full_size_jpegs(scratch, count, seed=seed)
    for path in sorted(scratch.iterdir()):  # unique names across chunks, like COCO's 12-digit ids
        path.replace(folder / f"{chunk:03d}{path.stem[-9:]}.jpg")
    scratch.rmdir()
    return count


def plan_folders(images: int, val_images: int) -> dict[str, int]:
    test = images // 4
    return {"train2017": images - test, "test2017": test, "val2017": val_images}


def build_tree(root: Path, images: int, val_images: int, workers: int, shards: Path | None = None) -> dict:
    counts = plan_folders(images, val_images)
    done = root / DONE
    if done.is_file() and json.loads(done.read_text()).get("counts") == counts:
        return {"reused": True, "counts": counts}
    shutil.rmtree(root, ignore_errors=True)
    if shards is not None:
        shutil.rmtree(shards, ignore_errors=True)
    jobs, seed = [], 1000
    for folder, count in counts.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        per_job = -(-count // max(1, workers))
        for chunk, first in enumerate(range(0, count, per_job)):
            jobs.append((root / folder, chunk, min(per_job, count - first), seed))
            seed += 1
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        written = sum(pool.map(_write_chunk, jobs))
    write_text_atomic(done, json.dumps({"counts": counts}))
    return {"reused": False, "counts": counts, "written": written}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vaedist.bench.gpu_check.dataset", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--images", type=int, required=True, help="training images (train2017 + test2017)")
    parser.add_argument("--val-images", type=int, default=512)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--shards", type=Path, default=None, help="shards of an earlier tree, removed if it is rebuilt")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.images < 2 or args.val_images < 2:
        raise UserError("--images and --val-images must be at least 2")
    start = time.monotonic()
    summary = build_tree(args.root, args.images, args.val_images, args.workers, args.shards)
    files = [p for folder in summary["counts"] for p in (args.root / folder).glob("*.jpg")]
    summary.update(root=str(args.root), seconds=round(time.monotonic() - start, 2), files=len(files),
                   mean_kb=round(sum(p.stat().st_size for p in files) / max(1, len(files)) / 1e3, 1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.json, json.dumps(summary, indent=1))
    print(f"{'reused' if summary['reused'] else 'wrote'} {len(files):,} photographs (640x480, {summary['mean_kb']} KB "
          f"on average) in {args.root} in {summary['seconds']} s")
    return 0


if __name__ == "__main__":
    from vaedist.errors import run_cli

    run_cli(main, prog="gpu_check data")
