"""The tar + index writer: our index is byte-identical to DALI's own wds2idx, written in the same pass."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from vaedist.sample import photo_paths
from vaedist.shard import writer as shard_writer
from vaedist.shard.format import MEMBER_MTIME as FIXED_MTIME
from vaedist.shard.writer import ShardWriter, encode_sample, publish_shard, ustar_header, write_pieces


def _members(sample):
    return [(f"{sample['__key__']}.{ext}", sample[ext]) for ext in ("cls", "jpg", "json")]


def _samples(count: int) -> list[dict]:
    photos = photo_paths()
    return [
        {
            "__key__": f"images_class{i % 3}_{100000 + i}",
            "jpg": photos[i % len(photos)].read_bytes()[: 5000 + 37 * i],  # sizes that are not multiples of 512
            "cls": str(i % 3).encode(),
            "json": json.dumps({"path": f"images/class{i % 3}/{100000 + i}.jpg", "width": 1, "height": 1}).encode(),
        }
        for i in range(count)
    ]


@pytest.mark.parametrize("hash_in_thread", [False, True], ids=["hash-inline", "hash-in-thread"])
def test_index_matches_dali_wds2idx_and_manifest_entry_matches_file(tmp_path, hash_in_thread):
    samples = _samples(7)
    # samples 2..5 arrive as a part file encoded elsewhere (as the sharder's workers do), the others one by one
    part = tmp_path / ".train-000000.part00000.tmp"
    encoded, entries = b"", []
    for sample in samples[2:6]:
        data, components = encode_sample(_members(sample))
        entries.append([(name, len(encoded) + offset, size) for name, offset, size in components])
        encoded += data
    part.write_bytes(encoded)
    with ShardWriter(tmp_path / "train-000000.tar", hash_in_thread) as writer:
        writer.write(_members(samples[0]))
        writer.write(_members(samples[1]))
        writer.append_part(part, len(encoded), entries)
        writer.write(_members(samples[6]))
        closed = writer.close()
    part.unlink()
    assert sorted(p.name for p in tmp_path.glob(".*")) == [".train-000000.idx.tmp", ".train-000000.tar.tmp"]
    info = publish_shard(closed)
    tar = tmp_path / "train-000000.tar"
    # DALI's own indexer, as shipped with nvidia-dali (console script wds2idx, module wds2idx.py)
    wds2idx = shutil.which("wds2idx", path=str(Path(sys.executable).parent)) or "wds2idx"
    subprocess.run([wds2idx, str(tar), str(tmp_path / "reference.idx")], check=True, capture_output=True)
    assert (tmp_path / "train-000000.idx").read_text() == (tmp_path / "reference.idx").read_text()
    assert info.samples == 7 and info.bytes == tar.stat().st_size
    assert info.sha256 == hashlib.sha256(tar.read_bytes()).hexdigest()
    # byte for byte what Python's tarfile writes for the same members (record padding included)
    reference = io.BytesIO()
    with tarfile.open(fileobj=reference, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for sample in samples:
            for ext in ("cls", "jpg", "json"):
                member = tarfile.TarInfo(f"{sample['__key__']}.{ext}")
                member.size, member.mtime, member.mode = len(sample[ext]), FIXED_MTIME, 0o444
                archive.addfile(member, io.BytesIO(sample[ext]))
    assert tar.read_bytes() == reference.getvalue()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reference.idx", "train-000000.idx", "train-000000.tar"]


def test_unfinished_shard_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "val-000001.tar") as writer:
            writer.write(_members(_samples(1)[0]))
            raise RuntimeError("killed mid-shard")
    assert list(tmp_path.iterdir()) == []


def test_keys_with_dots_are_refused():
    from vaedist.shard.format import member_name
    with pytest.raises(ValueError):
        member_name("a.b", "jpg")
    with pytest.raises(ValueError):
        member_name("a/b", "jpg")


@pytest.mark.parametrize("name, size", [("a.jpg", 0), ("train2017_000000000009.jpg", 160_123),
                                        ("x" * 95 + ".json", 511), ("images_apple_pie_1005649.cls", 8**11 - 1)])
def test_fast_header_is_the_header_tarfile_writes(name, size):
    member = tarfile.TarInfo(name)
    member.size, member.mtime, member.mode = size, FIXED_MTIME, 0o444
    assert ustar_header(name, size) == member.tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape")


def test_write_pieces_writes_every_piece_in_order_through_short_writes(tmp_path, monkeypatch):
    """A worker hands a chunk's pieces to writev in batches of at most IOV_MAX, resuming after short writes."""
    pieces = [bytes([i % 251]) * (i % 700) for i in range(3 * shard_writer._IOV_MAX + 5)]  # empty pieces too
    real_writev = os.writev
    calls = []

    def short_writev(fd, buffers):  # what a signal or a full disk can do: write only part of what was asked
        calls.append(len(buffers))
        assert len(buffers) <= shard_writer._IOV_MAX
        return real_writev(fd, [b"".join(bytes(b) for b in buffers)[:4093]])

    for name, writev in (("whole", real_writev), ("short", short_writev)):
        monkeypatch.setattr(os, "writev", writev)
        path = tmp_path / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT)
        try:
            write_pieces(fd, pieces)
        finally:
            os.close(fd)
        assert path.read_bytes() == b"".join(pieces)
    assert len(calls) > 100  # the short path really resumed many times
