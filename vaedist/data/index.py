"""Where every sample of a split lives, as arrays: its shard, its JPEG's offset and size in the tar, its label,
its original and stored size (`SplitIndex`).

    index = open_split_index(shard_dir, manifest, "train")   # checked against the manifest (one-line errors)

From the split's table (`<split>-table.npy`, shard.table.read_loader_table): a few dozen bytes per sample,
read in one piece and checked against the manifest's sha256; no tar or .idx is read at start-up. Shards
written by an older vaedist have no such table: then (`load_split_index`) the shards' .idx files are parsed
and every sample's `.cls`, `.json` and JPEG header read from the tars (a cold start reads about the whole
split), with a one-line hint naming the command that adds the table (`python -m vaedist.shard.rebuild_table`).

Offsets point at member data inside the tar, so a sample's JPEG is `tar[offset : offset + size]` — no tar
parsing. Both backends read encoded bytes through these offsets, so they see the same samples in the same order.
"""
from __future__ import annotations

import logging
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from vaedist.data.validate import validate_split, validate_split_table
from vaedist.errors import UserError
from vaedist.remote import RemoteTars, is_url
from vaedist.remote import join as remote_join
from vaedist.shard.format import (IMAGE_EXT, LABEL_EXT, META_EXT, RESHARD, DamagedMember, Manifest, ShardIndex, ShardInfo,
                                  decode_label, decode_original_size)
from vaedist.jpeg import JPEG_HEADER_BYTES, JpegProblem, stored_size
from vaedist.shard.table import NoLoaderTable, read_loader_table

log = logging.getLogger(__name__)


