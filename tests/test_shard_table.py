"""The per-split tables beside the manifest (`train-table.npy`, `val-table.npy`): one row per sample in shard
order, read back with numpy alone and checked against the shards as tarfile and DALI's wds2idx see them."""
from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import xxhash
from PIL import Image

from vaedist.errors import UserError
from vaedist.shard import load_manifest, shard_dataset
from vaedist.shard.format import TABLE_COLUMNS, split_member_name, table_name, write_manifest
from vaedist.shard.table import read_table


@pytest.fixture(scope="module")
def food_table_shards(sample_trees, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("table") / "food101"
    shard_dataset("food101", sample_trees["food101"], out, workers=2, shard_size="300KB", progress=False)
    return out


def _tar_keys(path: Path) -> list[str]:
    """The sample keys of a tar in member order, as tarfile reads them."""
    with tarfile.open(path) as tar:
        keys = [split_member_name(m.name)[0] for m in tar.getmembers()]
    return list(dict.fromkeys(keys))


def test_each_row_is_the_sample_at_that_place_in_the_shards(food_table_shards):
    out = food_table_shards
    manifest = load_manifest(out)
    for split, info in manifest.splits.items():
        table = np.load(out / table_name(split), mmap_mode="r", allow_pickle=False)  # numpy alone, no vaedist
        assert [c.name for c in TABLE_COLUMNS] == list(table.dtype.names) == info.table.columns
        assert len(table) == info.samples == info.table.rows
        assert len(info.shards) > 1
        expected = [(s, p, key) for s, shard in enumerate(info.shards) for p, key in enumerate(_tar_keys(out / shard.name))]
        assert [(int(r["shard"]), int(r["position"]), r["key"].decode()) for r in table] == expected
        data = (out / info.table.name).read_bytes()
        assert info.table.bytes == len(data) and info.table.sha256 == hashlib.sha256(data).hexdigest()


def test_table_hashes_are_the_json_hashes_and_the_exact_hash_is_of_the_pixels(food_table_shards, sample_trees):
    out = food_table_shards
    manifest = load_manifest(out)
    for split, info in manifest.splits.items():
        table = read_table(out, manifest, split, columns=("exact", "phash"), verify=True)
        metas = {}
        for shard in info.shards:
            with tarfile.open(out / shard.name) as tar:
                for member in tar.getmembers():
                    key, ext = split_member_name(member.name)
                    if ext == "json":
                        metas[key] = json.loads(tar.extractfile(member).read())
        for row in table:
            meta = metas[row["key"].decode()]
            assert meta["exact"] == bytes(row["exact"]).hex() and meta["phash"] == f"{int(row['phash']):016x}"
        # The exact hash from its definition (format.EXACT_HASH), on pixels Pillow decodes from the source file:
        for row in table[:5]:
            meta = metas[row["key"].decode()]
            with Image.open(sample_trees["food101"] / meta["path"]) as img:
                rgba = np.asarray(img.convert("RGBA"))
            digest = xxhash.xxh3_128(b"RGBA8 %d %d\n" % (rgba.shape[1], rgba.shape[0]))
            digest.update(rgba.tobytes())
            assert digest.hexdigest() == meta["exact"]


def test_dedup_off_writes_a_table_without_hashes_and_null_hashes_in_json(sample_trees, tmp_path, read_shards):
    manifest = shard_dataset("food101", sample_trees["food101"], tmp_path, workers=2, dedup="off", progress=False)
    table = read_table(tmp_path, manifest, "train")
    assert list(table.dtype.names) == ["key", "shard", "position"] and len(table) == manifest.splits["train"].samples
    assert manifest.duplicates is None
    assert all(s["meta"]["exact"] is None and s["meta"]["phash"] is None for s in read_shards(tmp_path, manifest).values())
    with pytest.raises(UserError, match="--dedup off.*--dedup report"):
        read_table(tmp_path, manifest, "train", columns=("phash",))


def test_a_missing_or_changed_table_is_a_one_line_error_naming_it(food_table_shards, tmp_path):
    out = tmp_path / "copy"
    out.mkdir()
    for path in food_table_shards.iterdir():
        (out / path.name).write_bytes(path.read_bytes())
    manifest = load_manifest(out)
    table = out / table_name("val")
    data = bytearray(table.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes: only the sha256 tells
    table.write_bytes(bytes(data))
    read_table(out, manifest, "val")
    with pytest.raises(UserError, match=r"val-table\.npy.*sha256"):
        read_table(out, manifest, "val", verify=True)
    table.write_bytes(bytes(data[:-8]))
    with pytest.raises(UserError, match=r"val-table\.npy.*bytes"):
        read_table(out, manifest, "val")
    table.unlink()
    with pytest.raises(UserError, match=r"val-table\.npy.*missing"):
        read_table(out, manifest, "val")
    manifest.splits["val"].table = None  # shards written before the tables existed
    write_manifest(manifest, out)
    with pytest.raises(UserError, match="no val table"):
        read_table(out, load_manifest(out), "val")
