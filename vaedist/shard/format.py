"""The shard format: the one home of what a shard directory holds and how each of its files is spelled.

The sharder writes it and every reader (vaedist.data, the benchmarks, the tests) reads it through this
module: nothing else spells a file name, a member extension, a field of a sample's .json or the .idx
grammar. It imports neither torch nor Pillow, so a tool that only reads manifests stays light.

    OUT_DIR/manifest.json      written last: its presence means the directory is complete
    OUT_DIR/duplicates.json    the duplicates the sharder found (not with --dedup off); its size and sha256 are
                               in the manifest, which every start-up reads and this file does not burden
    OUT_DIR/train-000000.tar   a WebDataset tar: each sample's members, in plan order
    OUT_DIR/train-000000.idx   its DALI index (the text `wds2idx` writes)
    OUT_DIR/val-000000.tar ...
    OUT_DIR/train-table.npy    the split's table: one row per sample, in shard order (see "The per-split
    OUT_DIR/val-table.npy      tables" below); its size and sha256 are in the manifest
    OUT_DIR/train-hashes.npy   the split's image hashes, row i = the table's row i (not with --dedup off);
    OUT_DIR/val-hashes.npy     read by the duplicate finder only, never by the loader's start-up

A new kind of file is added in one place: a name function below and one entry in DIRECTORY_FILES, which
is what --overwrite removes and what a run refuses to mix. A new per-split column is one TableColumn.

manifest.json
{
  "format": 2,
  "tool": "vaedist 0.1.0",
  "dataset": "coco" | "food101" | "folder",
  "root": "/abs/path/of/the/source",
  "created": "2026-11-25T20:00:00Z",
  "options": {...},                     # the sharder's options (shard_size, max_side, seed, ...)
  "classes": ["apple_pie", ...] | null,  # class names, index = the `cls` of a sample
  "splits": {
    "train": {"samples": 118287, "shards": [{"name": "train-000000.tar", "index": "train-000000.idx",
                                              "samples": 1234, "bytes": 123456789, "sha256": "..."}, ...],
              "table": {"name": "train-table.npy", "rows": 118287, "bytes": 5678901, "sha256": "...",
                        "columns": ["key", "shard", "position", "jpeg_offset", ..., "label"], "version": 3},
              "hashes": {"name": "train-hashes.npy", "rows": 118287, "bytes": 2839016, "sha256": "...",
                         "columns": ["exact", "phash"], "version": 3} | null},   # null: --dedup off
    "val": {...}
  },
  "skipped": [{"path": "train2017/bad.jpg", "reason": "truncated JPEG"}, ...],
  "dropped": [{"path": "train2017/copy.jpg", "reason": "same pixels as val val2017/a.jpg"}, ...],  # --dedup drop
  "duplicates": {"name": "duplicates.json", "bytes": 261234, "sha256": "..."} | null   # null: --dedup off
}

Each sample in a tar, members in this order (sorted extensions, like webdataset's TarWriter), each a
USTAR regular file `<key>.<ext>` (mode 0444, a fixed mtime, so a tar's bytes depend only on its content):
  <key>.cls    decimal class index; labelled datasets only
  <key>.jpg    a JPEG every decoder renders the same, upright
  <key>.json   {"path", "width", "height", "split", "class", "exact", "phash"}: the source path relative to
               the root and the ORIGINAL width/height before any --max-side downscale, upright (EXIF
               orientation applied), so they are the stored JPEG's size whenever no downscale was asked for;
               the image's exact and perceptual hashes (EXACT_HASH, PERCEPTUAL_HASH) as 32 and 16 hex
               digits, null with --dedup off
Keys are unique in the dataset and contain no dots or slashes.

The .idx file is the text DALI's `wds2idx` writes (its `IndexCreator.create_index`; the tests compare
ours with its output byte for byte): a line `v1.2 <samples>`, then per sample one line listing each
member as `<ext> <data offset> <size> <member name>`, the offset in bytes from the start of the tar to
the member's data (its 512-byte header excluded). v1.1 files (no member name) are read too.

The per-split tables: `<split>-table.npy`, a NumPy structured array (`numpy.load(path, mmap_mode="r")`
maps it without reading it), one row per sample of the split in the order the shards hold them (shard by
shard as the manifest lists them, each in its .idx order), the columns TABLE_COLUMNS, each a fixed-size
little-endian field. Written by vaedist.shard.table (atomically, once every shard is written), read through
it too: a reader names the columns it needs (a table without them is a one-line error), so a column can be
added without breaking readers; TABLE_VERSION changes only when a column changes meaning or becomes required.
The loader's start-up reads this table (LOADER_COLUMNS) instead of every sample's .cls, .json and JPEG header:
a few dozen bytes per sample instead of the tars' pages. A directory without it (or with a version 1 table)
gets it, without re-decoding any image, from `python -m vaedist.shard.rebuild_table OUT_DIR` (REBUILD_TABLE).

The image hashes (HASH_FILE_COLUMNS) live in `<split>-hashes.npy`, a structured array like the table with the
same rows in the same order (row i of each is the same sample), listed in the manifest as the split's "hashes"
with its own size and sha256. A file of their own, not columns of the table, because the table is what every
start-up of every rank reads whole (local or over HTTP): the hashes were 24 of a hashed table's 82 bytes per
sample, read and checked by every start-up for the duplicate finder's sake alone. Tables of version 1 and 2
hold the hashes as two of their columns (HASH_COLUMNS) and have no hashes file; `read_hashes` (table.py) reads
either layout, so no reader asks where they are.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vaedist.errors import UserError
from vaedist.files import atomic_path, write_json_atomic
from vaedist.remote import is_url
from vaedist.remote import join as remote_join
from vaedist.remote import read_text as read_remote_text

SPLITS = ("train", "val")
RESHARD = "re-run python -m vaedist.shard with --overwrite"

# --- the files of a shard directory ------------------------------------------------------------------------

MANIFEST_NAME = "manifest.json"
# 2 (2026-12-01): "duplicates" names duplicates.json (format 1: the duplicate report itself, inline, which
# every start-up read: 261 kB, 0.37 % of a 10k-sample split, on a set made of near copies); read_duplicates
# reads both.
FORMAT_VERSION = 2
TAR_SUFFIX = ".tar"
INDEX_SUFFIX = ".idx"


def shard_stem(split: str, number: int) -> str:
    """`train`, 0 -> `train-000000`: the name of a shard's tar and index without their suffix."""
    return f"{split}-{number:06d}"


