"""Start-up checks of a split's shards: cheap (stat sizes, parse the .idx files), run before training starts,
so a missing or truncated shard stops with one line naming it instead of a C++ error mid-epoch.

`verify_split` is the expensive, optional check: SHA-256 of every tar against the manifest (on every core,
`vaedist.data.hashing`), then one pass
of DALI's own `fn.readers.webdataset` over the tars and index files (missing_component_behavior="error").
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from vaedist.data.backend import dali_available
from vaedist.data.hashing import hash_files
from vaedist import remote
from vaedist.errors import UserError
from vaedist.remote import is_url
from vaedist.shard.format import RESHARD, Manifest, ShardIndex, member_exts, parse_index


def check_split_name(manifest: Manifest, split: str, shard_dir: Path | str) -> None:
    if split not in manifest.splits:
        known = ", ".join(sorted(manifest.splits)) or "none"
        raise UserError(f"split '{split}' is not in '{shard_dir}' (it has: {known}); set data.train_split / data.val_split")
    if manifest.splits[split].samples == 0 or not manifest.splits[split].shards:
        raise UserError(f"split '{split}' of '{shard_dir}' has no samples; {RESHARD}")


def validate_split(shard_dir: str | Path, manifest: Manifest, split: str) -> list[ShardIndex]:
    """Check every shard of `split` against its index and the manifest; return the parsed indexes."""
    url = is_url(shard_dir)
    shard_dir = str(shard_dir) if url else Path(shard_dir)
    check_split_name(manifest, split, shard_dir)
    required = member_exts(manifest.labelled)
    indexes = []
    for info in manifest.splits[split].shards:
        if url:  # the server's sizes and index files: a 404 or a dead server is one line naming the file
            tar, idx_path = remote.join(shard_dir, info.name), remote.join(shard_dir, info.index)
            tar_bytes = remote.size(tar, f"shard '{tar}'")
            idx_text = remote.read_text(idx_path, f"index '{idx_path}' of shard '{tar}'")
        else:
            tar, idx_path = shard_dir / info.name, shard_dir / info.index
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
        indexes.append(idx)
    return indexes


def verify_split(shard_dir: str | Path, manifest: Manifest, split: str, *, dali_reader: bool = True,
                 workers: int | None = None, progress: Callable[[str], None] | None = None) -> None:
    """Hash every tar of `split` (`workers` at a time, default every core) and compare with the manifest
    (slow: reads every byte); `progress` gets the lines with the time left."""
    if is_url(shard_dir):
        raise UserError(f"verify reads every byte of every shard: run it where the shards are stored, not on "
                        f"'{shard_dir}'")
    shard_dir = Path(shard_dir)
    validate_split(shard_dir, manifest, split)
    infos = manifest.splits[split].shards
    digests = hash_files([shard_dir / info.name for info in infos], workers=workers, label=split, progress=progress)
    for info in infos:  # the first damaged shard in manifest order, whichever thread finished first
        if info.sha256 and digests[shard_dir / info.name] != info.sha256:
            raise UserError(f"shard '{shard_dir / info.name}' does not match its SHA-256 in the manifest; {RESHARD}")
    if dali_reader and dali_available():
        from vaedist.data.dali import read_with_webdataset_reader  # nvidia.dali: optional (checked just above)

        try:
            read_with_webdataset_reader([shard_dir / s.name for s in infos], [shard_dir / s.index for s in infos],
                                        list(member_exts(manifest.labelled)))
        except RuntimeError as err:
            last = [line for line in str(err).splitlines() if line.strip() and "pipeline" not in line]
            raise UserError(f"DALI's webdataset reader rejects split '{split}' of '{shard_dir}': "
                            f"{last[-1] if last else err}; {RESHARD}")
