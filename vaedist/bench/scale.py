"""vaedist at growing sample counts: sharding time and peak memory, the loader's cold start (bytes read, time
to the first batch) through the split's table and through the old path that reads the tars, and training
steps/s, side by side for each size.

    python -m vaedist.bench scale [--sizes 2000 10000] [--work DIR] [--keep] [--steps 20] [--batch-size 64]
                                  [--dedup off|report] [--json FILE]

Per size N: a COCO-like corpus of N small real JPEGs (vaedist.sample's crops of real photographs, longer side
120-160 px; 3/4 train2017, 1/4 test2017, 1/32 val2017) is written to WORK/raw-N (reused when complete),
sharded by `python -m vaedist.shard coco --dedup off` (`--dedup report`: the sharder's default, which also
writes the image hashes, in `<split>-hashes.npy`, and the duplicate report, in duplicates.json; wall time; peak RSS
of the largest process, writer or worker), and the train split's loader is started twice in a fresh process each, with every file of the shard
directory evicted from the page cache first (posix_fadvise DONTNEED, no root needed): once as sharded (the
table) and once from a hard-linked copy whose manifest lists no table (the old path, which reads every
sample's .cls/.json/JPEG header from the tars). Two byte counts, each from just before `build_loader`, then
to its first batch (which reads that batch's JPEGs and whatever the decoder prefetches):
  shard dir   what of the shard directory's files is in the page cache (mincore: vaedist.bench.pagecache),
              by kind (manifest, table, hashes, duplicates, tar, index): what start-up made the kernel read of the dataset,
              readahead included. The figure the "< 1 % of the split" goal is about.
  process     the probe process's read_bytes (/proc/self/io): everything it made the kernel fetch from
              storage, memory-map faults included, so also its Python modules and torch's / DALI's
              libraries when they are not cached (a first run after boot reads tens of MB of those).
Start-up time is from `build_loader` to the first batch (the imports of torch and DALI excluded; the page
counts between the two are not timed). Steps/s:
real training steps (vaedist.train, the CPU defaults) drawn from the loader, after a warm-up.

WORK defaults to a temporary folder removed at the end (--keep keeps it); a given --work is kept, and a later
run reuses its corpora and its shards (with their sharding figures): shard once under load, time the start-ups
and the steps on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vaedist.config import load_config
from vaedist.data import build_loader
from vaedist.errors import UserError, run_cli
from vaedist.files import write_text_atomic
from vaedist.sample import SampleSizes, build_coco
from vaedist.bench.pagecache import evict, resident_by_kind
from vaedist.shard.format import DIRECTORY_FILES, MANIFEST_NAME, is_directory_file, load_manifest, write_manifest
from vaedist.train import close, setup, train_step

CORPUS_MAX_SIDE = 160  # the crops' longer side is drawn from [120, 160] px: small JPEGs, ~7 KB at quality 75-95


def corpus_sizes(n: int) -> SampleSizes:
    """COCO's proportions: ~3/4 of the images in train2017, 1/4 in test2017 (both training data), 1/32 val."""
    val = max(1, n // 32)
    test = n // 4
    return SampleSizes(coco_train=n - test - val, coco_test=test, coco_val=val)


def build_corpus(root: Path, n: int) -> Path:
    """WORK/raw-N, reused when it already holds its N images."""
    sizes = corpus_sizes(n)
    dirs = {"train2017": sizes.coco_train, "test2017": sizes.coco_test, "val2017": sizes.coco_val}
    if all((root / d).is_dir() and sum(1 for _ in (root / d).iterdir()) == count for d, count in dirs.items()):
        return root
    shutil.rmtree(root, ignore_errors=True)
    return build_coco(root, sizes, max_side=CORPUS_MAX_SIDE, seed=n)


def run_measured(command: list[str]) -> tuple[float, int, str]:
    """(wall seconds, peak RSS in bytes of the largest process of its tree, stdout) of a command."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)  # the child's usage, its own waited-for children included
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise UserError(f"{' '.join(command[:4])} ... failed (exit {os.waitstatus_to_exitcode(status)})")
    return seconds, usage.ru_maxrss * 1024, out


def file_kind(name: str) -> str:
    """The kind of a shard directory's file (format.DIRECTORY_FILES: manifest, duplicates, tar, index, table,
    hashes), else "other"."""
    return next((kind for kind, pattern in DIRECTORY_FILES.items() if pattern.fullmatch(name)), "other")


def shard_dir_bytes(shard_dir: Path) -> dict[str, int]:
    """The shard directory's bytes in the page cache, by kind and in all ("all")."""
    by_kind = resident_by_kind(shard_dir, file_kind)
    return {**by_kind, "all": sum(by_kind.values())}


def split_bytes(shard_dir: Path) -> int:
    return sum(p.stat().st_size for p in shard_dir.iterdir() if p.is_file())


