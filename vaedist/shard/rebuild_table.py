"""Rebuild a shard directory's per-split tables (and hashes files) from its members, without decoding an image.

    python -m vaedist.shard.rebuild_table SHARDS        # every split of SHARDS/manifest.json

For shards written before the table held the loader's columns (format.TABLE_VERSION 2): without them the
loader's start-up reads every sample's .cls, .json and JPEG header from the tars (a cold start reads the
whole split). For version 2 tables, whose image hashes are columns every start-up reads: version 3 moves
them into `<split>-hashes.npy`. This reads, once, per sample its .idx line, its .json (original size, the
image hashes when they have the current meaning: sharded with --dedup on by a vaedist that wrote a version
2 or 3 table), its .cls and its JPEG's frame header (the stored size); then writes each `<split>-table.npy`
and `<split>-hashes.npy` as the sharder does (temporary name, fsync, rename; byte for byte the sharder's)
and the manifest with their sizes and sha256 (atomically, last). The shards themselves are not touched.

A kill at any point leaves a directory that loads: the old manifest with the old tables (a table renamed in
before the manifest does not match it: the loader names it and this command, which fixes it when run again).
A damaged member stops with one line naming its shard, key and member (check with vaedist.data.verify).
"""
from __future__ import annotations

import argparse
import mmap
import sys
from pathlib import Path

from vaedist.errors import UserError, run_cli
from vaedist.jpeg import JpegProblem, stored_size
from vaedist.remote import is_url
from vaedist.shard.format import (IMAGE_EXT, LABEL_EXT, META_EXT, RESHARD, DamagedMember, Manifest, ShardInfo,
                                  decode_hashes, decode_label, decode_original_size, load_manifest, manifest_path,
                                  parse_index, write_manifest)
from vaedist.shard.table import TableRows, build_hashes, build_table, loader_columns, write_hashes, write_table

# The table versions whose directories' .json hashes have the current meaning (PERCEPTUAL_HASH's sampled
# thumbnail, since version 2): their hashes are carried over; older ones' are left out (format.TABLE_VERSION).
CURRENT_HASHES_FROM_VERSION = 2


def shard_rows(shard_dir: Path, info: ShardInfo, labelled: bool, keep_hashes: bool = True) -> TableRows:
    """One shard's table rows, read from its .idx and members; the .json's image hashes only with `keep_hashes`."""
    tar, index_path = shard_dir / info.name, shard_dir / info.index
    if not tar.is_file() or not index_path.is_file():
        raise UserError(f"{'shard' if not tar.is_file() else 'index'} "
                        f"'{tar if not tar.is_file() else index_path}' is missing; {RESHARD}")
    if tar.stat().st_size != info.bytes:
        raise UserError(f"shard '{tar}' is {tar.stat().st_size} bytes, the manifest says {info.bytes}: re-copy it or {RESHARD}")
    index = parse_index(tar, index_path)
    if len(index.members) != info.samples:
        raise UserError(f"index '{index_path}' lists {len(index.members)} samples, the manifest says {info.samples}; {RESHARD}")
    keys, hashes, jpegs, sizes, labels = [], [], [], [], []
    with open(tar, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        for members, key in zip(index.members, index.keys):
            ext = META_EXT
            try:
                if IMAGE_EXT not in members or META_EXT not in members or (labelled and LABEL_EXT not in members):
                    raise UserError(f"shard '{tar}' sample '{key}' lacks a member; {RESHARD}")
                if any(offset + size > len(data) for offset, size in members.values()):
                    raise UserError(f"index '{index_path}' points past the end of shard '{tar}'; {RESHARD}")
                meta = data[slice(members[META_EXT][0], sum(members[META_EXT]))]
                width, height = decode_original_size(meta)
                hashes.append(decode_hashes(meta))
                ext = LABEL_EXT
                labels.append(decode_label(data[slice(members[LABEL_EXT][0], sum(members[LABEL_EXT]))]) if labelled else -1)
                ext = IMAGE_EXT
                offset, size = members[IMAGE_EXT]
                stored = stored_size(lambda n, offset=offset: data[offset : offset + n], size)
            except DamagedMember as err:
                raise UserError(f"shard '{tar}' is damaged: sample '{key}' has a .{err.ext} member that {err.what}: "
                                f"re-copy it or {RESHARD}") from None
            except JpegProblem as err:
                raise UserError(f"shard '{tar}' is damaged: sample '{key}' has a .{ext} member that {err}: "
                                f"re-copy it or {RESHARD}") from None
            keys.append(key)
            jpegs.append((offset, size))
            sizes.append((int(width), int(height), *stored))
    hashed = keep_hashes and all(h is not None for h in hashes)
    return TableRows.of_samples(keys, hashes if hashed else None, loader_columns(jpegs, sizes, labels))


def rebuild_tables(shard_dir: str | Path, say=print) -> Manifest:
    """Write every split's table and hashes file from the shards' members, then the manifest that lists them."""
    if is_url(shard_dir):
        raise UserError(f"'{shard_dir}' is a URL: rebuild the tables on a local copy of the shard directory, "
                        "then upload its *-table.npy and *-hashes.npy files and manifest.json")
    shard_dir = Path(shard_dir)
    manifest = load_manifest(shard_dir)
    for name, split in manifest.splits.items():
        # The .json's perceptual hash has the current meaning only where the sharder wrote a current table: an
        # older directory's are of the previous thumbnail (format.TABLE_VERSION), and mixing the two would miss
        # copies silently, so it gets no hashes file (the duplicate finder then says to re-shard).
        current = split.table is not None and split.table.version >= CURRENT_HASHES_FROM_VERSION
        # a split without shards (every image rejected) has no .json to ask: it keeps hashes if it had them
        had_hashes = split.hashes is not None or (split.table is not None and split.table.hashed)
        rows = [shard_rows(shard_dir, info, manifest.labelled, keep_hashes=current) for info in split.shards]
        split.table = write_table(shard_dir, name, build_table(rows)) if rows or split.table else None
        if split.table is None:
            continue  # no shards and no table: nothing to rebuild from
        say(f"{name}: {split.table.rows} rows, {split.table.bytes / 1e6:.2f} MB -> {shard_dir / split.table.name} "
            f"(columns: {', '.join(split.table.columns)})")
        hashed = all(r.hashes is not None for r in rows) if rows else current and had_hashes
        split.hashes = write_hashes(shard_dir, name, build_hashes(rows)) if hashed else None
        if split.hashes is not None:
            say(f"{name}: {split.hashes.rows} image hashes, {split.hashes.bytes / 1e6:.2f} MB -> "
                f"{shard_dir / split.hashes.name}")
        if not current:
            say(f"{name}: no image hashes carried over (sharded by an older vaedist, whose perceptual hash differs); "
                f"for duplicate checks re-run python -m vaedist.shard with --dedup report --overwrite")
    write_manifest(manifest, shard_dir)  # last, atomically: it lists the new tables' sizes and sha256
    say(f"wrote {manifest_path(shard_dir)}")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vaedist.shard.rebuild_table", description=__doc__.split("\n\n")[0])
    parser.add_argument("shards", help="the shard directory (holds manifest.json)")
    args = parser.parse_args(argv)
    rebuild_tables(args.shards, say=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":  # pragma: no cover
    run_cli(lambda: main(sys.argv[1:]), prog="vaedist.shard.rebuild_table")