def tar_name(stem: str) -> str:
    return stem + TAR_SUFFIX


def index_name(stem: str) -> str:
    return stem + INDEX_SUFFIX


def manifest_path(shard_dir: str | Path) -> Path:
    return Path(shard_dir) / MANIFEST_NAME


DUPLICATES_NAME = "duplicates.json"


TABLE_SUFFIX = "-table.npy"


def table_name(split: str) -> str:
    """`train` -> `train-table.npy`: the split's per-sample table."""
    return split + TABLE_SUFFIX


HASHES_SUFFIX = "-hashes.npy"


def hashes_name(split: str) -> str:
    """`train` -> `train-hashes.npy`: the split's image hashes, rows aligned with its table's."""
    return split + HASHES_SUFFIX


_SPLIT = r"(?:" + "|".join(SPLITS) + r")"
_SHARD_STEM = _SPLIT + r"-\d{6}"
# Every kind of file the sharder writes into a shard directory, by name. --overwrite removes exactly these
# (and their temporaries); a run that finds shard files it did not plan refuses to mix with them.
DIRECTORY_FILES: dict[str, re.Pattern] = {
    "manifest": re.compile(re.escape(MANIFEST_NAME)),
    "duplicates": re.compile(re.escape(DUPLICATES_NAME)),
    "tar": re.compile(_SHARD_STEM + re.escape(TAR_SUFFIX)),
    "index": re.compile(_SHARD_STEM + re.escape(INDEX_SUFFIX)),
    "table": re.compile(_SPLIT + re.escape(TABLE_SUFFIX)),
    "hashes": re.compile(_SPLIT + re.escape(HASHES_SUFFIX)),
}
SHARD_FILES = ("tar", "index")  # the kinds that hold samples: their presence means a run has started


