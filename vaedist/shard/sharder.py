"""`shard_dataset`: list the inputs, plan the shards, decode in parallel, write tars + index, manifest last.

    listing = SOURCES[dataset](root)           sources.py   (path, split, label) per image, sorted
    plan    = plan_shards(listing, seed, ...)  plan.py      seeded global shuffle, cut into shards
    for each unfinished shard:                 state.py     finished shards of a killed run are kept
        worker processes: pack_in_parallel()   workers.py   chunks of CHUNKSIZE images -> part files:
                            prepare_image()    images.py      full decode, checks, clean JPEG bytes
                            encode_members()   writer.py      their tar members (format.py: names, order)
        this process:     ShardWriter          writer.py    parts -> tar + DALI index + sha256, temporary names
        a thread:         publish_shard()      writer.py    fsync, rename; then the done file (state.py)
    write_table(...) per split                 table.py     keys, shard/position, the loader's columns: from the
    write_hashes(...) per split                table.py       done files; the image hashes, in a file of their own
    find_duplicates(...)                       duplicates.py  exact groups, near pairs, train<->val pairs:
                                                              duplicates.json (format.write_duplicates)
    write_manifest(...)                        format.py    the output is complete once this exists

--dedup (default report): the workers hash each image they decode (fingerprint.py); the hashes go in its
.json member and in the split's hashes file (not its table: every start-up reads the table), and the
duplicates found among them in duplicates.json (not the manifest, for the same reason) and the summary.
--dedup drop also removes images while the shards are written, which is the only moment it can: the plan
is fixed before any image is decoded (it is what makes a resume exact), and a hashing pass before it would
decode everything twice. So val's shards are written first, whole, and then each train image is dropped if
it matches an image kept before it (any val image, or an earlier train image, in plan order): a decision
made from hashes already known, in an order that does not depend on timing, so that a resumed run, which
first replays the kept hashes of its finished shards (their done records), decides exactly as an
uninterrupted one. The cost: a shard that lost images is that much under --shard-size, and the writing
process compares each train image with every kept one (hamming.GrowingIndex, one thread; see DropFilter).

This process is the only serial step, so it does next to nothing per image: workers decode, check and
re-encode the images and encode their tar members into part files (CHUNKSIZE images each); this process
appends the parts to the shard, hashing them on the way (in a thread of its own from
HASH_THREAD_FROM_WORKERS workers on), and shifts their index entries; a thread of this
process syncs and renames each finished shard, so that waiting for the disk stalls neither this
process's writing nor a decoding worker. While the workers decode, this process sleeps in a blocking
wait for the next chunk in plan order (no polling: on N cores, a busy writer would take a decoder's CPU).
"""
from __future__ import annotations

import errno
import os
import re
import time
from collections import Counter, deque
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Sequence

from tqdm import tqdm

from vaedist import __version__
from vaedist.errors import UserError
from vaedist.shard.fingerprint import pixel_pass
from vaedist.shard.images import DEFAULT_JPEG_QUALITY, DEFAULT_MAX_PIXELS, ImageOptions
from vaedist.shard.duplicates import (DEFAULT_THRESHOLD, REPORT_LISTED, DropFilter, HashSet, duplicates_summary,
                                      find_duplicates)
from vaedist.shard.format import (IMAGE_EXT, PERCEPTUAL_HASH_BITS, Manifest, ShardInfo, SplitInfo, load_manifest,
                                  manifest_path, member_entry, write_duplicates, write_manifest)
from vaedist.shard.plan import PlannedShard, listing_fingerprint, plan_shards
from vaedist.shard.sources import (DEFAULT_COCO_TRAIN_DIRS, SourceListing, SourceOptions, hold_out_val, list_source,
                                   sample_keys)
from vaedist.shard.state import OutputDir
from vaedist.shard.table import TableRows, build_hashes, build_table, loader_columns, write_hashes, write_table
from vaedist.shard.workers import (PackedChunk, chunk_tasks, chunks_of, measure_bytes_ratio, pack_in_parallel,
                                   rejected_inputs, worker_pool)
from vaedist.shard.writer import ClosedShard, ShardWriter, publish_shard, sync_directory

