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


Component = tuple[str, int, int, str]  # (ext, data offset, size, member name): one index entry


def encode_sample(sample: dict[str, str | bytes]) -> tuple[bytes, list[Component]]:
    """Tar members of one sample, as TarFile.addfile writes them (header, data, zero padding to 512 bytes).

    `sample`: "__key__" (no dots, no slashes) and one bytes value per component ("jpg", "cls", "json"),
    written in sorted order like webdataset's TarWriter, each as `<key>.<ext>`. Returns the bytes and the
    index entries, offsets relative to the start of those bytes.
    """
    key = sample["__key__"]
    if "." in key or "/" in key:
        raise ValueError(f"sample key {key!r} must not contain dots or slashes")
    out = bytearray()
    components = []
    for ext in sorted(k for k in sample if k != "__key__"):
        data, name = sample[ext], f"{key}.{ext}"
        out += ustar_header(name, len(data))
        components.append((ext, len(out), len(data), name))
        out += data
        out += b"\0" * (-len(data) % TAR_BLOCK)
    return bytes(out), components


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
    """Write a tar + `.idx` under temporary names, from samples or from parts encoded elsewhere.

        with ShardWriter(out_dir / "train-000000.tar") as shard:
            shard.write({"__key__": "train2017_000000000009", "jpg": b"...", "json": b"{...}"})
            shard.append_part(".train-000000.part00001.tmp", size, [[("jpg", 512, 1234, "k.jpg"), ...], ...])
            closed = shard.close()          # .train-000000.tar.tmp, .train-000000.idx.tmp
        info = publish_shard(closed)        # (in a worker) sha256, fsync, renamed into place

    The sharder's workers encode the members of a chunk of images into a part file (`encode_sample`); this
    process only appends each part with `os.copy_file_range` (the kernel copies, not Python) and shifts its
    index entries: it is the one serial step of the sharder, so it must cost next to nothing per image.
    """

    def __init__(self, tar_path: Path):
        self.tar_path = Path(tar_path)
        self.index_path = self.tar_path.with_suffix(".idx")
        self._tmp_tar = temporary_name(self.tar_path)
        self._fd = os.open(self._tmp_tar, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._bytes = 0
        self._index_lines: list[str] = []
        self._closed = False

    @property
    def samples(self) -> int:
        return len(self._index_lines)

    def write(self, sample: dict[str, str | bytes]) -> None:
        """Append one sample (see `encode_sample`)."""
        data, components = encode_sample(sample)
        self._write_all(data)
        self._add_index(self._bytes, [components])
        self._bytes += len(data)

    def append_part(self, part: str | Path, size: int, samples: list[list[Component]]) -> None:
        """Append `size` bytes of encoded samples from the file `part`; their index entries are part-relative."""
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
        if copied != size:
            raise OSError(f"part file {part} has {copied} bytes, expected {size}")
        self._add_index(self._bytes, samples)
        self._bytes += size

    def _add_index(self, base: int, samples: list[list[Component]]) -> None:
        for components in samples:
            self._index_lines.append(" ".join(f"{ext} {base + offset} {size} {name}"
                                              for ext, offset, size, name in components))

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def close(self) -> ClosedShard:
        """Finish the tar (end-of-archive blocks) and write the index, both under their temporary names."""
        if not self._index_lines:
            raise ValueError(f"{self.tar_path.name}: a shard needs at least one sample (DALI rejects empty tars)")
        end = self._bytes + 2 * TAR_BLOCK
        self._write_all(b"\0" * (2 * TAR_BLOCK + -end % RECORD))
        self._bytes = end + -end % RECORD
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
