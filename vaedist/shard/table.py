"""The per-split tables and hashes files (`train-table.npy`, `train-hashes.npy`; format: format.TABLE_COLUMNS,
format.HASH_FILE_COLUMNS): built, written, read.

    rows = TableRows.of_samples(keys, hashes, loader_columns(jpegs, sizes, labels))   per shard, in its order
    record = rows.to_record(); TableRows.from_record(record)   what the shard's done record holds (state.py)
    table = build_table([rows, ...])                       a split's shards, in the manifest's order
    hashes = build_hashes([rows, ...])                     their image hashes, row for row (--dedup report/drop)
    info = write_table(out_dir, "train", table)            once every shard is written: one .npy, atomically
    info = write_hashes(out_dir, "train", hashes)          likewise
    table = read_table(out_dir, manifest, "train", columns=("key",))   a read-only memory map
    hashes = read_hashes(out_dir, manifest, "train")       `exact`, `phash`, row i = the table's row i: from the
                                                           hashes file, or from a version 1-2 table's columns
    table = read_loader_table(shard_dir, manifest, "train")  the loader's start-up: read whole (local or URL),
                                                           checked against the manifest's size and sha256

A table is a NumPy structured array saved with `numpy.save`, so any tool maps it (`numpy.load(path,
mmap_mode="r")`) without vaedist; its rows follow the samples in shard order, so row i of the train table is
the i-th sample of the split as the manifest's shards list them. While the sharder runs, each finished
shard's rows live in its done record (state.py), written with the shard: a run killed and resumed builds
the table from the same records, so it comes out byte for byte like an uninterrupted run's. The records
hold the hashes beside the other columns (as they always have): only the files written from them differ.

A new column is a TableColumn in format.py plus its values in `TableRows.columns` where the sharder builds
the rows; nothing here names a column except the computed ones (shard, position) and the helpers that turn
the sharder's values into columns (hashes, loader columns). A directory sharded before a column existed gets
it from `python -m vaedist.shard.rebuild_table` (rebuild_table.py: from the members, no decoding).
"""
from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from vaedist import remote
from vaedist.errors import UserError
from vaedist.shard.format import (COMPUTED_COLUMNS, HASH_COLUMNS, HASH_FILE_COLUMNS, HASHES_IN_TABLE_VERSIONS,
                                  LOADER_COLUMNS, READABLE_TABLE_VERSIONS, REBUILD_TABLE, RESHARD, TABLE_COLUMNS,
                                  TABLE_VERSION, ImageHashes, Manifest, TableColumn, TableInfo, hashes_name, table_name,
                                  temporary_name)

_COLUMNS = {column.name: column for column in (*TABLE_COLUMNS, *HASH_FILE_COLUMNS)}  # what a record may hold
REHASH = "re-run python -m vaedist.shard with --dedup report --overwrite (it decodes every image once)"


@dataclass(frozen=True)
class TableRows:
    """One shard's rows, in its order: column name -> one JSON value per sample (text for `key`, hex for a
    bytes ("V") column, numbers otherwise), the table's columns and the hashes alike. `shard` and `position` are
    not stored: build_table computes them."""

    columns: dict[str, list]

    def __post_init__(self):
        unknown = set(self.columns) - set(_COLUMNS) | set(self.columns) & set(COMPUTED_COLUMNS)
        if unknown or "key" not in self.columns or len({len(v) for v in self.columns.values()}) > 1:
            raise ValueError(f"table rows need 'key' and columns of TABLE_COLUMNS of one length, got {sorted(self.columns)}")

    def __len__(self) -> int:
        return len(self.columns["key"])

    @classmethod
    def of_samples(cls, keys: list[str], hashes: list[ImageHashes] | None,
                   loader: dict[str, list[int]] | None = None) -> "TableRows":
        """`loader`: `loader_columns(...)` of the same samples (None: a table without them, the tests' old shards)."""
        columns: dict[str, list] = {"key": list(keys), **(loader or {})}
        if hashes is not None:
            columns["exact"] = [h.exact_hex for h in hashes]
            columns["phash"] = [h.perceptual for h in hashes]
        return cls(columns)

    @property
    def keys(self) -> list[str]:
        return self.columns["key"]

    @property
    def hashes(self) -> list[ImageHashes] | None:
        if not all(name in self.columns for name in HASH_COLUMNS):
            return None
        return [ImageHashes(bytes.fromhex(e), int(p)) for e, p in zip(self.columns["exact"], self.columns["phash"])]

    def to_record(self) -> dict:
        return dict(self.columns)

    @classmethod
    def from_record(cls, record: dict) -> "TableRows":
        return cls({name: list(values) for name, values in record.items()})