# 128 MB (decimal): large sequential reads (each shard is read front to back), and enough shards for
# readers that split by file: COCO 2017 (train2017+test2017 ~24 GB, val2017 ~0.8 GB) gives ~190 train and
# ~7 val shards, Food-101 (~3.7 GB train, ~1.3 GB test) ~29 and ~10. DALI splits a split's samples into
# contiguous ranges per DDP rank (shard_id/num_shards), so for DALI the count only bounds how much a rank
# reads outside its own range; a killed run loses at most one shard of work per run.
DEFAULT_SHARD_SIZE = 128_000_000
# From this many workers on, the writing process hashes in a thread of its own (ShardWriter(hash_in_thread)).
# Inline, its serial work is ~80-110 us per 58 KB image (read, sha256, write, index, IPC: ~9-12k img/s at
# most): below ~8 workers at ~1k img/s each that is slack, and inline costs the least CPU (4 % faster end to
# end than the thread on 2 cores); with more workers it would cap the run, so the kernel copies and a
# thread hashes (reasoned from the per-image costs measured here; not measured on many cores).
HASH_THREAD_FROM_WORKERS = 8
# --dedup: off (no hashes, no report), report (hash, find, report: the default), drop (and remove from train)
DEDUP_MODES = ("off", "report", "drop")


@dataclass(frozen=True)
class ShardOptions:
    """Everything that shapes the output (and so must match for a resume); not workers or progress."""

    shard_size: int
    max_side: int | None
    seed: int
    val_fraction: float
    max_pixels: int
    jpeg_quality: int
    coco_train_dirs: tuple[str, ...]
    dedup: str = "report"
    dedup_threshold: int = DEFAULT_THRESHOLD

    def to_json(self) -> dict:
        return {"shard_size": self.shard_size, "max_side": self.max_side, "seed": self.seed,
                "val_fraction": self.val_fraction, "max_pixels": self.max_pixels,
                "jpeg_quality": self.jpeg_quality, "coco_train_dirs": list(self.coco_train_dirs),
                "dedup": self.dedup, "dedup_threshold": self.dedup_threshold}

    @property
    def hashed(self) -> bool:
        return self.dedup != "off"

    @property
    def image(self) -> ImageOptions:
        return ImageOptions(max_pixels=self.max_pixels, max_side=self.max_side, jpeg_quality=self.jpeg_quality,
                            hashes=self.hashed)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30,
          "ti": 2**40}


def parse_size(value: str | int) -> int:
    """'128MB' -> 128_000_000, '1GiB' -> 2**30, 4096 -> 4096."""
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(str(value))
        unit = (match.group(2) or "").lower().rstrip("b") if match else None
        if not match or unit not in _UNITS:
            raise UserError(f"--shard-size '{value}' is not a size: use e.g. 128MB, 1GiB or a number of bytes")
        size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise UserError(f"--shard-size must be positive, got {value}")
    return size


