"""verify's hashing on every core: digests equal coreutils' sha256sum, progress lines say how long is left."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from vaedist.data.hashing import format_duration, hash_files
from vaedist.data.verify import verify_split
from vaedist.shard import shard_dataset
from vaedist.shard.format import RESHARD, load_manifest


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="needs coreutils' sha256sum")
def test_parallel_digests_equal_sha256sum_and_progress_says_time_left(tmp_path, monkeypatch):
    paths = []
    for n, size in enumerate([0, 1, 2047, 2048, 5 << 20, 3 << 20]):  # around hashlib's GIL threshold and the chunk
        path = tmp_path / f"f{n}.bin"
        path.write_bytes(os.urandom(size))
        paths.append(path)
    monkeypatch.setattr("vaedist.data.hashing.PROGRESS_EVERY_S", 0.0)  # a line per finished file
    lines: list[str] = []
    digests = hash_files(paths, workers=3, label="train", progress=lines.append)
    reference = subprocess.run(["sha256sum", *map(str, paths)], capture_output=True, text=True, check=True).stdout
    assert {str(p): d for p, d in digests.items()} == {
        name: digest for digest, name in (line.split(maxsplit=1) for line in reference.splitlines())}
    assert lines[0].startswith("train: hashed 0/6 shards") and "on 3 threads" in lines[0]
    assert lines[-1].startswith("train: hashed 6/6 shards") and lines[-1].endswith("about 0 s left")
    assert len(lines) == 7 and all("GB/s, about" in line for line in lines[2:])  # [1] may be the empty file


def test_format_duration_reads_like_a_clock():
    assert [format_duration(s) for s in (0.4, 59, 119.6, 600, 7300, 90000)] == [
        "0 s", "59 s", "2 min 00 s", "10 min 00 s", "2 h 01 min", "25 h 00 min"]


def test_verify_on_many_threads_names_every_damaged_shard(sample_trees, tmp_path):
    copy = tmp_path / "food"
    shard_dataset("food101", sample_trees["food101"], copy, workers=1, shard_size="600KB", progress=False)
    manifest = load_manifest(copy)
    shards = manifest.splits["train"].shards
    assert len(shards) >= 3
    for info in shards[1:]:  # damage every shard but the first, whichever thread hashes it
        with open(copy / info.name, "r+b") as fh:
            fh.seek(3000)
            byte = fh.read(1)
            fh.seek(3000)
            fh.write(bytes([byte[0] ^ 0xFF]))
    lines: list[str] = []
    report = verify_split(copy, manifest, "train", dali=False, workers=len(shards), progress=lines.append)
    named = [p for p in report.problems if "does not match its SHA-256" in p]
    assert named == [f"shard '{copy / info.name}' does not match its SHA-256 in the manifest (changed after "
                     f"sharding); re-copy it or {RESHARD}" for info in shards[1:]]  # manifest order
    assert lines and f"on {len(shards)} threads" in lines[0] and lines[-1].endswith("about 0 s left")
