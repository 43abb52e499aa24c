"""One shard on disk, written whole by one worker process: a tar (Python's `tarfile`), hashed as it is
written, and its DALI index built from the members' offsets, both under temporary names until complete.

    with ShardWriter(out_dir / "train-000000.tar") as shard:
        for ...:
            shard.add(sample_members(key, jpeg, meta, label))   # format.py: names and order of the members
        info = shard.finish()   # ShardInfo: fsynced, renamed into place (index first, then the tar)

Leaving the `with` block any other way (a rejected shard, an error, Ctrl-C) removes the temporaries; a
kill -9 leaves `.train-000000.tar.tmp` and `.train-000000.idx.tmp`, which the next run sweeps away.
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path
from typing import BinaryIO

from vaedist.shard.format import (MEMBER_MODE, MEMBER_MTIME, TAR_BLOCK, ShardInfo, index_line, index_name,
                                  index_text, temporary_name)


class _HashingFile:
    """What `tarfile` writes to: each byte is hashed on its way to the file (no second read of the tar)
    and counted, since tarfile asks for tell() once at the start."""

    def __init__(self, file: BinaryIO):
        self._file = file
        self.sha256 = hashlib.sha256()
        self.position = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self._file.write(data)
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position


class ShardWriter:
    """Write a tar + `.idx` under temporary names; `finish()` makes both durable and puts them in place."""

    def __init__(self, tar_path: Path):
        self.tar_path = Path(tar_path)
        self.index_path = self.tar_path.with_name(index_name(self.tar_path.stem))
        self._file = open(temporary_name(self.tar_path), "wb")
        self._hashing = _HashingFile(self._file)
        # USTAR, members with a fixed mtime and mode (format.py): the tar's bytes depend only on its content
        self._tar = tarfile.open(fileobj=self._hashing, mode="w", format=tarfile.USTAR_FORMAT)
        self._index_lines: list[str] = []
        self._open = True

    @property
    def samples(self) -> int:
        return len(self._index_lines)

    def add(self, members: list[tuple[str, bytes]]) -> None:
        """Append one sample's members (name, data), in order, and its index line."""
        entries = []
        for name, data in members:
            member = tarfile.TarInfo(name)
            member.size, member.mtime, member.mode = len(data), MEMBER_MTIME, MEMBER_MODE
            self._tar.addfile(member, io.BytesIO(data))
            # tarfile's offset is now the end of the data's zero padding: the data starts that far back
            entries.append((name, self._tar.offset - -(-len(data) // TAR_BLOCK) * TAR_BLOCK, len(data)))
        self._index_lines.append(index_line(entries))
        # tarfile keeps every member it wrote (for getmembers()); a writer needs none of them, and a shard of
        # small images has ~10^5: dropping them keeps a worker's memory at one sample.
        self._tar.members.clear()

    def finish(self) -> ShardInfo:
        """End the tar, write the index, fsync both, rename them into place (index first)."""
        if not self._index_lines:
            raise ValueError(f"{self.tar_path.name}: a shard needs at least one sample (DALI rejects empty tars)")
        self._tar.close()  # two zero blocks, padded to a 10 KiB record, like GNU tar
        _close_durably(self._file)
        with open(temporary_name(self.index_path), "w") as index:
            index.write(index_text(self._index_lines))
            _close_durably(index)
        os.replace(temporary_name(self.index_path), self.index_path)
        os.replace(temporary_name(self.tar_path), self.tar_path)
        self._open = False
        return ShardInfo(name=self.tar_path.name, index=self.index_path.name, samples=len(self._index_lines),
                         bytes=self._hashing.position, sha256=self._hashing.sha256.hexdigest())

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        if self._open:  # not finished: leave nothing behind
            self._file.close()
            temporary_name(self.tar_path).unlink(missing_ok=True)
            temporary_name(self.index_path).unlink(missing_ok=True)
            self._open = False


def _close_durably(file) -> None:
    file.flush()
    os.fsync(file.fileno())
    file.close()


def sync_directory(path: Path) -> None:
    """fsync a directory so that renames in it survive a power cut, where the OS supports it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