def default_workers() -> int:
    """All the cores this process may run on (a container's CPU set, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def shard_dataset(
    dataset: str,
    root: str | Path,
    out: str | Path,
    *,
    workers: int | None = None,
    shard_size: str | int = DEFAULT_SHARD_SIZE,
    max_side: int | None = None,
    seed: int = 0,
    val_fraction: float = 0.0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    overwrite: bool = False,
    progress: bool = True,
    coco_train_dirs: Sequence[str] = DEFAULT_COCO_TRAIN_DIRS,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    dedup: str = "report",
    dedup_threshold: int = DEFAULT_THRESHOLD,
) -> Manifest:
    """Pack `root` (laid out as `dataset`: coco, food101 or folder) into WebDataset shards in `out`.

    Returns the manifest. Raises `UserError` (one line) for a wrong root or options, or when no valid image
    was found; bad images are not errors, they are listed in the manifest's `skipped` (and with
    dedup="drop", removed duplicates in its `dropped`).
    """
    workers = default_workers() if workers is None else workers
    options = _check_options(dataset, shard_size, max_side, seed, val_fraction, max_pixels, jpeg_quality, coco_train_dirs,
                             workers, dedup, dedup_threshold)
    listing = list_source(dataset, root, SourceOptions(tuple(coco_train_dirs)))
    output = OutputDir.create(Path(out).expanduser().resolve())
    with output.exclusive():
        try:
            return _shard(dataset, listing, output, options, workers, overwrite, progress)
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            raise UserError(f"cannot write to '{output.path}': {err.strerror} ({err.filename or 'shard'}); fix "
                            "that and run the same command again: finished shards are kept") from None


def _shard(dataset: str, listing: SourceListing, output: OutputDir, options: ShardOptions, workers: int,
           overwrite: bool, progress: bool) -> Manifest:
    out = output.path
    say = print if progress else (lambda *a, **k: None)
    if overwrite:
        output.remove_everything_we_wrote()
    elif manifest_path(out).is_file():
        return _already_complete(output, dataset, listing, options, say)
    output.sweep_temporaries()

    fingerprint = listing_fingerprint(dataset, listing, options.to_json())
    state = output.read_state()
    if state is not None and state["fingerprint"] != fingerprint:
        raise UserError(f"'{out}' holds an unfinished run with other inputs or options: re-run it with the same "
                        "arguments, or pass --overwrite to start again")
    if state is None and output.shard_files():
        raise UserError(f"'{out}' already holds shard files that this run did not plan: "
                        "pass --overwrite to replace them, or choose another --out")

    if options.hashed and pixel_pass() != "C":
        say("note: vaedist's compiled hashing pass is not built (no C compiler when vaedist was installed): hashing "
            "with numpy, the same hashes at ~2x the cost; reinstall with a compiler (pip install -e .) for it")
    with worker_pool(workers) as pool:
        if state is not None and options.val_fraction and "rejected" not in state:
            state = None  # started by a version that split before validating: plan afresh
        if state is None:
            rejected = _validate_for_val_split(pool, listing, options, progress) if options.val_fraction else None
            if rejected is not None:
                listing = hold_out_val(listing, rejected, options.val_fraction, options.seed)
            bytes_ratio = measure_bytes_ratio(pool, listing, options.seed, options.image)
            output.write_state(fingerprint, bytes_ratio, rejected)  # before any shard: it fixes the plan for re-runs
        else:
            if options.val_fraction:
                listing = hold_out_val(listing, state["rejected"], options.val_fraction, options.seed)
            bytes_ratio = state["bytes_ratio"]
            say(f"resuming the unfinished run in {out}")
        keys = sample_keys([s.path for s in listing.samples])
        plan = plan_shards(listing, options.seed, options.shard_size, bytes_ratio, options.hashed)
        records = {shard.name: output.finished(shard) for shard in plan}
        order = _write_order(plan, options.dedup)
        todo = [shard for shard in order if records[shard.name] is None]
        for shard in todo:
            output.discard_unfinished(shard)
        drop = _replayed_drop_filter(listing, keys, order, records, options) if options.dedup == "drop" else None
        started = time.perf_counter()
        done_before = sum(len(s.samples) for s in plan if records[s.name] is not None)
        with tqdm(total=len(listing.samples), initial=done_before, unit="img", disable=not progress,
                  desc=f"shard {dataset}", smoothing=0.05) as bar:
            _write_shards(pool, workers, output, listing, keys, todo, options.image, records, bar, drop)
        elapsed = time.perf_counter() - started

    manifest = _manifest(dataset, listing, options, plan, records)
    total = sum(split.samples for split in manifest.splits.values())
    if total == 0:
        output.remove_everything_we_wrote()
        raise UserError(f"no valid image found under '{listing.root}': {_reasons_summary(manifest.skipped)}")
    report = _add_tables_and_duplicates(manifest, out, listing, keys, plan, records, options)
    write_manifest(manifest, out)
    sync_directory(out)
    output.remove_progress_files()
    written = sum(len(s.samples) for s in todo)
    say(_summary(manifest, out, written, elapsed, report))
    return manifest


def _validate_for_val_split(pool: ProcessPoolExecutor, listing: SourceListing, options: ShardOptions,
                            progress: bool) -> dict[str, str]:
    """--val-fraction holds out VALID images only, so every input is decoded once before the plan (and again
    when it is packed: a folder dataset with --val-fraction takes about twice the decoding time)."""
    with tqdm(total=len(listing.samples), unit="img", disable=not progress, desc="validate for --val-fraction",
              smoothing=0.05) as bar:
        return rejected_inputs(pool, listing, options.image, bar.update)


# --- options and a complete output -------------------------------------------------------------------------


def _check_options(dataset, shard_size, max_side, seed, val_fraction, max_pixels, jpeg_quality, coco_train_dirs,
                   workers, dedup, dedup_threshold) -> ShardOptions:
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if max_side is not None and max_side < 1:
        raise UserError(f"--max-side must be a positive number of pixels, got {max_side}")
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if val_fraction and dataset != "folder":
        raise UserError(f"--val-fraction is for the folder layout; {dataset} has its own validation split (drop the option)")
    if max_pixels < 1:
        raise UserError(f"--max-pixels must be positive, got {max_pixels}")
    if not 1 <= jpeg_quality <= 100:
        raise UserError(f"--jpeg-quality must be in 1..100, got {jpeg_quality}")
    if isinstance(coco_train_dirs, str) or not coco_train_dirs:
        raise UserError("--coco-train-dirs must name at least one folder, e.g. train2017,test2017")
    if dedup not in DEDUP_MODES:
        raise UserError(f"--dedup must be one of {', '.join(DEDUP_MODES)}, got {dedup!r}")
    if not 0 <= dedup_threshold < PERCEPTUAL_HASH_BITS:
        raise UserError(f"--dedup-threshold must be in 0..{PERCEPTUAL_HASH_BITS - 1} bits, got {dedup_threshold}")
    return ShardOptions(parse_size(shard_size), max_side, int(seed), float(val_fraction), int(max_pixels),
                        int(jpeg_quality), tuple(coco_train_dirs), dedup, int(dedup_threshold))


def _already_complete(output: OutputDir, dataset: str, listing: SourceListing, options: ShardOptions,
                      say) -> Manifest:
    """A complete output: same run -> say so and change nothing; another run -> refuse without --overwrite."""
    manifest = load_manifest(output.path)
    same = (manifest.dataset == dataset and manifest.root == str(listing.root)
            and manifest.options == options.to_json())  # to_json(): JSON types only (lists, not tuples)
    if not same:
        raise UserError(f"'{output.path}' already holds shards of another run ({manifest.dataset} from "
                        f"{manifest.root}, options {manifest.options}): pass --overwrite to replace them, "
                        "or choose another --out")
    output.remove_progress_files()  # a run killed between the manifest and this clean-up
    total = sum(s.samples for s in manifest.splits.values())
    say(f"{output.path} is already complete ({total} samples, {len(manifest.skipped)} skipped); nothing to do "
        "(--overwrite rewrites it)")
    return manifest


# --- writing ------------------------------------------------------------------------------------------------


def _write_order(plan: list[PlannedShard], dedup: str) -> list[PlannedShard]:
    """The plan's order, except that --dedup drop writes val first: train images are compared with it."""
    if dedup != "drop":
        return list(plan)
    return [s for s in plan if s.split == "val"] + [s for s in plan if s.split != "val"]


