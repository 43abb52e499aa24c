"""The tar + index writer: our index is byte-identical to DALI's own wds2idx, written in the same pass."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from vaedist.sample import photo_paths
from vaedist.shard.writer import FIXED_MTIME, ShardWriter, SourceChanged, SourceFile, publish_shard, ustar_header


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


def test_index_matches_dali_wds2idx_and_manifest_entry_matches_file(tmp_path):
    samples = _samples(7)
    for i in (1, 4):  # stored unchanged: copied from a file by the kernel, not through Python
        (tmp_path / f"source{i}.jpg").write_bytes(samples[i]["jpg"])
        samples[i] = {**samples[i], "jpg": SourceFile(str(tmp_path / f"source{i}.jpg"), len(samples[i]["jpg"]))}
    with ShardWriter(tmp_path / "train-000000.tar") as writer:
        for sample in samples:
            writer.write(sample)
        closed = writer.close()
    assert sorted(p.name for p in tmp_path.glob(".*")) == [".train-000000.idx.tmp", ".train-000000.tar.tmp"]
    info = publish_shard(closed)
    for i in (1, 4):
        (tmp_path / f"source{i}.jpg").unlink()
    tar = tmp_path / "train-000000.tar"
    # DALI's own indexer, as shipped with nvidia-dali (console script wds2idx, module wds2idx.py)
    wds2idx = shutil.which("wds2idx", path=str(Path(sys.executable).parent)) or "wds2idx"
    subprocess.run([wds2idx, str(tar), str(tmp_path / "reference.idx")], check=True, capture_output=True)
    assert (tmp_path / "train-000000.idx").read_text() == (tmp_path / "reference.idx").read_text()
    assert info.samples == 7 and info.bytes == tar.stat().st_size
    assert info.sha256 == hashlib.sha256(tar.read_bytes()).hexdigest()
    with tarfile.open(tar) as archive:
        names = archive.getnames()
        assert names[:3] == [f"{samples[0]['__key__']}.{ext}" for ext in ("cls", "jpg", "json")]
        assert archive.extractfile(f"{samples[6]['__key__']}.jpg").read() == samples[6]["jpg"]
        assert archive.extractfile(f"{samples[4]['__key__']}.jpg").read() == _samples(7)[4]["jpg"]
    # byte for byte what Python's tarfile writes for the same members (record padding included)
    reference = io.BytesIO()
    with tarfile.open(fileobj=reference, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for sample in _samples(7):
            for ext in ("cls", "jpg", "json"):
                member = tarfile.TarInfo(f"{sample['__key__']}.{ext}")
                member.size, member.mtime, member.mode = len(sample[ext]), FIXED_MTIME, 0o444
                archive.addfile(member, io.BytesIO(sample[ext]))
    assert tar.read_bytes() == reference.getvalue()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reference.idx", "train-000000.idx", "train-000000.tar"]


def test_unfinished_shard_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "val-000001.tar") as writer:
            writer.write(_samples(1)[0])
            raise RuntimeError("killed mid-shard")
    assert list(tmp_path.iterdir()) == []


def test_a_source_file_that_changed_size_is_refused_and_leaves_the_tar_as_it_was(tmp_path):
    source = tmp_path / "photo.jpg"
    source.write_bytes(b"\xff\xd8" + b"x" * 3000)
    first, second = _samples(2)
    with ShardWriter(tmp_path / "val-000000.tar") as writer:
        writer.write(first)
        with pytest.raises(SourceChanged):
            writer.write({**second, "jpg": SourceFile(str(source), 1234)})  # the worker saw 1234 bytes
        writer.write(second)
        publish_shard(writer.close())
    with tarfile.open(tmp_path / "val-000000.tar") as archive:
        assert [m.name.split(".")[0] for m in archive.getmembers()] == [first["__key__"]] * 3 + [second["__key__"]] * 3


def test_keys_with_dots_are_refused(tmp_path):
    with ShardWriter(tmp_path / "train-000000.tar") as writer:
        with pytest.raises(ValueError):
            writer.write({"__key__": "a.b", "jpg": b"x"})


@pytest.mark.parametrize("name, size", [("a.jpg", 0), ("train2017_000000000009.jpg", 160_123),
                                        ("x" * 95 + ".json", 511), ("images_apple_pie_1005649.cls", 8**11 - 1)])
def test_fast_header_is_the_header_tarfile_writes(name, size):
    member = tarfile.TarInfo(name)
    member.size, member.mtime, member.mode = size, FIXED_MTIME, 0o444
    assert ustar_header(name, size) == member.tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape")
