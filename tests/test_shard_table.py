"""The per-split tables beside the manifest (`train-table.npy`, `val-table.npy`) and their hashes files
(`train-hashes.npy`, ...): one row per sample in shard order, read back with numpy alone and checked against
the shards as tarfile and DALI's wds2idx see them."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import xxhash
from PIL import Image

from vaedist.config import DataConfig
from vaedist.data import build_loader
from vaedist.data.index import open_split_index
from vaedist.dedup import compare_shard_dirs
from vaedist.errors import UserError
from vaedist.jpeg import JPEG_HEADER_BYTES, JpegProblem, stored_size
from vaedist.shard import load_manifest, shard_dataset
from vaedist.shard.format import (HASH_COLUMNS, TABLE_COLUMNS, hashes_name, read_duplicates, split_member_name,
                                  table_name, write_manifest)
from vaedist.shard.table import read_hashes, read_table

REPO = Path(__file__).resolve().parents[1]
# What the loader reads at start-up, spelled here rather than taken from format.py: nothing more may creep in
LOADER_TABLE = ["key", "shard", "position", "jpeg_offset", "jpeg_size", "width", "height", "stored_width",
                "stored_height", "label"]


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
        assert [c.name for c in TABLE_COLUMNS] == list(table.dtype.names) == info.table.columns == LOADER_TABLE
        assert len(table) == info.samples == info.table.rows and info.table.version == 3
        assert len(info.shards) > 1
        expected = [(s, p, key) for s, shard in enumerate(info.shards) for p, key in enumerate(_tar_keys(out / shard.name))]
        assert [(int(r["shard"]), int(r["position"]), r["key"].decode()) for r in table] == expected
        # the image hashes: a file of their own, the same rows, listed in the manifest with its size and sha256
        hashes = np.load(out / hashes_name(split), mmap_mode="r", allow_pickle=False)
        assert list(hashes.dtype.names) == ["exact", "phash"] == info.hashes.columns
        assert hashes.dtype["exact"].itemsize == 16 and hashes.dtype["phash"] == np.dtype("<u8")
        assert len(hashes) == len(table) == info.hashes.rows
        for entry in (info.table, info.hashes):
            data = (out / entry.name).read_bytes()
            assert entry.bytes == len(data) and entry.sha256 == hashlib.sha256(data).hexdigest()


def test_table_hashes_are_the_json_hashes_and_the_exact_hash_is_of_the_pixels(food_table_shards, sample_trees):
    out = food_table_shards
    manifest = load_manifest(out)
    for split, info in manifest.splits.items():
        table = read_table(out, manifest, split, verify=True)
        hashes = read_hashes(out, manifest, split, verify=True)
        assert np.array_equal(hashes, np.load(out / hashes_name(split), allow_pickle=False))
        metas = {}
        for shard in info.shards:
            with tarfile.open(out / shard.name) as tar:
                for member in tar.getmembers():
                    key, ext = split_member_name(member.name)
                    if ext == "json":
                        metas[key] = json.loads(tar.extractfile(member).read())
        assert len(metas) == len(table) == len(hashes)
        for row, hashed in zip(table, hashes):  # row i of the hashes file is the table's row i
            meta = metas[row["key"].decode()]
            assert meta["exact"] == bytes(hashed["exact"]).hex() and meta["phash"] == f"{int(hashed['phash']):016x}"
        # The exact hash from its definition (format.EXACT_HASH), on pixels Pillow decodes from the source file:
        for row in table[:5]:
            meta = metas[row["key"].decode()]
            with Image.open(sample_trees["food101"] / meta["path"]) as img:
                rgba = np.asarray(img.convert("RGBA"))
            digest = xxhash.xxh3_128(b"RGBA8 %d %d\n" % (rgba.shape[1], rgba.shape[0]))
            digest.update(rgba.tobytes())
            assert digest.hexdigest() == meta["exact"]


def test_dedup_off_writes_the_same_table_no_hashes_file_and_null_hashes_in_json(sample_trees, tmp_path, read_shards,
                                                                               food_table_shards):
    manifest = shard_dataset("food101", sample_trees["food101"], tmp_path, workers=2, dedup="off", progress=False)
    table = read_table(tmp_path, manifest, "train")
    assert list(table.dtype.names) == LOADER_TABLE and len(table) == manifest.splits["train"].samples
    # the loader's table does not depend on --dedup: the same bytes as the hashed run's (other shard size)
    hashed = np.load(food_table_shards / table_name("train"), allow_pickle=False)
    assert table.dtype == hashed.dtype and table.nbytes == hashed.nbytes
    assert not list(tmp_path.glob("*-hashes.npy")) and all(s.hashes is None for s in manifest.splits.values())
    assert manifest.duplicates is None
    assert all(s["meta"]["exact"] is None and s["meta"]["phash"] is None for s in read_shards(tmp_path, manifest).values())
    with pytest.raises(UserError, match="--dedup off.*--dedup report"):
        read_hashes(tmp_path, manifest, "train")


def test_a_split_whose_every_image_is_rejected_gets_a_zero_row_table_with_the_same_columns(sample_trees, tmp_path):
    # COCO's val2017 holding only a file that is no image: the split is planned, its one shard comes out empty
    # (was: the duplicate finder asked the empty table for its "exact" column, a ValueError traceback)
    root = tmp_path / "coco"
    shutil.copytree(sample_trees["coco"] / "train2017", root / "train2017")
    (root / "test2017").mkdir()
    (root / "val2017").mkdir()
    (root / "val2017" / "000000000001.jpg").write_bytes(b"\xff\xd8 not a JPEG" * 64)
    manifest = shard_dataset("coco", root, tmp_path / "out", workers=1, progress=False)
    val, train = manifest.splits["val"], manifest.splits["train"]
    assert val.samples == 0 and val.shards == [] and train.samples > 0
    assert [s["path"] for s in manifest.skipped] == ["val2017/000000000001.jpg"]
    table = np.load(tmp_path / "out" / table_name("val"), allow_pickle=False)  # numpy alone
    assert len(table) == 0 and table.dtype.names == read_table(tmp_path / "out", manifest, "train").dtype.names
    hashes = np.load(tmp_path / "out" / hashes_name("val"), allow_pickle=False)
    assert len(hashes) == 0 and hashes.dtype.names == HASH_COLUMNS
    assert read_hashes(tmp_path / "out", manifest, "val").shape == (0,)
    val_report = read_duplicates(tmp_path / "out", manifest)["within"]["val"]
    assert val_report["images"] == 0 and val_report["exact_groups"] == [] and val_report["near_pairs"] == []


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
    shutil.copyfile(food_table_shards / table_name("val"), table)
    hashes = out / hashes_name("val")  # the hashes file likewise, and its errors name the command that rebuilds it
    data = bytearray(hashes.read_bytes())
    data[-1] ^= 0xFF
    hashes.write_bytes(bytes(data))
    read_hashes(out, manifest, "val")
    rebuild = f"python -m vaedist.shard.rebuild_table {out}"
    for damage, match in ((lambda: None, "sha256"), (lambda: hashes.write_bytes(bytes(data[:-8])), "bytes"),
                          (hashes.unlink, "missing")):
        damage()
        with pytest.raises(UserError, match=rf"val-hashes\.npy.*{match}") as err:
            read_hashes(out, manifest, "val", verify=True)
        assert rebuild in str(err.value) and "\n" not in str(err.value)
    manifest.splits["val"].table = None  # shards written before the tables existed
    write_manifest(manifest, out)
    with pytest.raises(UserError, match="no val table"):
        read_table(out, load_manifest(out), "val")


# --- the loader's columns, their rebuild for older shards, and the loader reading them --------------------


def _tar_jpegs(path: Path) -> dict[str, tuple[int, int, bytes]]:
    """key -> (data offset, size, bytes) of each .jpg member, as Python's tarfile finds them."""
    with tarfile.open(path) as tar:
        return {split_member_name(m.name)[0]: (m.offset_data, m.size, tar.extractfile(m).read())
                for m in tar.getmembers() if m.name.endswith(".jpg")}