def old_path_copy(shard_dir: Path, out: Path) -> Path:
    """Hard links to the shards (the same page cache) and a manifest that lists no table: the old start-up."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for path in shard_dir.iterdir():
        if is_directory_file(path.name, ("tar", "index")):
            os.link(path, out / path.name)
    manifest = load_manifest(shard_dir)
    for split in manifest.splits.values():
        split.table = split.hashes = None
    manifest.duplicates = None  # not linked: no start-up reads it
    write_manifest(manifest, out)
    return out


def read_bytes_so_far() -> int:
    with open("/proc/self/io") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("read_bytes:"))


def probe_start(shard_dir: str, batch_size: int, steps: int) -> dict:
    """In a fresh process: the loader's cold start, then (steps > 0) training steps/s from it."""
    cfg = load_config(None, [f"data.shards={shard_dir}", "logging.wandb=false", f"train.batch_size={batch_size}"])
    before, start = read_bytes_so_far(), time.perf_counter()
    loader = build_loader(cfg.data, cfg.data.train_split, train=True, batch_size=batch_size, device="cpu")
    built, built_bytes = time.perf_counter(), read_bytes_so_far()
    built_dir = shard_dir_bytes(Path(shard_dir))  # not timed: between the two clocks
    asked = time.perf_counter()
    batches = iter(loader)
    first, _ = next(batches)
    got, first_bytes = time.perf_counter(), read_bytes_so_far()
    result = {"build_s": built - start, "first_batch_s": (built - start) + (got - asked),
              "build_bytes": built_bytes - before, "read_bytes": first_bytes - before,
              "build_dir": built_dir, "first_dir": shard_dir_bytes(Path(shard_dir)), "samples": len(loader.index)}
    if steps:
        with tempfile.TemporaryDirectory(prefix="vaedist-bench-scale-run-") as run_dir:
            cfg.run.dir = run_dir
            trainer = setup(cfg, loaders=(loader, None))
            train_step(trainer, first)
            done, start = 0, time.perf_counter()
            for x, _ in batches:
                train_step(trainer, x)
                done += 1
                if done == steps:
                    break
            result["steps_per_s"] = done / (time.perf_counter() - start)
            close(trainer)
    return result


def measure_start(shard_dir: Path, batch_size: int, steps: int) -> dict:
    evict(shard_dir)
    cached_before = shard_dir_bytes(shard_dir)["all"]
    command = [sys.executable, "-m", "vaedist.bench.scale", "--probe", str(shard_dir), "--batch-size", str(batch_size),
               "--steps", str(steps)]
    _, _, out = run_measured(command)
    result = json.loads(out.strip().splitlines()[-1])
    result["cached_before"] = cached_before
    return result


def measure_size(work: Path, n: int, batch_size: int, steps: int, say, dedup: str = "off") -> dict:
    say(f"N={n}: building the corpus")
    raw = build_corpus(work / f"raw-{n}", n)
    name = f"shards-{n}" if dedup == "off" else f"shards-{n}-{dedup}"  # + the hashes file and the duplicate report
    shards, sharding = work / name, work / f"{name}.json"
    if (shards / MANIFEST_NAME).is_file() and sharding.is_file():  # sharded by an earlier run on this --work
        shard_s, shard_rss = json.loads(sharding.read_text())
    else:
        shutil.rmtree(shards, ignore_errors=True)
        say(f"N={n}: sharding")
        shard_s, shard_rss, _ = run_measured([sys.executable, "-m", "vaedist.shard", "coco", "--root", str(raw),
                                              "--out", str(shards), "--dedup", dedup, "--no-progress"])
        write_text_atomic(sharding, json.dumps([shard_s, shard_rss]))
    manifest = load_manifest(shards)
    train = manifest.splits["train"]
    hashes_bytes = train.hashes.bytes if train.hashes else 0
    train_bytes = sum(s.bytes for s in train.shards) + train.table.bytes + hashes_bytes
    say(f"N={n}: cold start through the table")
    new = measure_start(shards, batch_size, steps)
    say(f"N={n}: cold start through the tars (old path)")
    old = measure_start(old_path_copy(shards, work / f"old-{n}"), batch_size, 0)
    return {"n": n, "dedup": dedup, "train_samples": train.samples, "train_bytes": train_bytes,
            "table_bytes": train.table.bytes, "hashes_bytes": hashes_bytes,
            "manifest_bytes": (shards / MANIFEST_NAME).stat().st_size, "shard_s": shard_s, "shard_rss": shard_rss,
            "new": new, "old": old}