def _label_index(listing: SourceListing, index: int) -> int:
    label = listing.samples[index].label
    return -1 if label is None else label


def _label(listing: SourceListing, index: int) -> str:
    """How a drop reason names the image it matched: `val val2017/000000000139.jpg`."""
    sample = listing.samples[index]
    return f"{sample.split} {sample.path}"


def _replayed_drop_filter(listing: SourceListing, keys: list[str], order: list[PlannedShard],
                          records: dict[str, dict | None], options: ShardOptions) -> DropFilter:
    """A DropFilter that has seen the kept images of the finished shards, in write order (a resumed run)."""
    drop = DropFilter(options.dedup_threshold)
    index_of = {key: i for i, key in enumerate(keys)}
    for shard in order:
        record = records[shard.name]
        if record is not None:
            rows = TableRows.from_record(record["rows"])
            drop.keep([(hashes, _label(listing, index_of[key])) for key, hashes in zip(rows.keys, rows.hashes or [])])
    return drop


def _write_shards(pool: ProcessPoolExecutor, workers: int, output: OutputDir, listing: SourceListing,
                  keys: list[str], todo: list[PlannedShard], options: ImageOptions, records: dict[str, dict],
                  bar: tqdm, drop: DropFilter | None) -> None:
    """Workers pack chunks; here they are appended shard by shard; a thread publishes each finished shard."""
    finishing: deque[tuple] = deque()  # written shards the publisher thread is syncing and renaming
    tasks = chunk_tasks(output, listing, keys, todo)
    hash_in_thread = workers >= HASH_THREAD_FROM_WORKERS
    # fsync only waits for the disk (it releases the GIL): in a thread, not in a worker process, where it
    # would idle one decoder for as long as the disk takes.
    with ThreadPoolExecutor(1, thread_name_prefix="vaedist-publish") as publisher, \
            closing(pack_in_parallel(pool, workers, tasks, options)) as packed:
        for shard in todo:
            closed, outcome = _write_shard(shard, output, listing, keys, packed, bar, hash_in_thread, drop)
            published = publisher.submit(publish_shard, closed) if closed else None
            finishing.append((shard, outcome, published))
            while finishing and (finishing[0][2] is None or finishing[0][2].done()):
                _finish_shard(output, records, *finishing.popleft())
        while finishing:
            _finish_shard(output, records, *finishing.popleft())