@pytest.mark.parametrize("dataset", ["food101", "coco"])
def test_loader_columns_are_what_tarfile_pillow_and_the_members_say(dataset, food_table_shards, sample_trees,
                                                                      tmp_path, read_shards):
    if dataset == "food101":
        out = food_table_shards
    else:  # unlabelled, and --max-side: stored and original sizes differ
        out = tmp_path / "coco"
        shard_dataset("coco", sample_trees["coco"], out, workers=2, shard_size="300KB", max_side=160, progress=False)
    manifest = load_manifest(out)
    samples = read_shards(out, manifest)
    for split, info in manifest.splits.items():
        table = np.load(out / table_name(split), allow_pickle=False)
        jpegs = {}
        for shard in info.shards:
            jpegs.update(_tar_jpegs(out / shard.name))
        for row in table:
            key = row["key"].decode()
            offset, size, data = jpegs[key]
            sample = samples[key]
            assert (int(row["jpeg_offset"]), int(row["jpeg_size"])) == (offset, size)
            assert (int(row["width"]), int(row["height"])) == (sample["meta"]["width"], sample["meta"]["height"])
            with Image.open(io.BytesIO(data)) as img:
                assert (int(row["stored_width"]), int(row["stored_height"])) == img.size
            assert int(row["label"]) == (int(sample["cls"]) if "cls" in sample else -1)
        if dataset == "coco":
            assert (table["stored_width"] < table["width"]).any() and (table["label"] == -1).all()


