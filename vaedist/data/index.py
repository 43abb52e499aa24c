"""Where every sample of a split lives: the shards' DALI .idx files (parsed by `vaedist.shard.format`)
flattened into arrays, plus each sample's label and original size read from its `.cls` / `.json` members.

Offsets point at member data inside the tar, so a sample's JPEG is `tar[offset : offset + size]` — no tar
parsing. Both backends read encoded bytes through these offsets, so they see the same samples in the same order.
"""
from __future__ import annotations

import io
import mmap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from vaedist.errors import UserError
from vaedist.remote import RemoteTars, is_url
from vaedist.remote import join as remote_join
from vaedist.shard.format import (IMAGE_EXT, LABEL_EXT, META_EXT, RESHARD, DamagedMember, Manifest, ShardIndex, ShardInfo,
                                  decode_label, decode_original_size)
from vaedist.jpeg import marker_chain_problem


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
    # Samples whose .cls/.json/.jpg header was found damaged while indexing: (position, member, what is wrong).
    # Their label, sizes are placeholders; the loader's BadSamples policy decides (skip them or stop).
    damaged: list[tuple[int, str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.offset)

    @property
    def labelled(self) -> bool:
        return bool(len(self.label)) and bool((self.label >= 0).all())


class TarReader:
    """Reads members by offset from memory-mapped tars; one per process (DataLoader workers open their own)."""

    def __init__(self, shard_dir: Path, shards: list[ShardInfo]):
        self._paths = [Path(shard_dir) / s.name for s in shards]
        self._maps: dict[int, mmap.mmap] = {}

    def view(self, shard: int, offset: int, size: int) -> memoryview:
        mm = self._maps.get(shard)
        if mm is None:
            with open(self._paths[shard], "rb") as fh:
                mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            self._maps[shard] = mm
        return memoryview(mm)[offset : offset + size]

    def read_many(self, requests: list[tuple[int, int, int]]) -> list[memoryview]:
        return [self.view(s, o, n) for s, o, n in requests]

    def __getstate__(self):  # mmaps do not pickle: each DataLoader worker maps the tars again
        return {"_paths": self._paths, "_maps": {}}


def open_tars(shard_dir: Path | str, shards: list[ShardInfo]) -> TarReader | RemoteTars:
    """The member reader of a shard directory: memory-mapped local tars, or range requests to URLs."""
    if is_url(shard_dir):
        return RemoteTars([remote_join(str(shard_dir), s.name) for s in shards])
    return TarReader(Path(shard_dir), shards)


# The start of a JPEG read for its size at start-up: its frame header follows EXIF / ICC segments (up to
# 64 KiB each) in the worst case; a JPEG whose header lies further in is read whole.
JPEG_HEADER_BYTES = 1 << 16

# Start-of-frame markers (baseline, extended, progressive, lossless; Huffman or arithmetic coded).
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def jpeg_size(data: memoryview | bytes) -> tuple[int, int]:
    """(width, height) of a JPEG from its frame header, without decoding: a few marker hops, microseconds.

    These are the coded pixels, what the decoders return with EXIF orientation ignored (the sharder writes
    upright images). Anything unexpected falls back to Pillow's header parser.
    """
    pos, end = 2, len(data)
    while pos + 9 <= end and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _SOF_MARKERS:
            height, width = int.from_bytes(data[pos + 5 : pos + 7], "big"), int.from_bytes(data[pos + 7 : pos + 9], "big")
            if width and height:  # height 0: defined later by a DNL marker; let Pillow work it out
                return width, height
            break
        if 0xD0 <= marker <= 0xD9 or marker == 0x01:  # markers without a length field
            pos += 2
            continue
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    with Image.open(io.BytesIO(bytes(data))) as img:
        return img.size


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
        fetched = iter(reader.read_many(wanted))
        for number, (members, key) in enumerate(zip(idx.members, idx.keys)):
            off, size = members[IMAGE_EXT]
            meta_bytes, head = next(fetched), next(fetched)
            try:
                label = decode_label(bytes(next(fetched))) if labelled and LABEL_EXT in members else -1
                orig_w, orig_h = decode_original_size(bytes(meta_bytes))
                # The stored size too, once here, so that batches' crop windows are plain numpy on the host
                # (in the DALI graph, peeking the size and ~30 scalar operators cost ~40 % of a small JPEG's time).
                try:
                    stored_w, stored_h = _stored_size(head)
                except DamagedMember:
                    if len(head) == size:
                        raise
                    stored_w, stored_h = _stored_size(reader.view(s, off, size))  # header beyond the first 64 KiB
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


def _stored_size(data: memoryview | bytes) -> tuple[int, int]:
    problem = marker_chain_problem(data)  # DALI's parser rejects such a file, and may crash in a batch
    if problem is not None:
        raise DamagedMember(IMAGE_EXT, problem)
    try:
        return jpeg_size(data)
    except Exception as err:  # whatever Pillow's fallback parser raises for bytes that are no JPEG
        what = ("no frame header, and Pillow cannot identify it" if isinstance(err, UnidentifiedImageError)
                else f"{type(err).__name__}: {err}")
        raise DamagedMember(IMAGE_EXT, f"is not a readable JPEG ({what})") from None
