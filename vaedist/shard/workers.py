"""The worker processes: decode and check images, and pack the tar members of each chunk into a part file.

    pool = worker_pool(workers)
    for packed in pack_in_parallel(pool, workers, chunk_tasks(output, listing, keys, shards), options):
        ...   # PackedChunk, in plan order: the part file, its samples' index entries, the rejected inputs

Everything per image happens here, in parallel; the writing process (sharder.py) only appends parts. At
most IN_FLIGHT_PER_WORKER chunks per worker are queued or unread at any time, so memory and part files
on disk stay bounded whatever the dataset size.
"""
from __future__ import annotations

import gc
import os
import signal
import threading
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from itertools import islice
from typing import Callable, Iterator, Sequence

from vaedist.shard.fingerprint import finish_hashes
from vaedist.jpeg import jpeg_size
from vaedist.shard.format import ImageHashes, IndexEntry, SampleMeta, sample_members
from vaedist.shard.images import ImageOptions, ImageRejected, PreparedImage, configure_pillow, prepare_image
from vaedist.shard.plan import PlannedShard, probe_indices
from vaedist.shard.sources import SourceListing
from vaedist.shard.state import OutputDir
from vaedist.shard.writer import encode_members, write_pieces

CHUNKSIZE = 64  # images per task (and part file): one message and one copy per ~70-150 ms of decoding; the
# chunk's perceptual hashes are computed together (fingerprint.finish_hashes), and its numpy and SciPy calls
# cost per call: hashing added +11.2 % to the sharder's time at 32, +7.9 % and +11.2 % in two runs at 64
# (bench shard, 1,000 images, 15-21 pairs, 2-core VM, 2026-12-02: within the host's noise of each other)
IN_FLIGHT_PER_WORKER = 4  # chunks queued per worker: keeps workers busy, bounds memory


def _init_worker() -> None:
    configure_pillow()
    # A forked worker shares the sharder's memory copy-on-write; the collector's full passes would walk
    # (and so copy) every object it inherited. Freezing them keeps those pages shared and the passes short.
    gc.freeze()
    # Ctrl-C reaches the whole process group: the sharder handles it and stops the pool; a worker's own
    # KeyboardInterrupt would only add a traceback per worker to the terminal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A worker must not outlive a sharder killed with -9 (it would hold the pool's pipes and CPU forever).
    # Its parent is the sharder (fork) or the forkserver, which exits with the sharder: either way, when the
    # parent dies the worker is re-parented and its parent pid changes.
    parent_pid = os.getppid()

    def watch_parent() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch_parent, daemon=True).start()


def worker_pool(workers: int) -> ProcessPoolExecutor:
    # Not multiprocessing.Pool: its worker-handler thread spins while results wait to be read, and on a busy
    # machine that costs this process ~0.1 ms of CPU per image, CPU the decoding workers then lack.
    configure_pillow()  # for anything decoded in this process too
    return ProcessPoolExecutor(workers, initializer=_init_worker)


@dataclass(frozen=True)
class ChunkItem:
    """One image for a worker to pack: everything its tar members need."""

    index: int  # into listing.samples
    path: str  # absolute
    key: str
    label: int | None
    path_in_root: str  # the .json's "path"
    split: str
    class_name: str | None


@dataclass(frozen=True)
class PackedChunk:
    """A worker's result: the encoded samples of a chunk in the part file `part` (absent when size is 0)."""

    part: str
    size: int
    samples: list[list[IndexEntry]]  # index entries of the packed samples, offsets relative to the part
    skipped: list[tuple[int, str]]  # (index, reason) of the rejected inputs
    indices: list[int]  # [packed sample] -> its index in listing.samples
    spans: list[tuple[int, int]]  # [packed sample] -> (offset, bytes) of all its members in the part
    hashes: list[ImageHashes] | None  # [packed sample] -> its hashes; None when not asked for
    sizes: list[tuple[int, int, int, int]]  # [packed sample] -> (width, height) original, then stored (the table's)


def _prepare_one(path: str, options: ImageOptions) -> PreparedImage | str:
    """The image to store, or the reason it was rejected."""
    try:
        return prepare_image(path, options)
    except ImageRejected as err:
        return str(err)
    except OSError as err:  # unreadable: permissions, a file removed while we run, I/O errors
        return f"unreadable ({type(err).__name__}: {err.strerror or err})"
    except Exception as err:  # a file that trips a Pillow plugin must not end a multi-hour run
        return f"could not be decoded ({type(err).__name__}: {str(err)[:120]})"


