"""The worker processes: each writes whole shards, decoding and checking every image of it in plan order.

    with WorkerPool(workers) as pool:
        future = pool.submit(write_shard, task, options)   # -> WrittenShard: its ShardInfo, rejected inputs
        pool.images_done()                                 # images finished by all workers so far (progress)

Everything per image happens here, in parallel: decode and check (images.py), tar members (format.py),
tar + index + sha256 (writer.py). The sharder's process only hands out shards and records them.
"""
from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterator

from vaedist.shard.format import SampleMeta, ShardInfo, sample_members
from vaedist.shard.images import ImageOptions, ImageRejected, PreparedImage, configure_pillow, prepare_image
from vaedist.shard.plan import PlannedShard, probe_indices
from vaedist.shard.sources import SourceListing
from vaedist.shard.writer import ShardWriter


class Stopped(Exception):
    """The sharder's process asked its workers to stop (an error elsewhere, Ctrl-C)."""


# Set in each worker by _init_worker: shared with the sharder's process (see WorkerPool).
_images_done = None
_stop = None


def _init_worker(images_done, stop) -> None:
    global _images_done, _stop
    _images_done, _stop = images_done, stop
    configure_pillow()
    # A forked worker shares the sharder's memory copy-on-write; the collector's full passes would walk
    # (and so copy) every object it inherited. Freezing them keeps those pages shared and the passes short.
    gc.freeze()
    # Ctrl-C reaches the whole process group: the sharder handles it and stops the workers through `stop`;
    # a worker's own KeyboardInterrupt would only add a traceback per worker to the terminal.
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


class WorkerPool:
    """The worker processes, a count of the images they have finished (for the progress bar: a shard is
    one task of seconds) and a flag that makes them drop the shards they are writing."""

    def __init__(self, workers: int):
        context = multiprocessing.get_context()
        self._images_done = context.Value("q", 0)
        self._stop = context.Event()
        configure_pillow()  # for anything decoded in this process too
        self._executor = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                             initargs=(self._images_done, self._stop))

    def submit(self, fn, *args) -> Future:
        return self._executor.submit(fn, *args)

    def map(self, fn, items):
        return self._executor.map(fn, items)

    def images_done(self) -> int:
        return self._images_done.value

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:  # the workers drop their shards at the next image instead of finishing them
            self._stop.set()
        self._executor.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class ShardItem:
    """One image for a worker: everything its tar members need."""

    index: int  # into listing.samples
    path: str  # absolute
    key: str
    label: int | None
    meta_path: str  # the .json's "path": relative to the dataset root
    split: str
    class_name: str | None


@dataclass(frozen=True)
class ShardTask:
    tar: str  # the shard's final path
    items: list[ShardItem]  # in plan order
    threads: int = 1  # decoding threads: >1 when there are fewer shards than workers (see write_shard)


@dataclass(frozen=True)
class WrittenShard:
    info: ShardInfo | None  # None: every input of the shard was rejected, no file written
    skipped: list[tuple[int, str]]  # (index, reason) of the rejected inputs


def prepare_one(path: str, options: ImageOptions) -> PreparedImage | str:
    """The image to store, or the reason it was rejected."""
    try:
        return prepare_image(path, options)
    except ImageRejected as err:
        return str(err)
    except OSError as err:  # unreadable: permissions, a file removed while we run, I/O errors
        return f"unreadable ({type(err).__name__}: {err.strerror or err})"
    except Exception as err:  # a file that trips a Pillow plugin must not end a multi-hour run
        return f"could not be decoded ({type(err).__name__}: {str(err)[:120]})"


def write_shard(task: ShardTask, options: ImageOptions) -> WrittenShard:
    """Runs in a worker: decode and check each image of the shard, in order, and write the good ones.

    The worker writes the bytes it checked (no second read of the source, so no race with a file changing).
    """
    skipped: list[tuple[int, str]] = []
    with ShardWriter(Path(task.tar)) as shard:
        for item, result in _prepared_in_order(task.items, options, task.threads):
            if _stop is not None and _stop.is_set():
                raise Stopped(task.tar)
            if isinstance(result, str):
                skipped.append((item.index, result))
            else:
                meta = SampleMeta(item.meta_path, result.width, result.height, item.split, item.class_name)
                shard.add(sample_members(item.key, result.jpeg, meta, item.label))
            if _images_done is not None:
                with _images_done.get_lock():
                    _images_done.value += 1
        return WrittenShard(shard.finish() if shard.samples else None, skipped)


def _prepared_in_order(items: list[ShardItem], options: ImageOptions,
                       threads: int) -> Iterator[tuple[ShardItem, PreparedImage | str]]:
    """prepare_one() of each item, in order. On several threads when asked: Pillow releases the GIL while it
    decodes, resizes and encodes (2 threads in one process: 1.77x one thread on 2 cores), so a run with fewer
    shards than workers still uses every core. At most 2 images per thread are decoded ahead of the writer."""
    if threads == 1:
        for item in items:
            yield item, prepare_one(item.path, options)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="vaedist-decode") as decoders:
        ahead: deque[tuple[ShardItem, Future]] = deque()
        try:
            for item in items:
                ahead.append((item, decoders.submit(prepare_one, item.path, options)))
                if len(ahead) > 2 * threads:
                    first, future = ahead.popleft()
                    yield first, future.result()
            while ahead:
                first, future = ahead.popleft()
                yield first, future.result()
        finally:
            for _, future in ahead:  # stopped early: don't decode what nobody will write
                future.cancel()


def shard_task(directory: Path, listing: SourceListing, keys: list[str], shard: PlannedShard,
               threads: int = 1) -> ShardTask:
    root, classes = str(listing.root), listing.classes
    items = []
    for i in shard.samples:
        s = listing.samples[i]
        class_name = classes[s.label] if s.label is not None else None
        items.append(ShardItem(i, f"{root}/{s.path}", keys[i], s.label, s.path, s.split, class_name))
    return ShardTask(str(directory / shard.name), items, threads)


def _stored_size(path: str, options: ImageOptions) -> tuple[int, int] | None:
    result = prepare_one(path, options)
    return None if isinstance(result, str) else (len(result.jpeg), os.stat(path).st_size)


def measure_bytes_ratio(pool: WorkerPool, listing: SourceListing, seed: int, options: ImageOptions) -> float:
    """Stored bytes / source bytes on a seeded probe: lets --shard-size mean stored bytes even with --max-side.

    Without --max-side the source size is the estimate (exact for clean JPEGs, which are copied; converted
    PNGs etc. come out smaller), and the probe's extra decodes are saved.
    """
    if options.max_side is None:
        return 1.0
    paths = [f"{listing.root}/{listing.samples[i].path}" for i in probe_indices(listing, seed)]
    sizes = [size for size in pool.map(partial(_stored_size, options=options), paths) if size]
    stored, source = sum(s for s, _ in sizes), sum(s for _, s in sizes)
    return round(stored / source, 6) if source else 1.0