def loader_columns(jpegs: list[tuple[int, int]], sizes: list[tuple[int, int, int, int]],
                   labels: list[int]) -> dict[str, list[int]]:
    """The loader's columns of a shard's samples: each one's JPEG (data offset in the tar, size), its
    (width, height) original then stored, its class index (-1: unlabelled)."""
    if not len(jpegs) == len(sizes) == len(labels):
        raise ValueError(f"loader columns of unequal lengths: {len(jpegs)}, {len(sizes)}, {len(labels)}")
    offsets, jpeg_sizes = (list(c) for c in zip(*jpegs)) if jpegs else ([], [])
    width, height, stored_width, stored_height = (list(c) for c in zip(*sizes)) if sizes else ([], [], [], [])
    return dict(zip(LOADER_COLUMNS, (offsets, jpeg_sizes, width, height, stored_width, stored_height, list(labels))))


def build_table(shards: list[TableRows], empty_columns: Sequence[str] = ("key", *LOADER_COLUMNS)) -> np.ndarray:
    """The split's table from the rows of its shards, in the order given (the manifest's). Its columns:
    TABLE_COLUMNS's order, those every shard has (the hashes never: build_hashes). A split without shards
    (every one of its images rejected) has no rows to say which: it gets `empty_columns`, the columns its
    shards would have had, so that its zero-row table has the same columns as any other the same run writes."""
    present = set.intersection(*(set(rows.columns) for rows in shards)) if shards else set(empty_columns)
    columns = [c for c in TABLE_COLUMNS if c.name in present or c.name in COMPUTED_COLUMNS]
    table = _structured(shards, columns)
    table["shard"] = np.repeat(np.arange(len(shards), dtype=np.uint32), [len(rows) for rows in shards])
    table["position"] = np.concatenate([np.arange(len(rows), dtype=np.uint32) for rows in shards] or [np.zeros(0, np.uint32)])
    return table


def build_hashes(shards: list[TableRows]) -> np.ndarray:
    """The split's hashes file from the same rows as its table (row i of each is the same sample): every shard
    must carry the hashes (a --dedup report or drop run); a split without shards gets zero rows."""
    if any(rows.hashes is None for rows in shards):
        raise ValueError("build_hashes needs the hashes of every shard (a run with --dedup off has none)")
    return _structured(shards, list(HASH_FILE_COLUMNS))


def _structured(shards: list[TableRows], columns: list[TableColumn]) -> np.ndarray:
    """A structured array of `columns`, filled from the shards' rows (the computed columns left at zero)."""
    keys = [key.encode("ascii") for rows in shards for key in rows.keys]
    width = max(map(len, keys), default=1)
    dtype = np.dtype([(c.name, f"S{width}" if c.dtype == "S" else c.dtype) for c in columns])
    array = np.zeros(len(keys), dtype)
    for column in columns:
        name, field = column.name, dtype[column.name]
        if name in COMPUTED_COLUMNS:
            continue
        values = [v for rows in shards for v in rows.columns[name]]
        if name == "key":
            array[name] = keys
        elif field.kind == "V":  # bytes stored as hex in the records
            array[name] = np.frombuffer(b"".join(bytes.fromhex(v) for v in values), dtype=field)
        else:
            array[name] = np.array(values, dtype=field)
    return array