def _pack_chunk(part: str, items: list[ChunkItem], options: ImageOptions) -> PackedChunk:
    """Runs in a worker: decode and check each image, encode the tar members of the good ones into `part`.

    The worker writes the bytes it checked (no second read of the source, so no race with a file changing),
    and only a few numbers per image go back to the writing process. The pieces (headers, the JPEG bytes as
    read or encoded, padding) go to the file with one `writev`, never joined into a copy in memory.
    """
    pieces: list[bytes] = []
    packed = 0  # bytes in `pieces`
    samples: list[list[IndexEntry]] = []
    skipped: list[tuple[int, str]] = []
    indices: list[int] = []
    spans: list[tuple[int, int]] = []
    hashes: list[ImageHashes] = []
    results = [_prepare_one(item.path, options) for item in items]
    # the perceptual hashes of the chunk's thumbnails, together (fingerprint.finish_hashes says why)
    finished = iter(finish_hashes([r.hashes for r in results if not isinstance(r, str) and r.hashes is not None]))
    sizes: list[tuple[int, int, int, int]] = []
    for item, result in zip(items, results):
        if isinstance(result, str):
            skipped.append((item.index, result))
            continue
        sample_hashes = next(finished) if result.hashes is not None else None
        meta = SampleMeta(item.path_in_root, result.width, result.height, item.split, item.class_name, sample_hashes)
        members, size, entries = encode_members(sample_members(item.key, result.jpeg, meta, item.label))
        samples.append([(name, packed + offset, length) for name, offset, length in entries])
        indices.append(item.index)
        spans.append((packed, size))
        sizes.append((result.width, result.height, *jpeg_size(result.jpeg)))  # the loader's start-up reads these
        if sample_hashes is not None:
            hashes.append(sample_hashes)
        pieces += members
        packed += size
    if packed:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            write_pieces(fd, pieces)
        finally:
            os.close(fd)
    return PackedChunk(part, packed, samples, skipped, indices, spans, hashes if options.hashes else None, sizes)


def chunk_tasks(output: OutputDir, listing: SourceListing, keys: list[str],
                 shards: Sequence[PlannedShard]) -> Iterator[tuple[str, list[ChunkItem]]]:
    """(part file, items) for each CHUNKSIZE images of each shard, in plan order; chunks never span shards."""
    root, classes = str(listing.root), listing.classes
    for shard in shards:
        for number, start in enumerate(range(0, len(shard.samples), CHUNKSIZE)):
            items = []
            for i in shard.samples[start : start + CHUNKSIZE]:
                s = listing.samples[i]
                class_name = classes[s.label] if s.label is not None else None
                items.append(ChunkItem(i, f"{root}/{s.path}", keys[i], s.label, s.path, s.split, class_name))
            yield str(output.path / f".{shard.stem}.part{number:05d}.tmp"), items


def chunks_of(shard: PlannedShard) -> int:
    return -(-len(shard.samples) // CHUNKSIZE)


def pack_in_parallel(pool: ProcessPoolExecutor, workers: int, tasks: Iterator[tuple[str, list[ChunkItem]]],
                      options: ImageOptions) -> Iterator[PackedChunk]:
    """Packed chunks in plan order. At most IN_FLIGHT_PER_WORKER chunks per worker are queued or unread at
    any time, so memory (and part files on disk) stay bounded whatever the dataset size."""
    work = partial(_pack_chunk, options=options)
    in_flight: deque[Future] = deque(pool.submit(work, *task) for task in islice(tasks, IN_FLIGHT_PER_WORKER * workers))
    try:
        while in_flight:
            packed = in_flight.popleft().result()
            for task in islice(tasks, 1):
                in_flight.append(pool.submit(work, *task))
            yield packed
    finally:
        for future in in_flight:  # stopped early (error, Ctrl-C): don't decode what nobody will read
            future.cancel()


def _rejection(path: str, options: ImageOptions) -> str | None:
    result = _prepare_one(path, options)
    return result if isinstance(result, str) else None


def rejected_inputs(pool: ProcessPoolExecutor, listing: SourceListing, options: ImageOptions,
                    progress: Callable[[int], object]) -> dict[str, str]:
    """Decode every input once, as the writing pass will: path -> reason of those it rejects.

    Only for --val-fraction, whose split must be drawn from valid images before the shards are planned.
    """
    paths = [f"{listing.root}/{s.path}" for s in listing.samples]
    options = replace(options, hashes=False)  # the reasons only: the writing pass hashes
    rejected: dict[str, str] = {}
    for sample, reason in zip(listing.samples, pool.map(partial(_rejection, options=options), paths, chunksize=CHUNKSIZE)):
        progress(1)
        if reason is not None:
            rejected[sample.path] = reason
    return rejected


def _stored_size(path: str, options: ImageOptions) -> tuple[int, int] | None:
    result = _prepare_one(path, options)
    return None if isinstance(result, str) else (len(result.jpeg), os.stat(path).st_size)


def measure_bytes_ratio(pool: ProcessPoolExecutor, listing: SourceListing, seed: int, options: ImageOptions) -> float:
    """Stored bytes / source bytes on a seeded probe: lets --shard-size mean stored bytes even with --max-side.

    Without --max-side the source size is the estimate (exact for clean JPEGs, which are copied; converted
    PNGs etc. come out smaller), and the probe's extra decodes are saved.
    """
    if options.max_side is None:
        return 1.0
    paths = [f"{listing.root}/{listing.samples[i].path}" for i in probe_indices(listing, seed)]
    options = replace(options, hashes=False)  # sizes only
    sizes = [size for size in pool.map(partial(_stored_size, options=options), paths) if size]
    stored, source = sum(s for s, _ in sizes), sum(s for _, s in sizes)
    return round(stored / source, 6) if source else 1.0