def _write_shard(shard: PlannedShard, output: OutputDir, listing: SourceListing, keys: list[str],
                 packed: Iterator[PackedChunk], bar: tqdm, hash_in_thread: bool, drop: DropFilter | None
                 ) -> tuple[ClosedShard | None, dict]:
    """Append the shard's packed chunks (parts) in order; None when every one of its inputs was rejected
    (or dropped). The outcome: the inputs rejected and dropped, the table rows of the samples written."""
    skipped: list[dict] = []
    dropped: list[dict] = []
    row_keys: list[str] = []
    row_hashes: list | None = []
    row_sizes: list[tuple[int, int, int, int]] = []
    row_labels: list[int] = []
    with ShardWriter(output.path / shard.name, hash_in_thread) as writer:
        for _ in range(chunks_of(shard)):
            chunk = next(packed)
            keep = [True] * len(chunk.indices)
            if drop is not None and shard.split != "val":  # val is the evaluation set: never changed
                reasons = drop.decide([(h, _label(listing, i)) for h, i in zip(chunk.hashes, chunk.indices)])
                keep = [reason is None for reason in reasons]
                dropped += [{"path": listing.samples[i].path, "reason": reason}
                            for i, reason in zip(chunk.indices, reasons) if reason is not None]
            elif drop is not None:
                drop.keep([(h, _label(listing, i)) for h, i in zip(chunk.hashes, chunk.indices)])
            if all(keep) and chunk.size:
                writer.append_part(chunk.part, chunk.size, chunk.samples)
            elif chunk.size:
                writer.append_part_subset(chunk.part, chunk.spans, chunk.samples, keep)
            if chunk.size:
                os.unlink(chunk.part)
            kept = [n for n, wanted in enumerate(keep) if wanted]
            row_keys += [keys[chunk.indices[n]] for n in kept]
            row_sizes += [chunk.sizes[n] for n in kept]
            row_labels += [_label_index(listing, chunk.indices[n]) for n in kept]
            if chunk.hashes is None:  # --dedup off
                row_hashes = None
            elif row_hashes is not None:
                row_hashes += [chunk.hashes[n] for n in kept]
            skipped += [{"path": listing.samples[i].path, "reason": reason} for i, reason in chunk.skipped]
            bar.update(len(chunk.indices) + len(chunk.skipped))
        jpegs = [member_entry(entries, IMAGE_EXT) for entries in writer.entries]  # in the tar: rows' order
        rows = TableRows.of_samples(row_keys, row_hashes, loader_columns(jpegs, row_sizes, row_labels))
        outcome = {"skipped": skipped, "dropped": dropped, "rows": rows.to_record()}
        return (writer.close() if writer.samples else None), outcome