def write_table(shard_dir: str | Path, split: str, table: np.ndarray) -> TableInfo:
    """Write `<split>-table.npy` under a temporary name, fsync, rename: it is either absent or whole."""
    return _write_npy(Path(shard_dir) / table_name(split), table)


def write_hashes(shard_dir: str | Path, split: str, hashes: np.ndarray) -> TableInfo:
    """Write `<split>-hashes.npy` the same way."""
    return _write_npy(Path(shard_dir) / hashes_name(split), hashes)


def _write_npy(path: Path, array: np.ndarray) -> TableInfo:
    temporary = temporary_name(path)
    try:
        with open(temporary, "wb") as fh:
            np.lib.format.write_array(fh, array, allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())
        data = temporary.read_bytes()  # a few MB even for COCO: hash what is on disk, not what we meant to write
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return TableInfo(name=path.name, rows=len(array), bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
                     columns=list(array.dtype.names), version=TABLE_VERSION)


def read_table(shard_dir: str | Path, manifest: Manifest, split: str, *, columns: Sequence[str] = (),
               verify: bool = False) -> np.ndarray:
    """The split's table, memory-mapped read-only, with at least `columns` (the image hashes: read_hashes).
    One-line UserErrors: no table in this manifest (older shards), another table version, a column missing, a
    missing or changed file (its size; its sha256 too with `verify`)."""
    info = manifest.splits[split].table if split in manifest.splits else None
    path = Path(shard_dir) / (info.name if info else table_name(split))
    if info is None:
        raise UserError(f"'{shard_dir}' has no {split} table (written before vaedist kept per-split tables); {RESHARD}")
    if info.version not in READABLE_TABLE_VERSIONS:
        raise UserError(f"table '{path}' is version {info.version}, this vaedist reads versions "
                        f"{', '.join(map(str, READABLE_TABLE_VERSIONS))}; {RESHARD}")
    missing = [name for name in columns if name not in info.columns]
    if missing:
        raise UserError(f"table '{path}' has no column {', '.join(missing)} (written by an older vaedist); {RESHARD}")
    return _load_npy(path, info, verify, "table", f"re-copy it or {RESHARD}")


def read_hashes(shard_dir: str | Path, manifest: Manifest, split: str, *, verify: bool = False) -> np.ndarray:
    """The split's image hashes (fields `exact`, `phash`; row i is the table's row i), memory-mapped read-only:
    from `<split>-hashes.npy` (table version 3), or from the table's own columns (versions 1 and 2: no hashes
    file). One-line UserErrors: no table, sharded with --dedup off, hashes of the previous perceptual hash
    (version 1), a missing or changed file (size; sha256 with `verify`), rows that are not the table's."""
    table = read_table(shard_dir, manifest, split)  # its checks, and the rows the hashes must match
    info = manifest.splits[split].table
    where = Path(shard_dir) / info.name
    if info.version == 1:
        raise UserError(f"table '{where}' is version 1: its perceptual hashes are of the previous thumbnail "
                        f"(a box average over every pixel), which version {TABLE_VERSION}'s do not match; {REHASH}")
    hashes = manifest.splits[split].hashes
    if info.version in HASHES_IN_TABLE_VERSIONS:
        if not info.hashed:
            raise UserError(f"'{shard_dir}' was sharded with --dedup off: its {split} table has no image hashes; {REHASH}")
        return read_table(shard_dir, manifest, split, columns=HASH_COLUMNS, verify=verify)[list(HASH_COLUMNS)]
    if hashes is None:
        raise UserError(f"'{shard_dir}' was sharded with --dedup off: its {split} split has no image hashes "
                        f"({hashes_name(split)}); {REHASH}")
    path = Path(shard_dir) / hashes.name
    fix = f"re-copy it, or rebuild it without decoding: {REBUILD_TABLE} {shard_dir}"
    found = _load_npy(path, hashes, verify, "hashes file", fix)
    if list(found.dtype.names) != list(HASH_COLUMNS) or len(found) != len(table):
        raise UserError(f"hashes file '{path}' does not have the table's {len(table)} rows of {', '.join(HASH_COLUMNS)}: {fix}")
    return found


