"""One shard on disk: a WebDataset tar and its DALI index (their format: format.py), both written in one
pass from the part files the workers packed, under temporary names until they are published.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from vaedist.shard.format import (MEMBER_MODE, MEMBER_MTIME, TAR_BLOCK, TAR_RECORD, IndexEntry, ShardInfo,
                                  index_line, index_name, index_text, temporary_name)


def _header_template() -> bytes:
    member = tarfile.TarInfo("x")
    member.mtime, member.mode = MEMBER_MTIME, MEMBER_MODE
    return member.tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape")


_HEADER_TEMPLATE = _header_template()


def ustar_header(name: str, size: int) -> bytes:
    """The 512-byte header `tarfile` writes for a regular file `name` of `size` bytes (USTAR, mode 0444).

    tarfile's template with the name, size and checksum fields patched: building each header with tarfile
    costs ~30 us of Python per member, a third of this process's work per image (the test compares both).
    """
    encoded = name.encode("ascii")
    if len(encoded) > 100 or size >= 8**11:
        raise ValueError(f"{name!r} ({size} bytes) does not fit a USTAR header")
    header = bytearray(_HEADER_TEMPLATE)
    header[0:100] = encoded.ljust(100, b"\0")
    header[124:136] = b"%011o\0" % size
    header[148:156] = b" " * 8  # the checksum is computed with its own field as spaces
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def _sync_file_range():
    """Linux's sync_file_range(2) from libc (Python's os module lacks it), or None on other systems."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_SYNC_FILE_RANGE = _sync_file_range()
SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writing the range's dirty pages back, don't wait


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Have the kernel start writing these bytes to disk now, without waiting for it (a hint; no-op off Linux).

    The shard's one fsync then finds them already written: on the last shard of a run, where nothing else is
    left to overlap with, that wait was ~30 ms per 90 MB here. It is not a durability step (the fsync is).
    """
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, length, SYNC_FILE_RANGE_WRITE)  # an error only loses the head start


class _TarHasher:
    """sha256 of a tar being written, in a thread of its own that reads back each range once it is appended.

    The ranges come straight from the page cache. hashlib and pread release the GIL, so on a machine with
    cores to spare the hash (~35 us per 58 KB image, the largest per-image cost of the writing process)
    runs beside the appending instead of inside the sharder's one serial step; and the hash is complete a
    moment after the last byte is written, where hashing the finished tar added a full re-read at the end
    of every shard. Ranges are hashed in the order they were added (one thread, first in first out).
    """

    def __init__(self, fd: int):
        self._fd = fd
        self._digest = hashlib.sha256()
        self._buffer = memoryview(bytearray(1 << 20))
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="vaedist-sha256")
        self._error: BaseException | None = None

    def add(self, offset: int, length: int) -> None:
        self._thread.submit(self._hash, offset, length)

    def _hash(self, offset: int, length: int) -> None:
        if self._error is not None:  # a range missed: every later update would be wrong anyway
            return
        try:
            end = offset + length
            while offset < end:
                view = self._buffer[: min(len(self._buffer), end - offset)]
                if hasattr(os, "preadv"):  # into the one buffer: no allocation per range
                    read = os.preadv(self._fd, [view], offset)
                else:
                    data = os.pread(self._fd, len(view), offset)
                    read = len(data)
                    view[:read] = data
                if read == 0:
                    raise OSError(f"the tar ends at {offset} bytes, before the {end} written to it")
                self._digest.update(view[:read])
                offset += read
        except BaseException as err:  # reported by hexdigest(), in the writing thread
            self._error = err

    def hexdigest(self) -> str:
        """Wait for every range added so far, then the sha256 of all of them."""
        self._thread.shutdown(wait=True)
        if self._error is not None:
            raise self._error
        return self._digest.hexdigest()

    def stop(self) -> None:
        self._thread.shutdown(wait=True, cancel_futures=True)


def encode_members(members: list[tuple[str, bytes]]) -> tuple[list[bytes], int, list[IndexEntry]]:
    """Tar members of one sample (format.sample_members), as TarFile.addfile writes them (header, data, zero
    padding to 512 bytes). Returns the pieces to write in order (the data objects themselves, not copies:
    a worker hands them to `os.writev`), their total size, and the index entries, offsets relative to the
    start of those pieces.
    """
    pieces: list[bytes] = []
    size = 0
    entries = []
    for name, data in members:
        padding = -len(data) % TAR_BLOCK
        pieces += [ustar_header(name, len(data)), data, _ZEROS[:padding]]
        entries.append((name, size + TAR_BLOCK, len(data)))
        size += TAR_BLOCK + len(data) + padding
    return pieces, size, entries


_ZEROS = bytes(TAR_BLOCK)


def write_pieces(fd: int, pieces: list[bytes]) -> None:
    """Write `pieces` in order with `os.writev` (no joined copy in memory), resuming after a short write."""
    pending = [memoryview(piece) for piece in pieces if piece]
    start = 0
    while start < len(pending):
        written = os.writev(fd, pending[start : start + _IOV_MAX])
        while written and written >= len(pending[start]):
            written -= len(pending[start])
            start += 1
        if written:
            pending[start] = pending[start][written:]


_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") and "SC_IOV_MAX" in os.sysconf_names else 16


@dataclass(frozen=True)
class ClosedShard:
    """A shard whose tar and index are fully written under their temporary names, not yet durable or in place."""

    tar: str  # final paths
    index: str
    samples: int
    bytes: int
    sha256: str  # of the tar, computed from the bytes as they were written


def publish_shard(shard: ClosedShard) -> ShardInfo:
    """fsync tar and index, rename both into place (index first).

    This is the I/O-bound end of a shard (waiting for the disk, no CPU): the sharder runs it in a thread of
    its own, so that neither the writing thread nor a decoding worker waits for the disk.
    """
    tar, index = Path(shard.tar), Path(shard.index)
    for path in (temporary_name(tar), temporary_name(index)):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.replace(temporary_name(index), index)
    os.replace(temporary_name(tar), tar)
    return ShardInfo(name=tar.name, index=index.name, samples=shard.samples, bytes=shard.bytes,
                     sha256=shard.sha256)


class ShardWriter:
    """Write a tar + `.idx` under temporary names from the part files the workers packed, in plan order.

        with ShardWriter(out_dir / "train-000000.tar") as shard:
            shard.append_part(".train-000000.part00000.tmp", size, [[("k.jpg", 512, 1234), ...], ...])
            ...
            closed = shard.close()          # .train-000000.tar.tmp, .train-000000.idx.tmp
        info = publish_shard(closed)        # (in a thread) fsync, renamed into place; sha256 from the writer

    The sharder's workers encode the members of a chunk of images into a part file (`encode_members`); this
    process only appends each part and shifts its index entries: it is the one serial step of the sharder,
    so it must cost next to nothing per image. The sha256 is computed as the bytes are appended, never by
    re-reading the finished tar (that put a whole second read at the end of every shard), in one of two ways:

      hash_in_thread=False  each part is read once into a reused buffer, hashed, written: the least CPU
                            in all (the sharder's choice on few cores, where every CPU second is a decoder's)
      hash_in_thread=True   the kernel copies each part (`os.copy_file_range`, no byte through Python) and
                            a thread of its own hashes it (`_TarHasher`): more CPU in all, but less in
                            this serial step (the choice on many cores, where that step caps the run)
    """

    def __init__(self, tar_path: Path, hash_in_thread: bool = False):
        self.tar_path = Path(tar_path)
        self.index_path = self.tar_path.with_name(index_name(self.tar_path.stem))
        self._tmp_tar = temporary_name(self.tar_path)
        self._fd: int | None = os.open(self._tmp_tar, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)  # read: the hasher
        self._bytes = 0
        self._hasher = _TarHasher(self._fd) if hash_in_thread else None
        self._digest = hashlib.sha256()  # hash_in_thread=False: updated by _write_all
        self._buffer = bytearray()  # hash_in_thread=False: one part at a time; grows to the largest part
        self._index_lines: list[str] = []
        self.entries: list[list[IndexEntry]] = []  # [sample] -> its members' (name, offset in the tar, size)
        self._closed = False

    @property
    def samples(self) -> int:
        return len(self._index_lines)

    def append_part(self, part: str | Path, size: int, samples: list[list[IndexEntry]]) -> None:
        """Append `size` bytes of encoded samples from the file `part`; their index entries are part-relative."""
        copied = self._copy_part(part, size) if self._hasher else self._read_hash_write_part(part, size)
        if copied != size:
            raise OSError(f"part file {part} has {copied} bytes, expected {size}")
        self._add_index(self._bytes, samples)
        self._appended(size)

    def append_part_subset(self, part: str | Path, spans: list[tuple[int, int]], samples: list[list[IndexEntry]],
                           keep: list[bool]) -> None:
        """Append only the samples of `part` marked in `keep` (--dedup drop): each sample's members are one
        contiguous span of the part, (offset, bytes); its index entries are part-relative like `samples`."""
        data = memoryview(Path(part).read_bytes())  # one chunk of images: ~1 MB
        pieces, kept, size = [], [], 0
        for (start, length), entries, wanted in zip(spans, samples, keep, strict=True):
            if wanted:
                pieces.append(data[start : start + length])
                kept.append([(name, size + offset - start, n) for name, offset, n in entries])
                size += length
        if size:
            self._write_all(b"".join(pieces))
            self._add_index(self._bytes, kept)
            self._appended(size)

    def _read_hash_write_part(self, part: str | Path, size: int) -> int:
        if len(self._buffer) < size:
            self._buffer = bytearray(size)
        view = memoryview(self._buffer)[:size]
        with open(part, "rb", buffering=0) as source:
            copied = 0
            while copied < size and (n := source.readinto(view[copied:])):
                copied += n
        self._write_all(view[:copied])
        return copied

    def _copy_part(self, part: str | Path, size: int) -> int:
        with open(part, "rb") as source:
            copied = 0
            try:
                while copied < size and (n := os.copy_file_range(source.fileno(), self._fd, size - copied)):
                    copied += n
            except (AttributeError, OSError):  # no copy_file_range (old kernel, other OS, some filesystems)
                os.lseek(self._fd, self._bytes + copied, os.SEEK_SET)
                source.seek(copied)
                while copied < size and (chunk := source.read(min(1 << 20, size - copied))):
                    self._write_all(chunk)
                    copied += len(chunk)
        return copied

    def _appended(self, size: int) -> None:
        """`size` bytes were appended at self._bytes: start their writeback, have them hashed, move the end."""
        start_writeback(self._fd, self._bytes, size)
        if self._hasher:
            self._hasher.add(self._bytes, size)
        self._bytes += size

    def _add_index(self, base: int, samples: list[list[IndexEntry]]) -> None:
        for entries in samples:
            shifted = [(name, base + offset, size) for name, offset, size in entries]
            self.entries.append(shifted)
            self._index_lines.append(index_line(shifted))

    def _write_all(self, data: bytes | memoryview) -> None:
        if not self._hasher:
            self._digest.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def close(self) -> ClosedShard:
        """Finish the tar (end-of-archive blocks) and write the index, both under their temporary names."""
        if not self._index_lines:
            raise ValueError(f"{self.tar_path.name}: a shard needs at least one sample (DALI rejects empty tars)")
        end_of_archive = b"\0" * (2 * TAR_BLOCK + -(self._bytes + 2 * TAR_BLOCK) % TAR_RECORD)
        self._write_all(end_of_archive)
        self._appended(len(end_of_archive))
        # the thread's hash waits for the thread: at most a part or two behind
        sha256 = self._hasher.hexdigest() if self._hasher else self._digest.hexdigest()
        self._close_fd()
        with open(temporary_name(self.index_path), "w") as fh:
            fh.write(index_text(self._index_lines))
        self._closed = True
        return ClosedShard(str(self.tar_path), str(self.index_path), len(self._index_lines), self._bytes, sha256)

    def abort(self) -> None:
        """Drop a shard that will not be finished (e.g. every sample rejected): no file is left behind."""
        if self._closed:
            return
        if self._hasher:
            self._hasher.stop()
        self._close_fd()
        self._tmp_tar.unlink(missing_ok=True)
        temporary_name(self.index_path).unlink(missing_ok=True)
        self._closed = True

    def _close_fd(self) -> None:
        # Once only: a close() cut short after it closed the tar (Ctrl-C, a full disk writing the index) ends in
        # abort(), and a second os.close would raise EBADF in place of the error that stopped it.
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._closed:
            self.abort()


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
