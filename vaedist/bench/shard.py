"""Sharder benchmark: the sharder's images/s with N workers against a single-process decode of the same files.

    python -m vaedist.bench shard [--root DIR] [--dataset folder] [--images 400] [--workers N] [--repeats 5]
                                  [--sharder-pairs 1] [--shard-size 128MB] [--dedup report]

Rows, side by side in one run, on the same files (read once beforehand, so all measure decoding, not the disk):
  single process   prepare_image() on every file in this process, nothing written: the work itself
  sharder          shard_dataset(..., workers=N) end to end: listing, plan, worker pool, tar + index
                   writing, sha256, manifest
  ceiling          N plain processes, each decoding 1/N of the files: what this machine gives N decoders
                   right now (other processes, shared caches), so a shared machine's noise is visible
  ... --dedup off  the single-process and sharder rows again without the image hashes (--dedup, default
                   report, hashes every image): the added cost of the duplicate finder (goal: under 5 %)
  interleaved      one process again, its chunks hashed and not hashed in turn, so that both halves of each
                   comparison run within ~0.1 s of each other: the hashing's share with the least drift;
                   the same on Pillow's decode, and Pillow's decode against the row decode of clean JPEGs
                   (vaedist/shard/jpegrows.py), both --dedup off
Parallel efficiency = (sharder img/s / single-process img/s) / N; the goal is >= 80 % on all cores.
Without --root it writes --images COCO-sized (640x480) JPEG photographs, no two of them near copies (as in a
real dataset, so that the duplicate report is as small as a real one), to a temporary folder.
One-off costs are printed apart: the timed sharders are forked from this process, which has imported
imagehash and SciPy (and faiss, where the search takes its flat index) before the timed runs, so they reuse
those imports; a real run pays them once, in each worker and in the writing process. They are timed in fresh
interpreters and put against this run and against a COCO-sized one (118,287 images at the measured rate),
with the duplicate search such a run ends with, timed on as many random codes.
Each row is timed --repeats times, interleaved (the hashed and unhashed sharders back to back, in alternating
order), after an untimed warm-up run per mode; the median is kept and the spread printed. The hashing's cost is the
median of each round's hashed / unhashed ratio, wall and CPU seconds, with their range. It also
prints the CPU-time ratio (single-process CPU seconds / CPU seconds of all the sharder's processes): what
the efficiency would be on otherwise idle cores, a figure that other processes on the machine don't skew.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from PIL import Image

from vaedist.bench.dedup import synthetic_hashes
from vaedist.sample import photo_paths
from vaedist.shard import DEFAULT_SHARD_SIZE, SOURCES, load_manifest, shard_dataset
from vaedist.shard.duplicates import DEFAULT_THRESHOLD
from vaedist.shard.fingerprint import finish_hashes, pixel_pass
from vaedist.shard.hamming import multi_index_chunks, near_pairs
from vaedist.shard.images import ImageOptions, ImageRejected, configure_pillow, prepare_image
from vaedist.shard.jpegrows import pillow_decode_only, row_decoder, rows_hashed_by, xxh3_variants
from vaedist.shard.sharder import DEDUP_MODES, default_workers
from vaedist.shard.sources import SourceOptions, list_source
from vaedist.shard.workers import CHUNKSIZE


@dataclass
class Timing:
    wall: float  # seconds
    cpu: float  # CPU seconds of every process involved (this one and the sharder's workers)
    others: float  # CPU seconds other processes on the machine used meanwhile (noise, from /proc/stat)


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _machine_busy_seconds() -> float:
    """CPU seconds all processes on the machine have used (Linux /proc/stat), or 0 where unavailable."""
    try:
        fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class _Stopwatch:
    def __enter__(self) -> "_Stopwatch":
        self._cpu, self._busy, self._start = _cpu_seconds(), _machine_busy_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        wall, cpu = time.perf_counter() - self._start, _cpu_seconds() - self._cpu
        self.timing = Timing(wall, cpu, max(0.0, _machine_busy_seconds() - self._busy - cpu))


def _decode_all(files: list[Path], options: ImageOptions) -> None:
    """prepare_image on every file, and the perceptual hashes once per CHUNKSIZE images, as the workers do."""
    configure_pillow()
    for start in range(0, len(files), CHUNKSIZE):
        _decode_chunk(files[start : start + CHUNKSIZE], options)


def time_single_process(files: list[Path], options: ImageOptions) -> Timing:
    with _Stopwatch() as watch:
        _decode_all(files, options)
    return watch.timing


def _decode_chunk(chunk: list[Path], options: ImageOptions) -> None:
    pending = []
    for path in chunk:
        try:
            pending.append(prepare_image(path, options).hashes)
        except ImageRejected:
            pass
    finish_hashes([p for p in pending if p is not None])


def _decode_chunk_with_pillow(chunk: list[Path], options: ImageOptions) -> None:
    with pillow_decode_only():
        _decode_chunk(chunk, options)


def _decode_chunk_rows_hashed_by(chunk: list[Path], options: ImageOptions, variant: str) -> None:
    with rows_hashed_by(variant):
        _decode_chunk(chunk, options)


def share_interleaved(files: list[Path], measured: Callable[[list[Path]], None],
                      baseline: Callable[[list[Path]], None], rounds: int) -> list[float]:
    """The added share of `measured` over `baseline` in one process, from chunks decoded each way in turn.

    The rows' ratios compare runs seconds apart, and this host's speed drifts by ±15 % and more between them;
    here the CHUNKSIZE-image chunks of one pass alternate between the two (~0.1 s each), and the next pass
    swaps them, so that each pair of passes decodes every file both ways within ~0.1 s of each other.
    Returns, per pair of passes, measured seconds / baseline seconds - 1."""
    configure_pillow()
    chunks = [files[start : start + CHUNKSIZE] for start in range(0, len(files), CHUNKSIZE)]
    shares = []
    for _ in range(rounds):
        seconds = {True: 0.0, False: 0.0}
        for swap in (0, 1):
            for n, chunk in enumerate(chunks):
                is_measured = (n + swap) % 2 == 0
                start = time.perf_counter()
                (measured if is_measured else baseline)(chunk)
                seconds[is_measured] += time.perf_counter() - start
        shares.append(seconds[True] / seconds[False] - 1)
    return shares


def _share_line(what: str, shares: list[float]) -> str:
    shares = sorted(shares)
    return (f"one process, chunks in turn ({len(shares)} pairs of passes): {what} "
            f"{statistics.median(shares):+.1%} ({shares[0]:+.1%} to {shares[-1]:+.1%})")


def time_plain_processes(files: list[Path], options: ImageOptions, workers: int) -> Timing:
    """The machine's own ceiling: N processes each decoding 1/N of the files, nothing else (no sharder)."""
    with _Stopwatch() as watch:
        processes = [multiprocessing.Process(target=_decode_all, args=(files[i::workers], options))
                     for i in range(workers)]
        for process in processes:
            process.start()
        for process in processes:
            process.join()
    return watch.timing