def _load_npy(path: Path, info: TableInfo, verify: bool, what: str, fix: str) -> np.ndarray:
    """`path` memory-mapped read-only, checked against the manifest's `info`: size, sha256 (`verify`), the
    columns and the row count."""
    if not path.is_file() or path.stat().st_size != info.bytes:
        found = f"{path.stat().st_size} bytes" if path.is_file() else "missing"
        raise UserError(f"{what} '{path}' is {found}, the manifest says {info.bytes} bytes: {fix}")
    if verify and hashlib.sha256(path.read_bytes()).hexdigest() != info.sha256:
        raise UserError(f"{what} '{path}' does not match its sha256 in the manifest: {fix}")
    return _parsed(path, info, what, path, fix, mmap_mode="r")


def _parsed(source, info: TableInfo, what: str, where, fix: str, **load) -> np.ndarray:
    """np.load(source) (a path or a file object), with the rows and columns the manifest's `info` lists."""
    try:
        array = np.load(source, allow_pickle=False, **load)
    except ValueError as err:
        raise UserError(f"{what} '{where}' is not a NumPy table ({err}): {fix}") from None
    if array.dtype.names is None or list(array.dtype.names) != info.columns or len(array) != info.rows:
        raise UserError(f"{what} '{where}' does not have the rows and columns its manifest lists: {fix}")
    return array


class NoLoaderTable(Exception):
    """The manifest lists no table with the loader's columns (sharded by an older vaedist): `str(err)` is the
    one-line hint naming the command that adds it; the loader takes the old path (reading the tars)."""


def read_loader_table(shard_dir: str | Path, manifest: Manifest, split: str) -> np.ndarray:
    """The split's table with LOADER_COLUMNS, read whole into memory (from disk or its URL: one request) and
    checked against the manifest's size and sha256; a table that does not match is a one-line UserError
    naming it. NoLoaderTable when the manifest lists none with those columns."""
    info = manifest.splits[split].table
    url = remote.is_url(shard_dir)
    if info is None or info.version < 2 or not set(LOADER_COLUMNS) <= set(info.columns):
        how = ("re-upload the directory after running it on a local copy" if url else "")
        raise NoLoaderTable(f"'{shard_dir}' has no {split} table with the loader's columns (sharded by an older "
                            f"vaedist), so start-up reads every sample's members from the tars; add the table "
                            f"without re-decoding: {REBUILD_TABLE} {shard_dir}" + (f" ({how})" if how else ""))
    where = remote.join(str(shard_dir), info.name) if url else Path(shard_dir) / info.name
    fix = "upload it again" if url else f"re-copy it, or rebuild it: {REBUILD_TABLE} {shard_dir}"
    try:
        data = remote.read_bytes(str(where), f"table '{where}'") if url else Path(where).read_bytes()
    except FileNotFoundError:
        raise UserError(f"table '{where}' is missing (the manifest lists it): {fix}") from None
    except OSError as err:
        raise UserError(f"table '{where}' cannot be read ({err.strerror or err}): {fix}") from None
    if len(data) != info.bytes:
        raise UserError(f"table '{where}' is {len(data)} bytes, the manifest says {info.bytes}: {fix}")
    if hashlib.sha256(data).hexdigest() != info.sha256:
        raise UserError(f"table '{where}' does not match its sha256 in the manifest: {fix}")
    return _parsed(io.BytesIO(data), info, "table", where, fix)
