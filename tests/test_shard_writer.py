"""The tar + index writer, fed part files packed the way the sharder's workers pack them: the index is
byte-identical to DALI's own wds2idx, the tar to what Python's tarfile writes for the same members, GNU tar
lists it, and the sha256 the writer computed while appending is the finished file's."""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from vaedist.sample import photo_paths
from vaedist.shard import writer as shard_writer
from vaedist.shard.format import MEMBER_MODE, MEMBER_MTIME, SampleMeta, sample_members
from vaedist.shard.images import ImageOptions, prepare_image
from vaedist.shard.workers import ChunkItem, _pack_chunk
from vaedist.shard.writer import ShardWriter, publish_shard, ustar_header, write_pieces


def _items(labelled: bool) -> list[ChunkItem]:
    """Seven real photographs (sizes that are not multiples of 512) as the sharder hands them to a worker."""
    classes = ["astronaut", "coffee", "rocket"]
    return [ChunkItem(index=i, path=str(photo), key=f"images_{classes[i % 3]}_{100000 + i}",
                      label=i % 3 if labelled else None, path_in_root=f"images/{photo.name}", split="train",
                      class_name=classes[i % 3] if labelled else None)
            for i, photo in enumerate(photo_paths()[:7])]


def _reference_tar(items: list[ChunkItem]) -> bytes:
    """The same members written by Python's tarfile (USTAR, read-only members, the format's fixed mtime)."""
    reference = io.BytesIO()
    with tarfile.open(fileobj=reference, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for item in items:
            image = prepare_image(item.path, ImageOptions())
            meta = SampleMeta(item.path_in_root, image.width, image.height, item.split, item.class_name)
            for name, data in sample_members(item.key, image.jpeg, meta, item.label):
                member = tarfile.TarInfo(name)
                member.size, member.mtime, member.mode = len(data), MEMBER_MTIME, MEMBER_MODE
                archive.addfile(member, io.BytesIO(data))
    return reference.getvalue()


@pytest.mark.parametrize("labelled", [True, False], ids=["labelled", "unlabelled"])
@pytest.mark.parametrize("hash_in_thread", [False, True], ids=["hash-inline", "hash-in-thread"])
def test_index_matches_dali_wds2idx_and_tar_matches_tarfile_and_gnu_tar(tmp_path, hash_in_thread, labelled):
    items = _items(labelled)
    parts = [_pack_chunk(str(tmp_path / f".train-000000.part{n:05d}.tmp"), items[start:end], ImageOptions())
             for n, (start, end) in enumerate([(0, 3), (3, 7)])]
    with ShardWriter(tmp_path / "train-000000.tar", hash_in_thread) as writer:
        for part in parts:
            writer.append_part(part.part, part.size, part.samples)
            os.unlink(part.part)
        closed = writer.close()
    assert sorted(p.name for p in tmp_path.glob(".*")) == [".train-000000.idx.tmp", ".train-000000.tar.tmp"]
    info = publish_shard(closed)
    tar = tmp_path / "train-000000.tar"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train-000000.idx", "train-000000.tar"]

    # DALI's own indexer, as shipped with nvidia-dali (console script wds2idx, module wds2idx.py)
    wds2idx = shutil.which("wds2idx", path=str(Path(sys.executable).parent)) or "wds2idx"
    subprocess.run([wds2idx, str(tar), str(tmp_path / "reference.idx")], check=True, capture_output=True)
    assert (tmp_path / "train-000000.idx").read_text() == (tmp_path / "reference.idx").read_text()
    assert info.samples == 7 and info.bytes == tar.stat().st_size
    assert info.sha256 == hashlib.sha256(tar.read_bytes()).hexdigest()
    # byte for byte what Python's tarfile writes for the same members (record padding included)
    assert tar.read_bytes() == _reference_tar(items)
    # GNU tar reads it: every member, in order, read-only, at its size
    listing = subprocess.run(["tar", "-tvf", str(tar)], check=True, capture_output=True, text=True).stdout
    rows = [line.split() for line in listing.splitlines()]
    with tarfile.open(tar) as archive:
        expected = [(m.name, m.size) for m in archive.getmembers()]
    assert [(row[-1], int(row[2])) for row in rows] == expected
    assert len(expected) == 7 * (3 if labelled else 2)
    assert {row[0] for row in rows} == {"-r--r--r--"}


def test_unfinished_shard_leaves_no_file(tmp_path):
    part = _pack_chunk(str(tmp_path / ".val-000001.part00000.tmp"), _items(True)[:2], ImageOptions())
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "val-000001.tar") as writer:
            writer.append_part(part.part, part.size, part.samples)
            raise RuntimeError("killed mid-shard")
    assert [p.name for p in tmp_path.iterdir()] == [".val-000001.part00000.tmp"]  # the sharder removes parts


@pytest.mark.parametrize("hash_in_thread", [False, True], ids=["hash-inline", "hash-in-thread"])
def test_a_close_cut_short_after_the_tar_is_closed_raises_its_own_error_and_leaves_no_file(tmp_path, hash_in_thread):
    """Ctrl-C or a full disk while close() writes the index, after it closed the tar: the error that stopped it
    reaches the sharder (which turns Ctrl-C into one line and exit 130), not an EBADF from closing the tar
    twice, and neither temporary is left behind. (CI once saw exit 1 with that traceback in place of 130.)"""
    part = _pack_chunk(str(tmp_path / ".val-000001.part00000.tmp"), _items(True)[:2], ImageOptions())
    (tmp_path / ".val-000001.idx.tmp").mkdir()  # opening the index for writing fails: IsADirectoryError
    with pytest.raises(IsADirectoryError):
        with ShardWriter(tmp_path / "val-000001.tar", hash_in_thread) as writer:
            writer.append_part(part.part, part.size, part.samples)
            writer.close()
    (tmp_path / ".val-000001.idx.tmp").rmdir()
    assert [p.name for p in tmp_path.iterdir()] == [".val-000001.part00000.tmp"]


@pytest.mark.parametrize("name, size", [("a.jpg", 0), ("train2017_000000000009.jpg", 160_123),
                                        ("x" * 95 + ".json", 511), ("images_apple_pie_1005649.cls", 8**11 - 1)])
def test_fast_header_is_the_header_tarfile_writes(name, size):
    member = tarfile.TarInfo(name)
    member.size, member.mtime, member.mode = size, MEMBER_MTIME, MEMBER_MODE
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