def is_directory_file(name: str, kinds: tuple[str, ...] | None = None) -> bool:
    """True if `name` is a file of the format (of one of `kinds`, default any)."""
    return any(DIRECTORY_FILES[kind].fullmatch(name) for kind in (kinds or DIRECTORY_FILES))


def temporary_name(path: Path) -> Path:
    """`train-000000.tar` -> `.train-000000.tar.tmp`: hidden while written, swept away by the next run if a
    kill left it behind; renamed to `path` once complete."""
    return path.with_name(f".{path.name}.tmp")


# --- the members of a sample ------------------------------------------------------------------------------

IMAGE_EXT = "jpg"
LABEL_EXT = "cls"
META_EXT = "json"
TAR_BLOCK = 512
TAR_RECORD = 20 * TAR_BLOCK  # like tarfile and GNU tar: the archive ends with two zero blocks, padded to this
MEMBER_MTIME = 1_500_000_000  # fixed: a tar's bytes, so its sha256, depend only on its content
MEMBER_MODE = 0o444


def member_exts(labelled: bool) -> tuple[str, ...]:
    """The members every sample has, in the order they are written (.cls only on labelled datasets)."""
    return (LABEL_EXT, IMAGE_EXT, META_EXT) if labelled else (IMAGE_EXT, META_EXT)


def member_name(key: str, ext: str) -> str:
    if "." in key or "/" in key:
        raise ValueError(f"sample key {key!r} must not contain dots or slashes")
    return f"{key}.{ext}"


def split_member_name(name: str) -> tuple[str, str]:
    """`train2017_000000000009.jpg` -> (`train2017_000000000009`, `jpg`)."""
    key, _, ext = name.partition(".")
    return key, ext


EXACT_HASH = ("xxh3-128 of b'RGBA8 <width> <height>\\n' and the upright image's pixels as RGBA bytes, alpha 255, "
              "row by row (the decoded pixels, mode-normalised to 8-bit RGB: a re-saved copy of the same pixels "
              "matches, a lossy re-encode does not)")
EXACT_HASH_BYTES = 16
PERCEPTUAL_HASH = ("imagehash.phash (64 bits, hash_size 8) of a 32x32 thumbnail of the upright image's green channel "
                   "(grey images: their one channel): the pixels at a 128x128 grid (PIL Image.resize, NEAREST), "
                   "box-averaged 4x4 (Image.reduce); bit 63 is the first bit of imagehash's hex string")
PERCEPTUAL_HASH_BITS = 64


@dataclass(frozen=True)
class ImageHashes:
    """The two hashes of one image (definitions: EXACT_HASH, PERCEPTUAL_HASH; computed by shard/fingerprint.py)."""

    exact: bytes  # EXACT_HASH_BYTES bytes
    perceptual: int  # PERCEPTUAL_HASH_BITS bits, as an unsigned integer

    @property
    def exact_hex(self) -> str:
        return self.exact.hex()

    @property
    def perceptual_hex(self) -> str:
        return f"{self.perceptual:016x}"


@dataclass(frozen=True)
class SampleMeta:
    """A sample's .json member."""

    path: str  # the source, relative to the dataset root
    width: int  # upright, before any --max-side downscale
    height: int
    split: str
    class_name: str | None  # "class" in the JSON; None on unlabelled datasets
    hashes: ImageHashes | None = None  # "exact" and "phash" in the JSON (hex); None with --dedup off

    def encode(self) -> bytes:
        hashes = self.hashes
        return json.dumps({"path": self.path, "width": self.width, "height": self.height, "split": self.split,
                           "class": self.class_name, "exact": hashes.exact_hex if hashes else None,
                           "phash": hashes.perceptual_hex if hashes else None}).encode()