LEGEND = """shard dir: bytes of the shard directory's files in the page cache (mincore), evicted before the probe
  started: what start-up read of the dataset, readahead included; % of the train split (its tars, table and
  hashes file). Split by kind, MB: table / hashes / manifest / duplicates.json / tars / .idx.
process read_bytes: /proc/self/io of the probe process, every file it read from storage: also its Python
  modules and libraries when not cached, so at least the shard dir's figure.
time: from build_loader to its end / to the first batch in the probe process (imports excluded)."""


BY_KIND = ("table", "hashes", "manifest", "duplicates", "tar", "index")  # the report's columns of byte counts


def _by_kind(counts: dict[str, int]) -> str:
    mb = 1e6
    return "/".join(f"{counts.get(kind, 0) / mb:.2f}" for kind in BY_KIND)


def report(rows: list[dict]) -> str:
    width = 36  # the by-kind byte counts are up to 6 numbers wide

    def cells(fmt):
        return "".join(f"{fmt(r):>{width}}" for r in rows)

    def share(r, n):
        return f"{n / 1e6:.2f} MB ({100 * n / r['train_bytes']:.2f} %)"

    mb = 1e6
    lines = [f"{'':<38}" + "".join(f"{'N = ' + str(r['n']):>{width}}" for r in rows),
             f"{'train split (tars + table + hashes)':<38}" + cells(lambda r: f"{r['train_samples']} / {r['train_bytes'] / mb:.0f} MB"),
             f"{'sharding wall time':<38}" + cells(lambda r: f"{r['shard_s']:.1f} s ({r['n'] / r['shard_s']:.0f} img/s)"),
             f"{'sharding peak RSS (one process)':<38}" + cells(lambda r: f"{r['shard_rss'] / mb:.0f} MB"),
             f"{'table (train)':<38}" + cells(lambda r: f"{r['table_bytes'] / mb:.2f} MB"),
             f"{'hashes file (train)':<38}" + cells(lambda r: f"{r.get('hashes_bytes', 0) / mb:.2f} MB"),
             f"{'manifest.json':<38}" + cells(lambda r: f"{r['manifest_bytes'] / 1e3:.0f} kB")]
    for path, name in (("new", "table"), ("old", "tars (old path)")):
        lines += [f"{'cold start, ' + name + ':':<38}",
                  f"{'  shard dir cached before':<38}" + cells(lambda r: f"{r[path]['cached_before'] / mb:.2f} MB")]
        for stage, dir_key, process_key, time_key in (("build_loader", "build_dir", "build_bytes", "build_s"),
                                                      ("first batch", "first_dir", "read_bytes", "first_batch_s")):
            lines += [
                f"{'  ' + stage + ': shard dir':<38}" + cells(lambda r: share(r, r[path][dir_key]["all"])),
                f"{'    table/hashes/manifest/dups/tars/.idx':<38}" + cells(lambda r: _by_kind(r[path][dir_key])),
                f"{'  ' + stage + ': process read_bytes':<38}" + cells(lambda r: share(r, r[path][process_key])),
                f"{'  ' + stage + ': time':<38}" + cells(lambda r: f"{r[path][time_key]:.2f} s"),
            ]
    if all("steps_per_s" in r["new"] for r in rows):
        lines.append(f"{'training steps/s':<38}" + cells(lambda r: f"{r['new']['steps_per_s']:.2f}"))
    return "\n".join(lines) + "\n\n" + LEGEND


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m vaedist.bench scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000], help="sample counts (default: 2000 10000)")
    parser.add_argument("--work", type=Path, default=None, help="folder for corpora and shards (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep --work (a later run reuses its corpora)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per size (default: 20; 0: none)")
    parser.add_argument("--batch-size", type=int, default=64, help="per-process batch (default: 64)")
    parser.add_argument("--dedup", choices=("off", "report"), default="off",
                        help="the sharder's --dedup (default: off; report: the sharder's default, with the hashes file "
                        "and the duplicate report)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)  # internal: one cold start, in its process
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(probe_start(args.probe, args.batch_size, args.steps)), flush=True)
        return 0
    if any(n < 64 for n in args.sizes) or args.batch_size < 1 or args.steps < 0:
        raise UserError("--sizes must be at least 64 samples each, --batch-size at least 1, --steps at least 0")
    work = args.work or Path(tempfile.mkdtemp(prefix="vaedist-bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    try:
        rows = [measure_size(work, n, args.batch_size, args.steps, say, args.dedup) for n in args.sizes]
    finally:
        if args.work is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nvaedist at scale ({time.strftime('%Y-%m-%d', time.gmtime())}; {os.cpu_count()} CPUs; "
          f"batch {args.batch_size}; sharded with --dedup {args.dedup}; cold page cache)\n" + report(rows))
    if args.json:
        write_text_atomic(args.json, json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":  # the probe's own process (measure_start)
    run_cli(lambda: main(sys.argv[1:]), prog="vaedist.bench scale")
