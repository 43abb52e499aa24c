"""python -m vaedist.shard {coco,food101,folder} --root DIR --out DIR [options]: a thin wrapper over shard_dataset."""
from __future__ import annotations

import argparse
import sys

from vaedist.errors import run_cli
from vaedist.shard.images import DEFAULT_JPEG_QUALITY, DEFAULT_MAX_PIXELS
from vaedist.shard.duplicates import DEFAULT_THRESHOLD
from vaedist.shard.sharder import DEDUP_MODES, DEFAULT_SHARD_SIZE, default_workers, shard_dataset
from vaedist.shard.sources import DEFAULT_COCO_TRAIN_DIRS, SOURCES

DESCRIPTION = """\
Pack a dataset into WebDataset tar shards that DALI reads at full speed: OUT/train-000000.tar ...,
OUT/val-000000.tar ..., a DALI index (.idx) next to each tar, and OUT/manifest.json (written last).
Every image is fully decoded first; bad ones (empty, truncated, not an image, corrupt, over the pixel
limit) are listed in the manifest's "skipped" and the run still succeeds. Samples are shuffled across
shards (seeded). Killed at any moment, run the same command again: it keeps the finished shards and
writes the rest.

datasets:
  coco     ROOT/train2017, ROOT/val2017, ROOT/test2017 (official zips), or the seed's layout
           ROOT/coco_train2017/train2017, ROOT/coco_valid2017/val2017, ROOT/coco_test2017/test2017;
           split train = train2017 + test2017 (--coco-train-dirs), split val = val2017; no labels
  food101  ROOT/images/<class>/<id>.jpg and ROOT/meta/{classes.txt,train.txt,test.txt};
           split train = meta/train.txt, split val = meta/test.txt, class = line index in classes.txt
  folder   one sub-folder per class (sorted names = class indices), every file Pillow can open;
           split train only, unless --val-fraction
"""

EPILOG = """\
examples:
  python -m vaedist.shard coco    --root data/coco     --out shards/coco
  python -m vaedist.shard food101 --root data/food-101 --out shards/food101 --workers 16
  python -m vaedist.shard folder  --root my_photos     --out shards/mine --val-fraction 0.05 --max-side 256
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vaedist.shard", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=sorted(SOURCES), help="how ROOT is laid out (see above)")
    parser.add_argument("--root", required=True, help="the dataset folder as its archives unpack")
    parser.add_argument("--out", required=True, help="output folder for shards and manifest.json (created)")
    parser.add_argument("--workers", type=int, default=None,
                        help=f"decoding processes (default: all cores, here {default_workers()})")
    parser.add_argument("--shard-size", default=f"{DEFAULT_SHARD_SIZE // 10**6}MB",
                        help="target size of each tar, e.g. 128MB, 1GiB (default: %(default)s). 128 MB gives "
                        "large sequential reads and ~190 train / ~7 val shards for COCO 2017, ~29 / ~10 for "
                        "Food-101: enough for loaders that give each DDP rank and worker whole shards; DALI "
                        "gives each rank a contiguous range of samples either way")
    parser.add_argument("--max-side", type=int, default=None, metavar="PX",
                        help="store images downscaled so the longer side is at most PX (default: keep the "
                        "original size). E.g. 128 for 64x64 training: the loader then decodes 128 px JPEGs, not 640 px "
                        "ones")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle across shards (default: 0)")
    parser.add_argument("--val-fraction", type=float, default=0.0,
                        help="folder only: share of each class put in split val (default: 0, train only)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="reject images with more pixels than this before decoding them (decompression "
                        "bombs; default: %(default)s)")
    parser.add_argument("--jpeg-quality", type=int, default=DEFAULT_JPEG_QUALITY,
                        help="quality of re-encoded images (CMYK, PNG, rotated, downscaled...); clean JPEGs "
                        "are copied byte for byte (default: %(default)s)")
    parser.add_argument("--coco-train-dirs", default=",".join(DEFAULT_COCO_TRAIN_DIRS),
                        help="coco only: comma-separated folders that make split train (default: %(default)s; "
                        "older downloads name the test split test2015)")
    parser.add_argument("--dedup", choices=DEDUP_MODES, default="report",
                        help="report (default): hash every image (exact pixels + perceptual) into its .json and the "
                        "split's hashes file (<split>-hashes.npy), and report exact copies, near copies and train<->val "
                        "pairs in the summary and duplicates.json; drop: also keep one copy within a split and remove from train every image "
                        "matching a val image (val is never changed; manifest.json lists them under 'dropped'); "
                        "off: no hashes, no report")
    parser.add_argument("--dedup-threshold", type=int, default=DEFAULT_THRESHOLD, metavar="BITS",
                        help="near copies: perceptual hashes at most this many of 64 bits apart (default: "
                        "%(default)s, chosen by `python -m vaedist.bench dedup threshold`)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace shards, index files and manifest already in --out (other files stay)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar and no summary")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    shard_dataset(
        args.dataset,
        args.root,
        args.out,
        workers=args.workers,
        shard_size=args.shard_size,
        max_side=args.max_side,
        seed=args.seed,
        val_fraction=args.val_fraction,
        max_pixels=args.max_pixels,
        jpeg_quality=args.jpeg_quality,
        coco_train_dirs=tuple(d.strip() for d in args.coco_train_dirs.split(",") if d.strip()),
        dedup=args.dedup,
        dedup_threshold=args.dedup_threshold,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    return 0


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]), prog="vaedist.shard")
