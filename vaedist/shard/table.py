"""The per-split tables (`train-table.npy`, `val-table.npy`; format: format.TABLE_COLUMNS): built, written, read.

    rows = TableRows.from_record(record)                  per shard, what its done record holds
    table = build_table([rows, ...])                      a split's shards, in the manifest's order
    info = write_table(out_dir, "train", table)           after the last shard: one .npy, atomically
    table = read_table(out_dir, manifest, "train")        a read-only memory map: table["phash"], ...

A table is a NumPy structured array saved with `numpy.save`, so any tool maps it (`numpy.load(path,
mmap_mode="r")`) without vaedist; its rows follow the samples in shard order, so row i of the train table is
the i-th sample of the split as the manifest's shards list them. While the sharder runs, each finished
shard's rows live in its done record (state.py), written with the shard: a run killed and resumed builds
the table from the same records, so it comes out byte for byte like an uninterrupted run's.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vaedist.errors import UserError
from vaedist.shard.format import (HASH_COLUMNS, RESHARD, TABLE_COLUMNS, ImageHashes, Manifest, TableInfo,
                                  table_name, temporary_name)


@dataclass(frozen=True)
class TableRows:
    """The rows of one shard: its samples' keys and hashes (None with --dedup off), in the shard's order."""

    keys: list[str]
    hashes: list[ImageHashes] | None

    def to_record(self) -> dict:
        """JSON for the shard's done record: hashes as hex, like the samples' .json members."""
        hashes = [[h.exact_hex, h.perceptual_hex] for h in self.hashes] if self.hashes is not None else None
        return {"keys": self.keys, "hashes": hashes}

    @classmethod
    def from_record(cls, record: dict) -> "TableRows":
        hashes = record["hashes"]
        return cls(keys=list(record["keys"]),
                   hashes=[ImageHashes(bytes.fromhex(e), int(p, 16)) for e, p in hashes] if hashes is not None else None)


def table_dtype(key_width: int, hashed: bool) -> np.dtype:
    """The table's row type: TABLE_COLUMNS, keys as wide as the longest (at least 1), hashes when hashed."""
    fields = [(c.name, f"S{max(1, key_width)}" if c.dtype == "S" else c.dtype) for c in TABLE_COLUMNS
              if hashed or c.name not in HASH_COLUMNS]
    return np.dtype(fields)


def build_table(shards: list[TableRows]) -> np.ndarray:
    """One structured array from the rows of a split's shards, in the order given (the manifest's)."""
    hashed = all(rows.hashes is not None for rows in shards)
    keys = [key.encode("ascii") for rows in shards for key in rows.keys]
    table = np.zeros(len(keys), table_dtype(max(map(len, keys), default=1), hashed))
    table["key"] = keys
    table["shard"] = np.repeat(np.arange(len(shards), dtype=np.uint32), [len(rows.keys) for rows in shards])
    table["position"] = np.concatenate([np.arange(len(rows.keys), dtype=np.uint32) for rows in shards]
                                       or [np.zeros(0, np.uint32)])
    if hashed:
        hashes = [h for rows in shards for h in rows.hashes]
        table["exact"] = np.frombuffer(b"".join(h.exact for h in hashes), dtype=table.dtype["exact"])
        table["phash"] = np.array([h.perceptual for h in hashes], dtype=np.uint64)
    return table


def write_table(shard_dir: str | Path, split: str, table: np.ndarray) -> TableInfo:
    """Write `<split>-table.npy` under a temporary name, fsync, rename: it is either absent or whole."""
    path = Path(shard_dir) / table_name(split)
    temporary = temporary_name(path)
    try:
        with open(temporary, "wb") as fh:
            np.lib.format.write_array(fh, table, allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())
        data = temporary.read_bytes()  # a few MB even for COCO: hash what is on disk, not what we meant to write
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return TableInfo(name=path.name, rows=len(table), bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
                     columns=list(table.dtype.names))


def read_table(shard_dir: str | Path, manifest: Manifest, split: str, *, hashes: bool = False,
               verify: bool = False) -> np.ndarray:
    """The split's table, memory-mapped read-only. One-line UserErrors: no table in this manifest (older
    shards), `hashes` asked of a table written with --dedup off, a missing or changed file (size; the
    sha256 too with `verify`)."""
    info = manifest.splits[split].table if split in manifest.splits else None
    if info is None:
        raise UserError(f"'{shard_dir}' has no {split} table (written before vaedist kept per-split tables); {RESHARD}")
    if hashes and not info.hashed:
        raise UserError(f"'{shard_dir}' was sharded with --dedup off: its {split} table has no image hashes; "
                        f"re-run python -m vaedist.shard with --dedup report --overwrite (it decodes every image once)")
    path = Path(shard_dir) / info.name
    if not path.is_file() or path.stat().st_size != info.bytes:
        found = f"{path.stat().st_size} bytes" if path.is_file() else "missing"
        raise UserError(f"table '{path}' is {found}, the manifest says {info.bytes} bytes: re-copy it; {RESHARD}")
    if verify and hashlib.sha256(path.read_bytes()).hexdigest() != info.sha256:
        raise UserError(f"table '{path}' does not match its sha256 in the manifest: re-copy it; {RESHARD}")
    try:
        table = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        raise UserError(f"table '{path}' is not a NumPy table ({err}); {RESHARD}") from None
    if table.dtype.names is None or list(table.dtype.names) != info.columns or len(table) != info.rows:
        raise UserError(f"table '{path}' does not have the rows and columns its manifest lists; {RESHARD}")
    return table
