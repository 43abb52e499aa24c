"""Start-up checks of a split's shards: cheap, run before training starts, so a missing or truncated shard
stops with one line naming it instead of a C++ error mid-epoch. Shards behind a URL are checked the same way,
from the server's sizes (and index files).

  validate_split_table   the split's table (format.LOADER_COLUMNS) against the manifest and each tar's size
                         (a stat / HEAD per shard): no byte of a tar or .idx is read
  validate_split         shards without such a table (older vaedist): every .idx parsed and checked against
                         its tar's size; the start-up then reads the members (index.load_split_index)

The expensive check of every byte and every image is `vaedist.data.verify`, built on `check_shard`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vaedist import remote
from vaedist.errors import UserError
from vaedist.remote import is_url
from vaedist.shard.format import RESHARD, Manifest, ShardIndex, ShardInfo, member_exts, parse_index


def check_split_name(manifest: Manifest, split: str, shard_dir: Path | str) -> None:
    if split not in manifest.splits:
        known = ", ".join(sorted(manifest.splits)) or "none"
        raise UserError(f"split '{split}' is not in '{shard_dir}' (it has: {known}); set data.train_split / data.val_split")
    if manifest.splits[split].samples == 0 or not manifest.splits[split].shards:
        raise UserError(f"split '{split}' of '{shard_dir}' has no samples; {RESHARD}")


def check_split_count(manifest: Manifest, split: str, shard_dir: Path | str) -> None:
    """The split's `samples` in manifest.json must be the sum of its shards' (an edited or mixed-up manifest)."""
    info = manifest.splits[split]
    total = sum(shard.samples for shard in info.shards)
    if info.samples != total:
        raise UserError(f"'{shard_dir}/manifest.json' says split '{split}' has {info.samples} samples, its shards "
                        f"list {total}; {RESHARD}")


def check_shard(shard_dir: Path | str, info: ShardInfo, required: tuple[str, ...]) -> ShardIndex:
    """One shard against its index and its manifest entry (sizes only, no hashing); returns its parsed index."""
    if is_url(shard_dir):  # the server's sizes and index files: a 404 or a dead server is one line naming the file
        tar, idx_path = remote.join(str(shard_dir), info.name), remote.join(str(shard_dir), info.index)
        tar_bytes = remote.size(tar, f"shard '{tar}'")
        idx_text = remote.read_text(idx_path, f"index '{idx_path}' of shard '{tar}'")
    else:
        tar, idx_path = Path(shard_dir) / info.name, Path(shard_dir) / info.index
        if not tar.is_file():
            raise UserError(f"shard '{tar}' is missing; {RESHARD}")
        if not idx_path.is_file():
            raise UserError(f"index '{idx_path}' of shard '{tar}' is missing; {RESHARD}")
        tar_bytes, idx_text = tar.stat().st_size, None
    if info.bytes and tar_bytes != info.bytes:
        state = "truncated" if tar_bytes < info.bytes else "larger than recorded"
        raise UserError(f"shard '{tar}' is {state} ({tar_bytes} bytes, manifest says {info.bytes}); {RESHARD}")
    idx = parse_index(tar, idx_path, idx_text)
    if len(idx.members) != info.samples:
        raise UserError(
            f"index '{idx_path}' lists {len(idx.members)} samples but the manifest says shard '{tar}' has {info.samples}; {RESHARD}"
        )
    for n, members in enumerate(idx.members):
        missing = [ext for ext in required if ext not in members]
        if missing:
            raise UserError(f"shard '{tar}' sample {n} ('{idx.keys[n]}') has no .{missing[0]} member; {RESHARD}")
        end = max(off + size for off, size in members.values())
        if end > tar_bytes:
            raise UserError(
                f"index '{idx_path}' does not match shard '{tar}': sample {n} ends at byte {end}, "
                f"the tar has {tar_bytes}; {RESHARD}"
            )
    return idx


def validate_split(shard_dir: str | Path, manifest: Manifest, split: str) -> list[ShardIndex]:
    """Check every shard of `split` against its index and the manifest; return the parsed indexes."""
    shard_dir = str(shard_dir) if is_url(shard_dir) else Path(shard_dir)
    check_split_name(manifest, split, shard_dir)
    check_split_count(manifest, split, shard_dir)
    required = member_exts(manifest.labelled)
    return [check_shard(shard_dir, info, required) for info in manifest.splits[split].shards]


def _tar_size(shard_dir: Path | str, info: ShardInfo) -> tuple[str, int]:
    """(where, bytes) of a shard's tar: a stat, or the server's size; a missing tar is one line naming it."""
    if is_url(shard_dir):
        tar = remote.join(str(shard_dir), info.name)
        return tar, remote.size(tar, f"shard '{tar}'")
    tar = Path(shard_dir) / info.name
    if not tar.is_file():
        raise UserError(f"shard '{tar}' is missing; {RESHARD}")
    return str(tar), tar.stat().st_size


def validate_split_table(shard_dir: str | Path, manifest: Manifest, split: str, table: np.ndarray) -> None:
    """The split's table (read and hash-checked by shard.table.read_loader_table) against the manifest's shards
    and the tars' sizes: each shard's row count, and every JPEG inside its tar."""
    shard_dir = str(shard_dir) if is_url(shard_dir) else Path(shard_dir)
    check_split_name(manifest, split, shard_dir)
    check_split_count(manifest, split, shard_dir)
    shards = manifest.splits[split].shards
    where = f"the {split} table of '{shard_dir}'"
    if len(table) != manifest.splits[split].samples or (len(table) and int(table["shard"].max()) >= len(shards)):
        raise UserError(f"{where} does not list the manifest's {manifest.splits[split].samples} samples; {RESHARD}")
    counts = np.bincount(table["shard"], minlength=len(shards))
    ends = np.zeros(len(shards), dtype=np.uint64)
    np.maximum.at(ends, table["shard"], table["jpeg_offset"] + table["jpeg_size"].astype(np.uint64))
    for number, info in enumerate(shards):
        tar, tar_bytes = _tar_size(shard_dir, info)
        if info.bytes and tar_bytes != info.bytes:
            state = "truncated" if tar_bytes < info.bytes else "larger than recorded"
            raise UserError(f"shard '{tar}' is {state} ({tar_bytes} bytes, manifest says {info.bytes}); {RESHARD}")
        if counts[number] != info.samples:
            raise UserError(f"{where} lists {counts[number]} samples of shard '{tar}', the manifest {info.samples}; {RESHARD}")
        if int(ends[number]) > tar_bytes:
            raise UserError(f"{where} does not match shard '{tar}': a JPEG ends at byte {int(ends[number])}, "
                            f"the tar has {tar_bytes}; {RESHARD}")