def _finish_shard(output: OutputDir, records: dict[str, dict], shard: PlannedShard, outcome: dict,
                  published: Future | None) -> None:
    """Record a shard as finished (its done file) once the publisher thread has put it in place."""
    records[shard.name] = output.mark_finished(shard, published.result() if published else None, **outcome)


def _manifest(dataset: str, listing: SourceListing, options: ShardOptions, plan: list[PlannedShard],
              records: dict[str, dict]) -> Manifest:
    splits: dict[str, SplitInfo] = {}
    skipped = list(listing.skipped)
    dropped: list[dict] = []
    for shard in plan:
        split = splits.setdefault(shard.split, SplitInfo())
        record = records[shard.name]
        skipped += record["skipped"]
        dropped += record["dropped"]
        if record["shard"] is not None:
            info = ShardInfo(**record["shard"])
            split.shards.append(info)
            split.samples += info.samples
    return Manifest(
        dataset=dataset,
        root=str(listing.root),
        tool=f"vaedist {__version__}",
        options=options.to_json(),
        classes=listing.classes,
        splits=splits,
        skipped=sorted(skipped, key=lambda s: s["path"]),
        dropped=sorted(dropped, key=lambda s: s["path"]),
        created=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def _add_tables_and_duplicates(manifest: Manifest, out: Path, listing: SourceListing, keys: list[str],
                               plan: list[PlannedShard], records: dict[str, dict], options: ShardOptions
                               ) -> dict | None:
    """Write each split's table (and hashes file) from its shards' done records; find the duplicates among the
    hashes and write them to duplicates.json (the manifest records its size and sha256). Returns the report."""
    path_of = {key: s.path for key, s in zip(keys, listing.samples)}
    sets = []
    for name, split in manifest.splits.items():
        rows = [TableRows.from_record(records[s.name]["rows"]) for s in plan
                if s.split == name and records[s.name]["shard"] is not None]  # the manifest's shards, in order
        table = build_table(rows)
        split.table = write_table(out, name, table)
        if options.hashed:
            hashes = build_hashes(rows)
            split.hashes = write_hashes(out, name, hashes)
            sets.append(HashSet(name, hashes["exact"], hashes["phash"],
                                lambda found, table=table: [path_of[table["key"][r].decode()] for r in found]))
    if not sets:
        return None
    report = find_duplicates(sets, options.dedup_threshold, REPORT_LISTED).to_json()
    manifest.duplicates = write_duplicates(report, out)
    return report


def _reasons_summary(skipped: list[dict]) -> str:
    if not skipped:
        return "nothing to read"
    counts = Counter(s["reason"].split(" (")[0] for s in skipped)
    return f"{len(skipped)} inputs rejected (" + ", ".join(f"{n} {reason}" for reason, n in counts.most_common()) + ")"


def _summary(manifest: Manifest, out: Path, written: int, elapsed: float, duplicates: dict | None) -> str:
    lines = [f"wrote {out}/manifest.json"]
    for name, split in manifest.splits.items():
        lines.append(f"  {name}: {split.samples} samples in {len(split.shards)} shards "
                     f"({sum(s.bytes for s in split.shards) / 1e6:.1f} MB)")
    if written and elapsed > 0:
        lines.append(f"  decoded {written} images in {elapsed:.1f} s ({written / elapsed:.0f} img/s)")
    lines.append(f"  skipped: {_reasons_summary(manifest.skipped) if manifest.skipped else 'none'}")
    for entry in manifest.skipped[:10]:
        lines.append(f"    {entry['path']}: {entry['reason']}")
    if len(manifest.skipped) > 10:
        lines.append(f"    ... and {len(manifest.skipped) - 10} more (manifest.json, key 'skipped')")
    if duplicates is not None:
        lines += duplicates_summary(duplicates)
    if manifest.options.get("dedup") == "drop":
        lines.append(f"  dropped (--dedup drop): {len(manifest.dropped) or 'none'}")
        lines += [f"    {entry['path']}: {entry['reason']}" for entry in manifest.dropped[:10]]
        if len(manifest.dropped) > 10:
            lines.append(f"    ... and {len(manifest.dropped) - 10} more (manifest.json, key 'dropped')")
    return "\n".join(lines)

