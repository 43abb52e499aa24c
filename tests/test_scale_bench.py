"""`bench scale`'s byte counts: the shard directory's pages in the page cache (mincore, vaedist.bench.pagecache),
checked against util-linux's fincore, and the loader's start-up read through them (only the table, no tar)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from vaedist.bench.pagecache import PAGE, evict, resident_bytes
from vaedist.bench.scale import file_kind, probe_start
from vaedist.shard import load_manifest
from vaedist.shard.format import MANIFEST_NAME


def _pages(size: int) -> int:
    return -(-size // PAGE) * PAGE


def _evicted(directory: Path) -> None:
    kind = subprocess.run(["stat", "--file-system", "--format", "%T", str(directory)], capture_output=True, text=True)
    if kind.stdout.strip() in ("tmpfs", "ramfs"):  # memory is their storage: nothing to evict, nothing read
        pytest.skip(f"{directory} is on {kind.stdout.strip()}: the page cache is its storage")
    evict(directory)
    assert [p.name for p in directory.iterdir() if resident_bytes(p)] == []


def test_resident_bytes_are_the_pages_read_as_fincore_counts_them(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(64 * PAGE + 100))
    _evicted(tmp_path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no readahead: the kernel reads the pages asked for
        os.pread(fd, 2 * PAGE + 10, 10 * PAGE + 5)  # pages 10, 11, 12
        os.pread(fd, 50, 64 * PAGE)  # the last, partial page
        counted = resident_bytes(path)
    finally:
        os.close(fd)
    assert counted == 4 * PAGE
    if shutil.which("fincore"):
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", str(path)],
                             capture_output=True, text=True, check=True)
        assert int(out.stdout) == counted
    (tmp_path / "empty").touch()
    assert resident_bytes(tmp_path / "empty") == 0
    assert [file_kind(n) for n in ("manifest.json", "duplicates.json", "train-table.npy", "train-hashes.npy",
                                   "val-000003.tar", "train-000000.idx", "x.txt")] \
        == ["manifest", "duplicates", "table", "hashes", "tar", "index", "other"]


def test_a_cold_start_reads_the_manifest_and_the_train_table_then_only_jpegs(food_shards, tmp_path):
    copy = Path(shutil.copytree(food_shards, tmp_path / "copy"))  # sharded with the default --dedup report
    train = load_manifest(copy).splits["train"]
    assert train.hashes is not None and (copy / train.hashes.name).stat().st_size > 0
    assert (copy / "duplicates.json").stat().st_size > 0
    _evicted(copy)
    result = probe_start(str(copy), batch_size=4, steps=0)
    built, first = result["build_dir"], result["first_dir"]
    # the val table neither, and not one page of the image hashes or the duplicate report (the duplicate
    # finder's and the person's, not the loader's)
    assert built == {"manifest": _pages((copy / MANIFEST_NAME).stat().st_size), "table": _pages(train.table.bytes),
                     "hashes": 0, "duplicates": 0, "tar": 0, "index": 0, "all": built["manifest"] + built["table"]}
    assert first["table"] == built["table"] and first["index"] == 0 and first["hashes"] == first["duplicates"] == 0
    jpeg_bytes = sum(s.bytes for s in train.shards)
    assert 4 * PAGE <= first["tar"] < jpeg_bytes / 2  # the first batch's JPEGs (and what is prefetched), not the tars
    assert result["read_bytes"] >= 0 and result["samples"] == train.samples