def import_seconds(modules: str, already: str = "numpy") -> float:
    """Seconds a fresh interpreter takes to import `modules` with `already` imported (the sharder's writing
    process imports numpy for its tables, and its forked workers inherit it): a run's one-off cost."""
    code = f"import time, {already}; t = time.perf_counter(); import {modules}; print(time.perf_counter() - t)"
    runs = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
            for _ in range(3)]
    return min(runs)


# The tiles' orientations: a flipped or rotated copy of a crop is far from it to a perceptual hash
_TILE_TRANSPOSES = [None, Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.ROTATE_180]


def build_distinct_photographs(out: Path, count: int, size: tuple[int, int] = (640, 480), seed: int = 2) -> Path:
    """`count` COCO-sized JPEG photographs that are no near copies of each other: each a 2x2 mosaic of crops
    of 4 of the sample's 14 photographs, each tile flipped or not. `vaedist.sample.build_full_size_jpegs`
    crops 6 photographs whole, so ~2/3 of 1,000 of its images have a near copy among them; the duplicate
    report of such a set (hundreds of pairs in manifest.json and the summary) is not what a real dataset
    costs, and it made the hashed sharder look slower than hashing makes it. Mosaics: no pair within 8 bits
    in 1,000 (closest 12 bits apart in 300; 2026-12-01)."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    photos = []
    for path in photo_paths():
        with Image.open(path) as src:
            photos.append(src.convert("RGB"))
    tile_w, tile_h = size[0] // 2, size[1] // 2
    for i in range(count):
        img = Image.new("RGB", size)
        for n, photo in enumerate(rng.sample(photos, 4)):
            w, h = photo.size
            cw, ch = rng.randint(w // 4, w // 2), rng.randint(h // 4, h // 2)
            x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
            tile = photo.crop((x0, y0, x0 + cw, y0 + ch)).resize((tile_w, tile_h), Image.Resampling.BICUBIC)
            transpose = rng.choice(_TILE_TRANSPOSES)
            img.paste(tile if transpose is None else tile.transpose(transpose), ((n % 2) * tile_w, (n // 2) * tile_h))
        img.save(out / f"{i:012d}.jpg", quality=90)
    return out


def _warm_up(files: list[Path], folder: Path, workers: int, max_side: int | None, dedup_modes: list[str]) -> None:
    """An untimed sharder run per mode on CHUNKSIZE of the files: the code paths each mode imports lazily
    (once per process) are imported here, not in the first timed round of one row."""
    folder.mkdir()
    for n, path in enumerate(files[:CHUNKSIZE]):
        shutil.copyfile(path, folder / f"{n:02d}{path.suffix}")  # a copy: --root may be on another file system
    for dedup in dedup_modes:
        shutil.rmtree(folder.with_suffix(".out"), ignore_errors=True)
        shard_dataset("folder", folder, folder.with_suffix(".out"), workers=workers, max_side=max_side,
                      progress=False, overwrite=True, dedup=dedup)
    shutil.rmtree(folder.with_suffix(".out"))


COCO_TRAIN_IMAGES = 118_287


def time_sharder(dataset: str, root: Path, workers: int, max_side: int | None, out: Path, shard_size: str,
                 dedup: str = "report") -> Timing:
    # The previous run's output is removed before the clock starts: freeing ~90 MB of page cache (~20-30 ms
    # here) is not sharding, and --overwrite would otherwise do it inside the timed run.
    shutil.rmtree(out, ignore_errors=True)
    # the pool's workers are joined before shard_dataset returns, so their CPU time is in RUSAGE_CHILDREN
    with _Stopwatch() as watch:
        shard_dataset(dataset, root, out, workers=workers, max_side=max_side, progress=False, overwrite=True,
                      shard_size=shard_size, dedup=dedup)
    return watch.timing


def _abba(run: int, pair: list) -> list:
    return pair if run % 2 == 0 else pair[::-1]


def median_timing(timings: list[Timing]) -> Timing:
    """The run of median wall time (its own CPU and noise figures with it, not medians of each)."""
    return sorted(timings, key=lambda t: t.wall)[(len(timings) - 1) // 2]


def one_off_line(images: int, off_wall: float) -> str:
    """The hashing's costs that the rows leave out, against this run and a COCO-sized one: the imports (once per
    process), and the duplicate search at the end, which grows faster than the images (timed here on as many
    random codes as COCO's train split; real hashes cluster more, which fills a multi-index's buckets more)."""
    # imagehash.phash imports scipy.fftpack on its first call; hamming.py imports faiss where it takes the flat index
    workers_import = import_seconds("imagehash, scipy.fftpack")
    flat = multi_index_chunks(COCO_TRAIN_IMAGES, DEFAULT_THRESHOLD) is None
    faiss_import = import_seconds("faiss") if flat else 0.0
    codes, _ = synthetic_hashes(COCO_TRAIN_IMAGES, 0, DEFAULT_THRESHOLD)
    started = time.perf_counter()
    near_pairs(codes, DEFAULT_THRESHOLD)
    search = time.perf_counter() - started
    one_off = workers_import + faiss_import  # the workers import at once, in parallel: once in wall time
    coco_wall = COCO_TRAIN_IMAGES / (images / off_wall)
    return (f"one-off, not in the rows above: imagehash + SciPy import {workers_import:.2f} s in each worker"
            + (f", faiss {faiss_import:.2f} s in the writing process" if flat else "")
            + f": +{one_off / off_wall:.0%} on this run's {images} images; on a COCO-sized run ({COCO_TRAIN_IMAGES} "
            f"images, {coco_wall:.0f} s at this rate) they and the duplicate search at its end "
            f"({search:.2f} s for {COCO_TRAIN_IMAGES} random codes, "
            f"{'faiss flat index' if flat else 'multi-index hashing'}) add +{(one_off + search) / coco_wall:.2%}; "
            "python -m vaedist.bench dedup index for larger sets")


def dedup_cost_line(dedup: str, hashed: list[Timing], off: list[Timing], single: list[Timing],
                    single_off: list[Timing], images: int) -> str:
    """The added cost of hashing: the median over rounds of each round's hashed / unhashed ratio (the two
    sharders of a round ran back to back), with the range of those ratios: the figure and its noise."""
    wall = sorted(h.wall / o.wall - 1 for h, o in zip(hashed, off))
    cpu = sorted(h.cpu / o.cpu - 1 for h, o in zip(hashed, off))
    one = sorted(h.wall / o.wall - 1 for h, o in zip(single, single_off))
    per_image = statistics.median(h.wall - o.wall for h, o in zip(single, single_off)) / images * 1e3
    return (f"--dedup {dedup} adds {statistics.median(wall):+.1%} to the sharder's time (rounds: {wall[0]:+.1%} to "
            f"{wall[-1]:+.1%}), {statistics.median(cpu):+.1%} to its CPU seconds ({cpu[0]:+.1%} to {cpu[-1]:+.1%}); "
            f"{statistics.median(one):+.1%} to one process decoding ({one[0]:+.1%} to {one[-1]:+.1%}, "
            f"{per_image:.3f} ms per image); goal < 5 %")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vaedist.bench shard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, help="dataset root (default: a temporary folder of 640x480 JPEGs)")
    parser.add_argument("--dataset", choices=sorted(SOURCES), default="folder", help="layout of --root")
    parser.add_argument("--images", type=int, default=400, help="JPEGs to write when no --root (default: 400)")
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help=f"sharder worker processes (default: all cores, here {default_workers()})")
    parser.add_argument("--max-side", type=int, default=None, help="passed to both rows")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timings per row, interleaved; the median is kept, the spread printed (default: 5)")
    parser.add_argument("--sharder-pairs", type=int, default=1,
                        help="sharder runs per row and round (default: 1); the sharder's runs spread by ~±15 %% on "
                        "a shared VM, so resolving a few %% of hashing cost takes dozens of pairs")
    parser.add_argument("--shard-size", default=f"{DEFAULT_SHARD_SIZE // 10**6}MB",
                        help="the sharder's --shard-size (default: %(default)s: one shard for a few thousand images; "
                        "smaller gives many shards)")
    parser.add_argument("--dedup", choices=DEDUP_MODES, default="report",
                        help="the sharder's --dedup (default: %(default)s); unless off, the rows are also timed "
                        "with --dedup off, for the cost of hashing")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="vaedist-bench-shard-") as tmp:
        scratch = Path(tmp)
        root = args.root
        if root is None:
            print(f"writing {args.images} 640x480 JPEG photographs to {scratch / 'photos'} ...", flush=True)
            root = build_distinct_photographs(scratch / "photos", args.images)
        listing = list_source(args.dataset, root, SourceOptions())
        files = [listing.root / s.path for s in listing.samples]  # list_source refused an empty root
        for path in files:  # page cache: both rows then measure decoding, not the disk
            path.read_bytes()
        hashed = args.dedup != "off"
        options = ImageOptions(max_side=args.max_side, hashes=hashed)
        plain_options = ImageOptions(max_side=args.max_side)
        # Once per process, the first hash imports imagehash and SciPy (~0.3 s), a duplicate search on faiss's
        # flat index faiss and its OpenMP threads, and each mode's first sharder run imports its code paths: the
        # timed sharders are forked from here and reuse them (the imports' one-off cost is printed apart), so
        # they are paid here, not by the first timed round of one row.
        _decode_all(files[:1], options)
        modes = [args.dedup, "off"] if hashed else [args.dedup]
        _warm_up(files, scratch / "warm-up", args.workers, args.max_side, modes)
        single, plain, sharder, single_off, sharder_off = [], [], [], [], []
        for run in range(args.repeats):  # interleaved, so that drift and bursts of noise hit every row alike
            # with and without hashing back to back, in alternating order (ABBA): each round's ratio compares
            # two runs a second apart, whichever of them a drift favours
            for rows, row_options in _abba(run, [(single, options), (single_off, plain_options)][: 1 + hashed]):
                rows.append(time_single_process(files, row_options))
            plain.append(time_plain_processes(files, options, args.workers))
            for pair in range(args.sharder_pairs):
                for rows, dedup in _abba(run * args.sharder_pairs + pair,
                                         [(sharder, args.dedup), (sharder_off, "off")][: 1 + hashed]):
                    rows.append(time_sharder(args.dataset, root, args.workers, args.max_side,
                                             scratch / ("shards" if dedup != "off" else "shards_off"),
                                             args.shard_size, dedup))
        # with --max-side every larger JPEG is re-encoded, from Pillow's image: the row decode is not used
        row_decode_used = row_decoder() and not args.max_side
        with_hashes, without = partial(_decode_chunk, options=options), partial(_decode_chunk, options=plain_options)
        interleaved = share_interleaved(files, with_hashes, without, args.repeats) if hashed else []
        # the same on Pillow's decode (what an install without the compiled part does), and the row decode's
        # own gain: --dedup off, rows against Pillow's decode
        pillow_with_hashes = partial(_decode_chunk_with_pillow, options=options)
        pillow_without = partial(_decode_chunk_with_pillow, options=plain_options)
        interleaved_pillow = share_interleaved(files, pillow_with_hashes, pillow_without,
                                               args.repeats) if hashed and row_decode_used else []
        rows_gain = share_interleaved(files, without, pillow_without, args.repeats) if row_decode_used else []
        # where this CPU runs a wider xxh3 than the rows use (AVX-512): the rows hashed by it instead, the choice
        # vaedist/shard/_pixelpass.c made by measuring, measured again here
        variants = xxh3_variants() if hashed and row_decode_used else None
        wider = variants is not None and variants[0] != variants[1]
        rows_wider = share_interleaved(
            files, partial(_decode_chunk_rows_hashed_by, options=options, variant=variants[0]), with_hashes,
            args.repeats) if wider else []
        shards = sum(len(split.shards) for split in load_manifest(scratch / "shards").splits.values())
    # Each run's efficiency against the single-process row of the same round: the spread shows the noise.
    print("sharder per run: " + ", ".join(
        f"{s.wall / t.wall / args.workers:.0%} ({t.wall:.3f} s, {t.cpu:.2f} CPU s, others {t.others / t.wall:.1f} cores)"
        for s, t in zip(single, sharder[:: args.sharder_pairs])))
    n, workers = len(files), args.workers
    mid_single, mid_sharder, mid_plain = median_timing(single), median_timing(sharder), median_timing(plain)
    speedup = mid_single.wall / mid_sharder.wall
    print(f"\n{n} images from {root}" + (f", --max-side {args.max_side}" if args.max_side else "")
          + f", --shard-size {args.shard_size}: {shards} shards; medians of {args.repeats} runs per row"
          + (f", {args.repeats * args.sharder_pairs} per sharder row" if args.sharder_pairs > 1 else ""))
    print(f"{'row':<30}{'img/s':>9}{'seconds':>9}{'CPU s':>8}   spread (wall)")
    rows = [("single-process decode", single), (f"sharder, {workers} workers", sharder),
            (f"ceiling: {workers} plain decoders", plain)]
    if hashed:
        rows += [("single-process, --dedup off", single_off), ("sharder, --dedup off", sharder_off)]
    for name, timings in rows:
        mid = median_timing(timings)
        print(f"{name:<30}{n / mid.wall:>9.1f}{mid.wall:>9.2f}{mid.cpu:>8.2f}   "
              f"{min(t.wall for t in timings):.3f}-{max(t.wall for t in timings):.3f} s")
    if hashed:
        print(dedup_cost_line(args.dedup, sharder, sharder_off, single, single_off, n))
        print(_share_line("hashing adds", interleaved) + "; the least drift-prone of these figures")
        if interleaved_pillow:
            print(_share_line("on Pillow's decode instead (not the row decode), hashing adds", interleaved_pillow))
        print("the pixels hashed " + (
              f"as each row is decoded, by vaedist.shard._pixelpass (C; xxh3's {variants[1]} code, "
              f"{variants[0]} for an image in memory)" if row_decode_used
              else "in one pass by vaedist.shard._pixelpass (C)" if pixel_pass() == "C"
              else "by xxhash and numpy: vaedist.shard._pixelpass is not built (no C compiler at install), ~2x the cost"))
        print(one_off_line(n, median_timing(sharder_off).wall))
    if rows_gain:
        print(_share_line("--dedup off, the row decode of clean JPEGs (vaedist/shard/jpegrows.py) against "
                          "Pillow's decode:", rows_gain) + " in time")
    if rows_wider:
        print(_share_line(f"the rows hashed by xxh3's {variants[0]} code instead of its {variants[1]} code:",
                          rows_wider) + " in time")
    print(f"speed-up {speedup:.2f}x on {workers} workers: parallel efficiency {speedup / workers:.0%} (goal >= 80%); "
          f"this machine's ceiling (plain decoders, no sharding) {mid_single.wall / mid_plain.wall / workers:.0%}")
    # Other processes steal cores from the workers but not from the single-process row; the CPU-time ratio
    # (work of the single process / work of all the sharder's processes) is the efficiency on idle cores.
    print(f"CPU-time efficiency {mid_single.cpu / mid_sharder.cpu:.0%} (the sharder's extra work: tar members, "
          f"index, sha256, IPC)")
    # Other processes take cores from the sharder's workers, not from the single process (one core of many):
    # say how much, so that a low wall-clock figure on a shared machine is read for what it is.
    cores = default_workers()
    print(f"other processes meanwhile: {mid_single.others / mid_single.wall:.1f} of {cores} cores busy during the "
          f"single-process row, {mid_sharder.others / mid_sharder.wall:.1f} during the sharder row"
          + ("  <- shared machine: the wall-clock efficiency is understated"
             if mid_sharder.others / mid_sharder.wall > 0.1 * cores else ""))
    return 0
