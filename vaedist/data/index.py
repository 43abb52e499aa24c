"""Where every sample of a split lives: DALI's .idx files parsed into flat arrays, plus each sample's label
and original size read from its `.cls` / `.json` members.

The .idx format (DALI `wds2idx`, version v1.2) is one header line `v1.2 <samples>` and then one line per
sample listing its members as `<ext> <data offset> <size> <member name>` groups (v1.1: no name). Offsets
point at member data inside the tar, so a sample's JPEG is `tar[offset : offset + size]` — no tar parsing.

Both backends read encoded bytes through these offsets, so they see the same samples in the same order.
"""
from __future__ import annotations

import io
import json
import mmap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vaedist.errors import UserError
from vaedist.shard.manifest import Manifest, ShardInfo

IMAGE_EXT = "jpg"
LABEL_EXT = "cls"
META_EXT = "json"

RESHARD = "re-run python -m vaedist.shard with --overwrite"


@dataclass
class ShardIndex:
    """One tar's parsed index: per sample, the (offset, size) of each member extension."""

    tar: Path
    index: Path
    members: list[dict[str, tuple[int, int]]]  # [sample] -> {"jpg": (offset, size), "cls": ..., "json": ...}
    keys: list[str]  # [sample] -> key (member name up to its first dot; v1.1 indexes: "<line number>")


def parse_index(tar: Path, index: Path) -> ShardIndex:
    """Parse a DALI .idx file. Malformed text is a one-line UserError naming the index."""
    try:
        lines = index.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"index '{index}' cannot be read ({err}); {RESHARD}")
    try:
        version, count = lines[0].split()
        if version not in ("v1.1", "v1.2"):
            raise ValueError(f"unknown index version {version!r}")
        group = 4 if version == "v1.2" else 3  # v1.2 adds the member name
        members, keys = [], []
        for line in lines[1:]:
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) % group:
                raise ValueError(f"line {len(members) + 2} has {len(fields)} fields")
            sample = {}
            for i in range(0, len(fields), group):
                sample[fields[i]] = (int(fields[i + 1]), int(fields[i + 2]))
            members.append(sample)
            keys.append(fields[3].split(".", 1)[0] if group == 4 else str(len(keys)))
        if len(members) != int(count):
            raise ValueError(f"header says {count} samples, the file lists {len(members)}")
    except (ValueError, IndexError) as err:
        raise UserError(f"index '{index}' is malformed ({err}); {RESHARD}")
    return ShardIndex(tar=tar, index=index, members=members, keys=keys)


@dataclass
class SplitIndex:
    """Every sample of one split, in manifest order. Arrays are [num_samples]."""

    shard_dir: Path
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

    def __getstate__(self):  # mmaps do not pickle: each DataLoader worker maps the tars again
        return {"_paths": self._paths, "_maps": {}}


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
    from PIL import Image

    with Image.open(io.BytesIO(bytes(data))) as img:
        return img.size


def load_split_index(shard_dir: str | Path, manifest: Manifest, split: str, shard_indexes: list[ShardIndex]) -> SplitIndex:
    """Flatten validated shard indexes into arrays and read each sample's label and original size.

    A member whose content was damaged after sharding (same size, other bytes: only `verify_split`'s hash
    sees that) stops here with one line naming the tar, the sample and the member.
    """
    shard_dir = Path(shard_dir)
    shards = manifest.splits[split].shards
    reader = TarReader(shard_dir, shards)
    rows: list[tuple[int, int, int, int, float, float, int, int, str]] = []
    for s, idx in enumerate(shard_indexes):
        for number, (members, key) in enumerate(zip(idx.members, idx.keys)):
            off, size = members[IMAGE_EXT]
            try:
                label = _label(bytes(reader.view(s, *members[LABEL_EXT]))) if manifest.labelled and LABEL_EXT in members else -1
                orig_w, orig_h = _original_size(bytes(reader.view(s, *members[META_EXT])))
                # The stored size too, once here, so that batches' crop windows are plain numpy on the host
                # (in the DALI graph, peeking the size and ~30 scalar operators cost ~40 % of a small JPEG's time).
                stored_w, stored_h = _stored_size(reader.view(s, off, size))
            except _DamagedMember as err:
                raise UserError(f"shard '{idx.tar}' is damaged: sample {number} ('{key}') has a .{err.ext} member that "
                                f"{err.what}; {RESHARD}") from None
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
    )


class _DamagedMember(Exception):
    """A member whose content was changed after sharding (same size, other bytes: only a hash sees that)."""

    def __init__(self, ext: str, what: str):
        super().__init__(what)
        self.ext, self.what = ext, what


def _shown(raw: bytes) -> str:
    return repr(raw[:24]) + ("..." if len(raw) > 24 else "")


def _label(raw: bytes) -> int:
    try:
        return int(raw.decode().strip())
    except ValueError:  # UnicodeDecodeError included
        raise _DamagedMember(LABEL_EXT, f"is not a class index ({_shown(raw)})") from None


def _original_size(raw: bytes) -> tuple[float, float]:
    """(width, height) before any --max-side downscale, from a sample's .json member."""
    try:
        meta = json.loads(raw)
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
        raise _DamagedMember(META_EXT, f"is not valid JSON ({err}: {_shown(raw)})") from None
    try:
        return float(meta["width"]), float(meta["height"])
    except (KeyError, TypeError, ValueError):
        if not isinstance(meta, dict) or "width" not in meta or "height" not in meta:
            raise _DamagedMember(META_EXT, f'lacks a "width" or "height" ({_shown(raw)})') from None
        raise _DamagedMember(META_EXT, f'has a "width" or "height" that is not a number ({_shown(raw)})') from None


def _stored_size(data: memoryview) -> tuple[int, int]:
    try:
        return jpeg_size(data)
    except Exception as err:  # whatever Pillow's fallback parser raises for bytes that are no JPEG
        from PIL import UnidentifiedImageError

        what = ("no frame header, and Pillow cannot identify it" if isinstance(err, UnidentifiedImageError)
                else f"{type(err).__name__}: {err}")
        raise _DamagedMember(IMAGE_EXT, f"is not a readable JPEG ({what})") from None