def sample_members(key: str, jpeg: bytes, meta: SampleMeta, label: int | None) -> list[tuple[str, bytes]]:
    """(member name, data) of one sample, in the order they are written."""
    data = {IMAGE_EXT: jpeg, META_EXT: meta.encode()}
    if label is not None:
        data[LABEL_EXT] = str(label).encode()
    return [(member_name(key, ext), data[ext]) for ext in member_exts(label is not None)]


def member_bytes(size: int) -> int:
    """Bytes a member of `size` data bytes takes in the tar: its header, the data padded to a block."""
    return TAR_BLOCK + -(-size // TAR_BLOCK) * TAR_BLOCK


def tar_bytes(members: int) -> int:
    """Size of a tar whose members take `members` bytes: + two zero blocks, padded to a record."""
    return -(-(members + 2 * TAR_BLOCK) // TAR_RECORD) * TAR_RECORD


def meta_size(path: str, split: str, class_name: str | None, hashed: bool = False) -> int:
    """len(SampleMeta(path, width, height, split, class_name, hashes if hashed).encode()) for a 5-digit width
    and height, without encoding it when no character needs escaping (the planner asks for every sample:
    this halves the cost of the estimate on COCO's 164k samples)."""
    text = path + split + (class_name or "")
    if not (text.isascii() and text.isprintable()) or '"' in text or "\\" in text:
        return len(SampleMeta(path, 99999, 99999, split, class_name, _SOME_HASHES if hashed else None).encode())
    return (_META_FIXED_SIZE + len(path) + len(split) + (len(class_name) + 2 if class_name is not None else 4)
            + (_META_HASHES_SIZE if hashed else 0))


_SOME_HASHES = ImageHashes(bytes(EXACT_HASH_BYTES), 0)
_META_FIXED_SIZE = len(SampleMeta("", 99999, 99999, "", None).encode()) - 4  # the keys, punctuation, "null"
# hex digits in quotes instead of two nulls
_META_HASHES_SIZE = len(SampleMeta("", 99999, 99999, "", None, _SOME_HASHES).encode()) - _META_FIXED_SIZE - 4


def estimated_sample_bytes(image_bytes: float, path: str, split: str, class_name: str | None, label: int | None,
                           hashed: bool = False) -> float:
    """What a sample will take in its tar, its members as `sample_members` writes them, when its JPEG has
    about `image_bytes` bytes: the JPEG's padding is counted as half a block (its average)."""
    total = TAR_BLOCK + image_bytes + TAR_BLOCK / 2 + member_bytes(meta_size(path, split, class_name, hashed))
    return total + (member_bytes(len(str(label))) if label is not None else 0)


class DamagedMember(Exception):
    """A member whose content does not parse (changed after sharding: same size, other bytes)."""

    def __init__(self, ext: str, what: str):
        super().__init__(what)
        self.ext, self.what = ext, what


def _shown(raw: bytes) -> str:
    return repr(raw[:24]) + ("..." if len(raw) > 24 else "")


def decode_label(raw: bytes) -> int:
    try:
        return int(raw.decode().strip())
    except ValueError:  # UnicodeDecodeError included
        raise DamagedMember(LABEL_EXT, f"is not a class index ({_shown(raw)})") from None


def decode_original_size(raw: bytes) -> tuple[float, float]:
    """(width, height) before any --max-side downscale, from a sample's .json member."""
    try:
        meta = json.loads(raw)
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
        raise DamagedMember(META_EXT, f"is not valid JSON ({err}: {_shown(raw)})") from None
    try:
        return float(meta["width"]), float(meta["height"])
    except (KeyError, TypeError, ValueError):
        if not isinstance(meta, dict) or "width" not in meta or "height" not in meta:
            raise DamagedMember(META_EXT, f'lacks a "width" or "height" ({_shown(raw)})') from None
        raise DamagedMember(META_EXT, f'has a "width" or "height" that is not a number ({_shown(raw)})') from None


def decode_hashes(raw: bytes) -> ImageHashes | None:
    """The image hashes of a sample's .json member (None: sharded with --dedup off)."""
    try:
        meta = json.loads(raw)
        exact, phash = meta.get("exact"), meta.get("phash")
        if exact is None or phash is None:
            return None
        hashes = ImageHashes(bytes.fromhex(exact), int(phash, 16))
    except (ValueError, TypeError, AttributeError):
        raise DamagedMember(META_EXT, f'has no valid "exact" / "phash" hashes ({_shown(raw)})') from None
    if len(hashes.exact) != EXACT_HASH_BYTES or hashes.perceptual >> PERCEPTUAL_HASH_BITS:
        raise DamagedMember(META_EXT, f'has "exact" / "phash" hashes of the wrong length ({_shown(raw)})')
    return hashes


# --- the .idx grammar -------------------------------------------------------------------------------------

INDEX_VERSION = "v1.2"
IndexEntry = tuple[str, int, int]  # (member name, data offset in the tar, data size)


def member_entry(entries: list[IndexEntry], ext: str) -> tuple[int, int]:
    """(data offset, size) of a sample's `ext` member among its index entries."""
    for name, offset, size in entries:
        if split_member_name(name)[1] == ext:
            return offset, size
    raise KeyError(f"no .{ext} member among {[name for name, _, _ in entries]}")


def index_line(entries: list[IndexEntry]) -> str:
    """The .idx line of one sample from its members' (name, data offset, size)."""
    return " ".join(f"{split_member_name(name)[1]} {offset} {size} {name}" for name, offset, size in entries)


def index_text(lines: list[str]) -> str:
    """A whole .idx file from its sample lines (at least one: DALI rejects an empty tar)."""
    return f"{INDEX_VERSION} {len(lines)}\n" + "".join(line + "\n" for line in lines)


@dataclass
class ShardIndex:
    """One tar's parsed index: per sample, the (offset, size) of each member extension."""

    tar: Path
    index: Path
    members: list[dict[str, tuple[int, int]]]  # [sample] -> {"jpg": (offset, size), "cls": ..., "json": ...}
    keys: list[str]  # [sample] -> key (member name up to its first dot; v1.1 indexes: "<line number>")


def parse_index(tar: Path | str, index: Path | str, text: str | None = None) -> ShardIndex:
    """Parse a DALI .idx file (or its `text`, fetched from a URL). Malformed text is a one-line UserError
    naming the index."""
    try:
        lines = (Path(index).read_text() if text is None else text).splitlines()
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
            members.append({fields[i]: (int(fields[i + 1]), int(fields[i + 2])) for i in range(0, len(fields), group)})
            keys.append(split_member_name(fields[3])[0] if group == 4 else str(len(keys)))
        if len(members) != int(count):
            raise ValueError(f"header says {count} samples, the file lists {len(members)}")
    except (ValueError, IndexError) as err:
        raise UserError(f"index '{index}' is malformed ({err}); {RESHARD}")
    return ShardIndex(tar=tar, index=index, members=members, keys=keys)


# --- the per-split tables ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableColumn:
    """One column of the per-split table: a fixed-size NumPy field (no numpy import here: the dtype is text)."""

    name: str
    dtype: str  # a NumPy dtype string; "S" alone: bytes as wide as the split's longest value
    meaning: str


# The table's columns, in this order. `key`, `shard` and `position` join a row to its sample (and to the .idx
# line that locates its members); the loader's columns (LOADER_COLUMNS) are everything its start-up needs, so
# that it reads this table and not the tars. Nothing else: every start-up reads every byte of it.
TABLE_COLUMNS: tuple[TableColumn, ...] = (
    TableColumn("key", "S", "the sample's key: its members' name up to the first dot"),
    TableColumn("shard", "<u4", "the position of the sample's shard in the manifest's splits[split].shards"),
    TableColumn("position", "<u4", "the sample's position in that shard: its line in the .idx, its order in the tar"),
    TableColumn("jpeg_offset", "<u8", "the .jpg member's data offset in its tar (the .idx's), in bytes"),
    TableColumn("jpeg_size", "<u4", "the .jpg member's size in bytes"),
    TableColumn("width", "<u4", "the .json's width: the original's, upright, before any --max-side downscale"),
    TableColumn("height", "<u4", "the .json's height"),
    TableColumn("stored_width", "<u2", "the stored JPEG's width, from its frame header (JPEG sizes fit 16 bits)"),
    TableColumn("stored_height", "<u2", "the stored JPEG's height"),
    TableColumn("label", "<i4", "the .cls: the class index; -1 on unlabelled datasets"),
)
# The hashes file's columns (`<split>-hashes.npy`; in tables of version 1 and 2, the table's last two columns).
HASH_FILE_COLUMNS: tuple[TableColumn, ...] = (
    TableColumn("exact", f"V{EXACT_HASH_BYTES}", "EXACT_HASH, as its 16 bytes"),
    TableColumn("phash", "<u8", "PERCEPTUAL_HASH, as an unsigned 64-bit integer"),
)
LOADER_COLUMNS = ("jpeg_offset", "jpeg_size", "width", "height", "stored_width", "stored_height", "label")
HASH_COLUMNS = tuple(column.name for column in HASH_FILE_COLUMNS)  # no hashes at all with --dedup off
COMPUTED_COLUMNS = ("shard", "position")  # filled from the shards' order; every other column from the samples
# Bumped when a column changes meaning, moves, or a column every table must have is added (adding an optional
# one is not a bump: readers ask for theirs). 2 (2026-12-01): the loader's columns, always present, and
# PERCEPTUAL_HASH's thumbnail is a 128x128 sample box-averaged to 32x32 (version 1: a box average over every
# pixel, ~2 bits away). 3 (2026-12-01): the hashes left the table for `<split>-hashes.npy` (HASH_FILE_COLUMNS,
# same rows, the manifest's "hashes"), so start-up reads 58 instead of 82 bytes per sample with --dedup report;
# their meaning is version 2's. Version 2 tables (hashes as columns) load for training as they are and their
# hashes are read from the table; `python -m vaedist.shard.rebuild_table` turns them into version 3. Version 1
# tables (key, shard, position and the hashes) still load by the old start-up path (reading the tars); their
# perceptual hashes are refused (comparing the two thumbnails would miss copies silently).
TABLE_VERSION = 3
READABLE_TABLE_VERSIONS = (1, 2, 3)
HASHES_IN_TABLE_VERSIONS = (1, 2)  # the versions whose hashes are columns of the table (no hashes file)
REBUILD_TABLE = "python -m vaedist.shard.rebuild_table"  # rebuilds a shard directory's tables from its members, no decoding


@dataclass
class TableInfo:
    """A split's table, or its hashes file, as the manifest records it (the same fields: both are .npy files
    of one row per sample)."""

    name: str  # file name, relative to the shard directory
    rows: int
    bytes: int
    sha256: str
    columns: list[str]
    version: int = TABLE_VERSION

    @property
    def hashed(self) -> bool:
        """A table of version 1 or 2 that holds the image hashes as columns (version 3: the hashes file)."""
        return all(column in self.columns for column in HASH_COLUMNS)


# --- the manifest -----------------------------------------------------------------------------------------


@dataclass
class ShardInfo:
    name: str  # tar file name, relative to the shard directory
    index: str  # DALI index (.idx) file name, same stem
    samples: int
    bytes: int
    sha256: str


@dataclass
class SplitInfo:
    samples: int = 0
    shards: list[ShardInfo] = field(default_factory=list)
    table: TableInfo | None = None  # None: written before the tables existed
    hashes: TableInfo | None = None  # `<split>-hashes.npy`; None: --dedup off, or a table of version 1-2 (its columns)


@dataclass
class Manifest:
    dataset: str
    root: str
    tool: str
    options: dict
    classes: list[str] | None
    splits: dict[str, SplitInfo]
    skipped: list[dict]
    dropped: list[dict] = field(default_factory=list)  # {"path", "reason"}: removed by --dedup drop
    # {"name", "bytes", "sha256"} of duplicates.json (format 1: the report itself); read it with read_duplicates
    duplicates: dict | None = None
    created: str = ""
    format: int = FORMAT_VERSION

    @property
    def labelled(self) -> bool:
        return bool(self.classes)

    def to_json(self) -> dict:
        return asdict(self)


def write_manifest(manifest: Manifest, shard_dir: str | Path) -> Path:
    """Write atomically: the manifest's presence means the output is complete."""
    path = manifest_path(shard_dir)
    write_json_atomic(path, manifest.to_json())
    return path


def write_duplicates(report: dict, shard_dir: str | Path) -> dict:
    """Write the duplicate report (DuplicateReport.to_json) as duplicates.json, atomically; returns what the
    manifest records of it (name, bytes, sha256)."""
    data = (json.dumps(report, indent=1) + "\n").encode()
    with atomic_path(Path(shard_dir) / DUPLICATES_NAME, fsync=True) as temporary:
        temporary.write_bytes(data)
    return {"name": DUPLICATES_NAME, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def read_duplicates(shard_dir: str | Path, manifest: Manifest) -> dict | None:
    """The duplicate report the sharder wrote (None: --dedup off), from duplicates.json checked against the
    manifest's size and sha256, or from a format 1 manifest itself; a missing or changed file is one line."""
    entry = manifest.duplicates
    if entry is None or "name" not in entry:  # format 1: the report inline
        return entry
    path = Path(shard_dir) / entry["name"]
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"duplicate report '{path}' cannot be read ({err.strerror or err}): re-copy it or {RESHARD}") from None
    if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise UserError(f"duplicate report '{path}' does not match its size and sha256 in the manifest: re-copy it "
                        f"or {RESHARD}")
    return json.loads(data)


def load_manifest(shard_dir: str | Path) -> Manifest:
    """Read OUT_DIR/manifest.json (OUT_DIR may be a URL: vaedist.remote); a missing or unreadable manifest is a
    one-line UserError."""
    if is_url(shard_dir):
        url = remote_join(str(shard_dir), MANIFEST_NAME)
        return parse_manifest(read_remote_text(url, f"manifest '{url}'"), url)
    path = manifest_path(shard_dir)
    if not Path(shard_dir).is_dir():
        raise UserError(f"shard directory '{shard_dir}' does not exist (create it with: python -m vaedist.shard ...)")
    if not path.is_file():
        raise UserError(
            f"'{path}' not found: '{shard_dir}' is not a complete shard directory "
            "(run python -m vaedist.shard ... to write it, or re-run it to finish an interrupted one)"
        )
    return parse_manifest(path.read_text(), path)


def parse_manifest(text: str, path: Path | str) -> Manifest:
    try:
        raw = json.loads(text)
        splits = {
            name: SplitInfo(samples=s["samples"], shards=[ShardInfo(**sh) for sh in s["shards"]],
                            table=TableInfo(**s["table"]) if s.get("table") else None,
                            hashes=TableInfo(**s["hashes"]) if s.get("hashes") else None)
            for name, s in raw["splits"].items()
        }
        return Manifest(
            dataset=raw["dataset"],
            root=raw["root"],
            tool=raw["tool"],
            options=raw.get("options", {}),
            classes=raw.get("classes"),
            splits=splits,
            skipped=raw.get("skipped", []),
            dropped=raw.get("dropped", []),
            duplicates=raw.get("duplicates"),
            created=raw.get("created", ""),
            format=raw.get("format", FORMAT_VERSION),
        )
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"'{path}' is not a valid vaedist manifest ({err}); {RESHARD}")
