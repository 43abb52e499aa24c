"""One shard on disk: a WebDataset tar and its DALI index, both written in one pass, under temporary names.

The index is the text format DALI's `wds2idx` writes (checked against its source, `wds2idx.py`,
`IndexCreator.create_index`): a first line `v1.2 <number of samples>`, then one line per sample listing each
component as `<ext> <data offset> <size> <member name>`, offsets in bytes from the start of the tar to the
component's data (its 512-byte header excluded). `tests/test_shard_writer.py` checks ours against wds2idx's.
"""
from __future__ import annotations

import hashlib
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from vaedist.shard.manifest import ShardInfo

INDEX_VERSION = "v1.2"
TAR_BLOCK = 512
# A fixed member mtime makes the tars, and so their sha256, depend only on their content.
FIXED_MTIME = 1_500_000_000
RECORD = 20 * TAR_BLOCK  # like tarfile and GNU tar: the archive ends with two zero blocks, padded to a record


def _header_template() -> bytes:
    member = tarfile.TarInfo("x")
    member.mtime, member.mode = FIXED_MTIME, 0o444
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


def temporary_name(path: Path) -> Path:
    """`train-000000.tar` -> `.train-000000.tar.tmp`: hidden, and swept away by the next run if left behind."""
    return path.with_name(f".{path.name}.tmp")


@dataclass(frozen=True)
class SourceFile:
    """A component stored unchanged from a file: copied into the tar by the kernel, not through this process."""

    path: str
    size: int  # as checked by the worker: a file of another size was changed meanwhile


class SourceChanged(Exception):
    """A SourceFile no longer has the size it had when it was checked."""


@dataclass(frozen=True)
class ClosedShard:
    """A shard whose tar and index are fully written under their temporary names, not yet durable or in place."""

    tar: str  # final paths
    index: str
    samples: int
    bytes: int


