"""Start-up checks of a split's shards: cheap (the split's count, stat sizes, parse the .idx files), run
before training starts, so a missing or truncated shard stops with one line naming it instead of a C++ error
mid-epoch. Shards behind a URL are checked the same way, from the server's sizes and index files. The
expensive check of every byte and every image is `vaedist.data.verify`, built on `check_shard`.
"""
from __future__ import annotations

from pathlib import Path

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