@dataclass
class SplitIndex:
    """Every sample of one split, in manifest order. Arrays are [num_samples]."""

    shard_dir: Path | str  # str: a URL (vaedist.remote)
    shards: list[ShardInfo]
    shard: np.ndarray  # int32: which shard (position in `shards`) holds the sample
    offset: np.ndarray  # int64: the JPEG's data offset in its tar
    size: np.ndarray  # int64: the JPEG's length in bytes
    label: np.ndarray  # int64: class index, -1 for unlabelled datasets
    orig_width: np.ndarray  # float32: width before any --max-side downscale (crop is in these pixels)
    orig_height: np.ndarray  # float32
    stored_width: np.ndarray  # float32: the JPEG's own width (= orig_width on full-size shards)
    stored_height: np.ndarray  # float32
    keys: list[str]
    # Samples whose .cls/.json/.jpg header was found damaged while indexing the tars (the old path; the table's
    # path reads no member at start-up, and a JPEG is checked when a batch reads it): (position, member, what
    # is wrong). Their label, sizes are placeholders; the loader's BadSamples policy decides (skip them or stop).
    damaged: list[tuple[int, str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.offset)

    @property
    def labelled(self) -> bool:
        return bool(len(self.label)) and bool((self.label >= 0).all())


class TarReader:
    """Reads members by offset from local tars; one per process (DataLoader workers open their own).

    `read_many` (the decoders' batches) reads each member with one `pread` on a file opened with
    POSIX_FADV_RANDOM: the kernel reads those pages and no more. A memory map's page fault reads around it
    (the device's readahead: 8 MB per fault on this VM's disk), so a cold first batch of 64 samples read
    ~600 MB. `view` maps the tar (zero-copy, the kernel's readahead): for reading a tar in order (verify,
    the old start-up that reads every member)."""

    def __init__(self, shard_dir: Path, shards: list[ShardInfo]):
        self._paths = [Path(shard_dir) / s.name for s in shards]
        self._maps: dict[int, mmap.mmap] = {}
        self._fds: dict[int, int] = {}

    def view(self, shard: int, offset: int, size: int) -> memoryview:
        mm = self._maps.get(shard)
        if mm is None:
            with open(self._paths[shard], "rb") as fh:
                mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            self._maps[shard] = mm
        return memoryview(mm)[offset : offset + size]

    def read_many(self, requests: list[tuple[int, int, int]]) -> list[bytes]:
        return [os.pread(self._fd(int(s)), int(n), int(o)) for s, o, n in requests]

    def _fd(self, shard: int) -> int:
        fd = self._fds.get(shard)
        if fd is None:
            fd = os.open(self._paths[shard], os.O_RDONLY)
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # batches read samples in a shuffled order
            self._fds[shard] = fd
        return fd

    def __getstate__(self):  # mmaps and file descriptors do not pickle: each DataLoader worker opens its own
        return {"_paths": self._paths, "_maps": {}, "_fds": {}}

    def __del__(self):
        for fd in getattr(self, "_fds", {}).values():
            os.close(fd)


def open_tars(shard_dir: Path | str, shards: list[ShardInfo]) -> TarReader | RemoteTars:
    """The member reader of a shard directory: memory-mapped local tars, or range requests to URLs."""
    if is_url(shard_dir):
        return RemoteTars([remote_join(str(shard_dir), s.name) for s in shards])
    return TarReader(Path(shard_dir), shards)


def open_split_index(shard_dir: str | Path, manifest: Manifest, split: str) -> SplitIndex:
    """The split's index from its table, or, for shards without one, from the tars (logging the hint that
    names the command adding it). Raises a one-line UserError on anything that does not match the manifest."""
    try:
        table = read_loader_table(shard_dir, manifest, split) if split in manifest.splits else None
    except NoLoaderTable as hint:
        log.warning("%s", hint)
        table = None
    if table is None:
        return load_split_index(shard_dir, manifest, split, validate_split(shard_dir, manifest, split))
    validate_split_table(shard_dir, manifest, split, table)
    return index_from_table(shard_dir, manifest, split, table)


def index_from_table(shard_dir: str | Path, manifest: Manifest, split: str, table: np.ndarray) -> SplitIndex:
    """The SplitIndex of a split's table (rows in the manifest's shard order, as load_split_index's)."""
    return SplitIndex(
        shard_dir=str(shard_dir) if is_url(shard_dir) else Path(shard_dir),
        shards=manifest.splits[split].shards,
        shard=table["shard"].astype(np.int32),
        offset=table["jpeg_offset"].astype(np.int64),
        size=table["jpeg_size"].astype(np.int64),
        label=table["label"].astype(np.int64),
        orig_width=table["width"].astype(np.float32),
        orig_height=table["height"].astype(np.float32),
        stored_width=table["stored_width"].astype(np.float32),
        stored_height=table["stored_height"].astype(np.float32),
        keys=np.char.decode(table["key"], "ascii").tolist(),
    )


def load_split_index(shard_dir: str | Path, manifest: Manifest, split: str, shard_indexes: list[ShardIndex],
                     shards: list[ShardInfo] | None = None) -> SplitIndex:
    """Flatten validated shard indexes into arrays and read each sample's label and original size.

    A member whose content was damaged after sharding (same size, other bytes: only `vaedist.data.verify`'s hash
    sees that) is listed in `damaged` with what is wrong with it, for the loader's bad-sample policy.
    """
    shard_dir = str(shard_dir) if is_url(shard_dir) else Path(shard_dir)
    shards = manifest.splits[split].shards if shards is None else shards  # `shards`: some of them, e.g. one
    reader = open_tars(shard_dir, shards)
    rows: list[tuple[int, int, int, int, float, float, int, int, str]] = []
    damaged: list[tuple[int, str, str]] = []
    for s, idx in enumerate(shard_indexes):
        # One batch of requests per shard behind a URL: every sample's label, meta and JPEG header ranges.
        wanted, labelled = [], manifest.labelled
        for members in idx.members:
            off, size = members[IMAGE_EXT]
            wanted += [(s, *members[META_EXT]), (s, off, min(size, JPEG_HEADER_BYTES))]
            if labelled and LABEL_EXT in members:
                wanted.append((s, *members[LABEL_EXT]))
        # locally through the memory map: the members in tar order, the kernel's readahead is what this wants
        fetched = iter(reader.read_many(wanted) if isinstance(reader, RemoteTars) else [reader.view(*r) for r in wanted])
        for number, (members, key) in enumerate(zip(idx.members, idx.keys)):
            off, size = members[IMAGE_EXT]
            meta_bytes, head = next(fetched), next(fetched)
            try:
                label = decode_label(bytes(next(fetched))) if labelled and LABEL_EXT in members else -1
                orig_w, orig_h = decode_original_size(bytes(meta_bytes))
                # The stored size too, once here, so that batches' crop windows are plain numpy on the host
                # (in the DALI graph, peeking the size and ~30 scalar operators cost ~40 % of a small JPEG's time).
                # the first 64 KiB came with the batch above; the whole JPEG is read only if its header lies further
                try:
                    stored_w, stored_h = stored_size(
                        lambda n, s=s, off=off, head=head: head[:n] if n <= len(head) else reader.view(s, off, n), size)
                except JpegProblem as err:
                    raise DamagedMember(IMAGE_EXT, str(err)) from None
            except DamagedMember as err:
                damaged.append((len(rows), err.ext, err.what))
                label = 0 if manifest.labelled else -1  # placeholders: the sample is never decoded
                orig_w, orig_h, stored_w, stored_h = 1.0, 1.0, 1, 1
            rows.append((s, off, size, label, orig_w, orig_h, stored_w, stored_h, key))
    cols = list(zip(*rows)) if rows else [[]] * 9
    return SplitIndex(
        shard_dir=shard_dir,
        shards=shards,
        shard=np.asarray(cols[0], dtype=np.int32),
        offset=np.asarray(cols[1], dtype=np.int64),
        size=np.asarray(cols[2], dtype=np.int64),
        label=np.asarray(cols[3], dtype=np.int64),
        orig_width=np.asarray(cols[4], dtype=np.float32),
        orig_height=np.asarray(cols[5], dtype=np.float32),
        stored_width=np.asarray(cols[6], dtype=np.float32),
        stored_height=np.asarray(cols[7], dtype=np.float32),
        keys=list(cols[8]),
        damaged=damaged,
    )