def publish_shard(shard: ClosedShard) -> ShardInfo:
    """sha256 the tar, fsync tar and index, rename both into place (index first); run by a worker process.

    This is the slow, I/O-bound end of a shard (reading it back, waiting for the disk): done by a worker it
    never stalls the writing process, which meanwhile fills the next shard.
    """
    tar, index = Path(shard.tar), Path(shard.index)
    digest = hashlib.sha256()
    with open(temporary_name(tar), "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
        os.fsync(fh.fileno())
    with open(temporary_name(index), "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(temporary_name(index), index)
    os.replace(temporary_name(tar), tar)
    return ShardInfo(name=tar.name, index=index.name, samples=shard.samples, bytes=shard.bytes,
                     sha256=digest.hexdigest())


class ShardWriter:
    """Write samples {"__key__", "jpg", "cls"?, "json"} to `<dir>/<name>.tar` + `.idx` (temporary names first).

        with ShardWriter(out_dir / "train-000000.tar") as shard:
            shard.write({"__key__": "train2017_000000000009", "jpg": SourceFile(path, size), "json": b"{...}"})
            closed = shard.close()          # .train-000000.tar.tmp, .train-000000.idx.tmp
        info = publish_shard(closed)        # in a worker: sha256, fsync, renamed into place

    This process is the one serial step next to the decoding workers, so it does as little as it can per
    image: members get tarfile's USTAR headers (from a template) but are written without TarFile or
    webdataset's TarWriter, whose per-member copies and re-buffering cost more than the rest together;
    JPEGs stored unchanged go from the source file to the tar with `os.copy_file_range` (no copy through
    Python); and the sha256, fsync and rename happen afterwards, in a worker (`publish_shard`).
    """

    def __init__(self, tar_path: Path):
        self.tar_path = Path(tar_path)
        self.index_path = self.tar_path.with_suffix(".idx")
        self._tmp_tar = temporary_name(self.tar_path)
        self._fd = os.open(self._tmp_tar, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._pending = bytearray()  # headers, padding and small members, written out before the next copy
        self._bytes = 0
        self._index_lines: list[str] = []
        self._closed = False

    @property
    def samples(self) -> int:
        return len(self._index_lines)

    def write(self, sample: dict[str, str | bytes | SourceFile]) -> None:
        """`sample`: "__key__" (str, no dots) and per component ("jpg", "cls", "json") bytes or a SourceFile.

        Components are written in sorted order, like webdataset's TarWriter, each as `<key>.<ext>`.
        Raises SourceChanged (and writes nothing of the sample) when a SourceFile changed size.
        """
        key = sample["__key__"]
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must not contain dots or slashes")
        sources: dict[str, int] = {}
        rollback = self._bytes + len(self._pending)  # where this sample starts
        try:
            for ext in sorted(k for k in sample if k != "__key__"):
                value = sample[ext]
                if isinstance(value, SourceFile):
                    sources[ext] = os.open(value.path, os.O_RDONLY)
                    if os.fstat(sources[ext]).st_size != value.size:
                        raise SourceChanged(value.path)
            components = []
            for ext in sorted(k for k in sample if k != "__key__"):
                value, name = sample[ext], f"{key}.{ext}"
                size = value.size if isinstance(value, SourceFile) else len(value)
                # what TarFile.addfile writes: header, data, zero padding to a 512-byte block
                self._pending += ustar_header(name, size)
                components.append(f"{ext} {self._bytes + len(self._pending)} {size} {name}")
                if isinstance(value, SourceFile):
                    self._flush()
                    self._copy(sources[ext], size)
                else:
                    self._pending += value
                self._pending += b"\0" * (-size % TAR_BLOCK)
        except BaseException:  # leave the tar as it was before this sample
            if self._bytes <= rollback:
                del self._pending[rollback - self._bytes :]
            else:
                os.ftruncate(self._fd, rollback)
                os.lseek(self._fd, rollback, os.SEEK_SET)
                self._bytes = rollback
                self._pending.clear()
            raise
        finally:
            for fd in sources.values():
                os.close(fd)
        self._index_lines.append(" ".join(components))

    def _flush(self) -> None:
        written = 0
        while written < len(self._pending):
            written += os.write(self._fd, memoryview(self._pending)[written:])
        self._bytes += written
        self._pending.clear()

    def _copy(self, source_fd: int, size: int) -> None:
        copied = 0
        try:
            while copied < size:
                n = os.copy_file_range(source_fd, self._fd, size - copied)
                if n == 0:
                    break
                copied += n
        except (AttributeError, OSError):  # no copy_file_range (old kernel, other OS, some filesystems)
            os.lseek(self._fd, self._bytes + copied, os.SEEK_SET)
            while copied < size and (chunk := os.pread(source_fd, min(1 << 20, size - copied), copied)):
                written = 0
                while written < len(chunk):
                    written += os.write(self._fd, chunk[written:])
                copied += len(chunk)
        if copied != size:
            raise SourceChanged(f"short read: {copied} of {size} bytes")
        self._bytes += size

    def close(self) -> ClosedShard:
        """Finish the tar (end-of-archive blocks) and write the index, both under their temporary names."""
        if not self._index_lines:
            raise ValueError(f"{self.tar_path.name}: a shard needs at least one sample (DALI rejects empty tars)")
        end = self._bytes + len(self._pending) + 2 * TAR_BLOCK
        self._pending += b"\0" * (2 * TAR_BLOCK + -end % RECORD)
        self._flush()
        os.close(self._fd)
        with open(temporary_name(self.index_path), "w") as fh:
            fh.write(f"{INDEX_VERSION} {len(self._index_lines)}\n")
            fh.write("\n".join(self._index_lines) + "\n")
        self._closed = True
        return ClosedShard(str(self.tar_path), str(self.index_path), len(self._index_lines), self._bytes)

    def abort(self) -> None:
        """Drop a shard that will not be finished (e.g. every sample rejected): no file is left behind."""
        if self._closed:
            return
        os.close(self._fd)
        self._tmp_tar.unlink(missing_ok=True)
        self._closed = True

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