def _older_copy(shards: Path, out: Path, version: int | None) -> Path:
    """A copy as an older vaedist left it: no table (None), a version 1 table (key, shard, position and the
    hashes) or a version 2 table (the loader's columns, then the hashes); none of them has a hashes file."""
    shutil.copytree(shards, out)
    manifest = load_manifest(out)
    for split, info in manifest.splits.items():
        path = out / table_name(split)
        (out / hashes_name(split)).unlink()
        info.hashes = None
        if version is None:
            path.unlink()
            info.table = None
        else:
            table, hashes = np.load(path), np.load(shards / hashes_name(split))
            names = ["key", "shard", "position"] if version == 1 else list(table.dtype.names)
            fields = [(n, table.dtype[n]) for n in names] + [(n, hashes.dtype[n]) for n in hashes.dtype.names]
            packed = np.zeros(len(table), np.dtype(fields))
            for name in names:
                packed[name] = table[name]
            for name in hashes.dtype.names:
                packed[name] = hashes[name]
            np.save(path, packed)
            info.table.columns, info.table.version = list(packed.dtype.names), version
            info.table.bytes, info.table.sha256 = path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest()
    write_manifest(manifest, out)
    return out


@pytest.mark.parametrize("version", [None, 1], ids=["no-table", "table-v1"])
def test_older_shards_load_by_the_old_path_with_a_hint_and_the_rebuild_command_restores_the_table(
        version, food_table_shards, tmp_path, caplog):
    older = _older_copy(food_table_shards, tmp_path / "older", version)
    with caplog.at_level(logging.WARNING, logger="vaedist.data.index"):
        old = open_split_index(older, load_manifest(older), "train")
    hints = [r.getMessage() for r in caplog.records if "rebuild_table" in r.getMessage()]
    assert len(hints) == 1 and "\n" not in hints[0] and f"python -m vaedist.shard.rebuild_table {older}" in hints[0]
    new = open_split_index(food_table_shards, load_manifest(food_table_shards), "train")  # the sharder's table
    for name in ("shard", "offset", "size", "label", "orig_width", "orig_height", "stored_width", "stored_height"):
        assert np.array_equal(getattr(old, name), getattr(new, name)) and getattr(old, name).dtype == getattr(new, name).dtype
    assert old.keys == new.keys

    proc = subprocess.run([sys.executable, "-m", "vaedist.shard.rebuild_table", str(older)], capture_output=True,
                          text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rebuilt, original = load_manifest(older), load_manifest(food_table_shards)
    for split in original.splits:  # the sharder's table, byte for byte; no hashes (an older directory's are of another thumbnail)
        table = older / table_name(split)
        assert table.read_bytes() == (food_table_shards / table_name(split)).read_bytes()
        assert rebuilt.splits[split].table == original.splits[split].table
        assert rebuilt.splits[split].hashes is None and not (older / hashes_name(split)).exists()
        assert f"{split}: no image hashes carried over" in proc.stdout
    assert not [p.name for p in older.iterdir() if p.name.startswith(".")]  # no temporary left behind
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vaedist.data.index"):
        open_split_index(older, rebuilt, "train")
    assert not caplog.records


def test_the_rebuild_command_restores_a_lost_current_table_and_hashes_file_byte_for_byte(food_table_shards, tmp_path):
    copy = Path(shutil.copytree(food_table_shards, tmp_path / "copy"))
    for split in load_manifest(copy).splits:
        (copy / table_name(split)).unlink()  # the manifest still lists them (version 3): the .json's hashes are current
        (copy / hashes_name(split)).unlink()
    proc = subprocess.run([sys.executable, "-m", "vaedist.shard.rebuild_table", str(copy)], capture_output=True,
                          text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0 and "no image hashes" not in proc.stdout, proc.stderr[-2000:]
    original = load_manifest(food_table_shards)
    for split in original.splits:  # byte for byte the sharder's files, and the manifest lists them
        for name in (table_name(split), hashes_name(split)):
            assert (copy / name).read_bytes() == (food_table_shards / name).read_bytes()
        assert load_manifest(copy).splits[split].table == original.splits[split].table
        assert load_manifest(copy).splits[split].hashes == original.splits[split].hashes


def test_a_version_2_directory_trains_and_dedups_as_it_is_and_the_rebuild_moves_its_hashes_out(
        food_table_shards, tmp_path, caplog):
    older = _older_copy(food_table_shards, tmp_path / "v2", 2)  # hashes as the table's last columns, no hashes file
    manifest, original = load_manifest(older), load_manifest(food_table_shards)
    with caplog.at_level(logging.WARNING, logger="vaedist.data.index"):  # training reads its table, no hint
        old = open_split_index(older, manifest, "train")
    assert not caplog.records
    new = open_split_index(food_table_shards, original, "train")
    for name in ("shard", "offset", "size", "label", "orig_width", "orig_height", "stored_width", "stored_height"):
        assert np.array_equal(getattr(old, name), getattr(new, name))
    # the duplicate finder reads its hashes from the table's columns: the same report as from the hashes file
    reports = [compare_shard_dirs([d], tmp_path / f"report-{n}", sheet_pairs=0).to_json()
               for n, d in enumerate((older, food_table_shards))]
    assert json.dumps(reports[0]).replace(str(older), "DIR") == json.dumps(reports[1]).replace(str(food_table_shards), "DIR")
    assert reports[1]["within"][f"{food_table_shards}:train"]["images"] == original.splits["train"].samples

    proc = subprocess.run([sys.executable, "-m", "vaedist.shard.rebuild_table", str(older)], capture_output=True,
                          text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0 and "no image hashes" not in proc.stdout, proc.stderr[-2000:]
    rebuilt = load_manifest(older)
    for split in original.splits:  # version 3, byte for byte what the sharder writes
        for name in (table_name(split), hashes_name(split)):
            assert (older / name).read_bytes() == (food_table_shards / name).read_bytes()
        assert rebuilt.splits[split].table == original.splits[split].table
        assert rebuilt.splits[split].hashes == original.splits[split].hashes


def test_the_rebuild_command_names_a_damaged_member_and_writes_nothing(food_table_shards, tmp_path):
    older = _older_copy(food_table_shards, tmp_path / "older", None)
    info = load_manifest(older).splits["val"].shards[0]
    tar = older / info.name
    with tarfile.open(tar) as tf:
        member = next(m for m in tf.getmembers() if m.name.endswith(".json"))
    data = bytearray(tar.read_bytes())
    data[member.offset_data] = ord("}")  # not JSON any more, same size
    tar.write_bytes(bytes(data))
    before = (older / "manifest.json").read_bytes()
    proc = subprocess.run([sys.executable, "-m", "vaedist.shard.rebuild_table", str(older)], capture_output=True,
                          text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert info.name in line and split_member_name(member.name)[0] in line and ".json member" in line
    assert (older / "manifest.json").read_bytes() == before and not (older / table_name("val")).exists()


def test_start_up_reads_no_tar_and_a_changed_table_is_one_line_naming_it(food_table_shards, tmp_path):
    copy = Path(shutil.copytree(food_table_shards, tmp_path / "copy"))
    manifest = load_manifest(copy)
    for shard in manifest.splits["train"].shards:  # every member unreadable, every size as recorded
        path = copy / shard.name
        path.write_bytes(b"\0" * path.stat().st_size)
    loader = build_loader(DataConfig(shards=str(copy), workers=1, bad_samples="stop"), "train", train=True, batch_size=4)
    assert len(loader.index) == manifest.splits["train"].samples and not loader.bad_samples.known
    with pytest.raises(UserError, match="no start-of-image marker"):  # the first batch reads its JPEGs
        next(iter(loader))

    table = copy / table_name("train")
    data = bytearray(table.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    table.write_bytes(bytes(data))
    with pytest.raises(UserError) as err:
        build_loader(DataConfig(shards=str(copy), workers=1), "train", train=True, batch_size=4)
    message = str(err.value)
    assert "\n" not in message and str(table) in message and "sha256" in message
    assert f"python -m vaedist.shard.rebuild_table {copy}" in message


def test_stored_size_reads_64_kib_and_the_whole_jpeg_only_when_its_header_lies_further_in():
    # the one home of the fallback both the table's rebuild and the old start-up path use (vaedist.jpeg)
    buffer = io.BytesIO()
    Image.new("RGB", (37, 23), (200, 10, 10)).save(buffer, "JPEG")
    plain = buffer.getvalue()
    padding = b"".join(b"\xff\xe2" + (40_002).to_bytes(2, "big") + bytes(40_000) for _ in range(2))  # 2 APP2 segments
    late = plain[:2] + padding + plain[2:]  # its frame header starts ~80 KB in
    for jpeg in (plain, late):
        reads = []

        def read_start(n, jpeg=jpeg):
            reads.append(n)
            return memoryview(jpeg)[:n]

        assert stored_size(read_start, len(jpeg)) == Image.open(io.BytesIO(jpeg)).size == (37, 23)
        assert reads == ([len(plain)] if jpeg is plain else [JPEG_HEADER_BYTES, len(late)])
    no_frame = late[: len(padding) + 2] + b"\xff\xda\x00\x02" + bytes(100)  # a scan, and no frame header before it
    with pytest.raises(JpegProblem):
        stored_size(lambda n: no_frame[:n], len(no_frame))
