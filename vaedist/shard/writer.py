"""One shard on disk: a WebDataset tar and its DALI index, both written in one pass, under temporary names.

The index is the text format DALI's `wds2idx` writes (checked against its source, `wds2idx.py`,
`IndexCreator.create_index`): a first line `v1.2 <number of samples>`, then one line per sample listing each
component as `<ext> <data offset> <size> <member name>`, offsets in bytes from the start of the tar to the
component's data (its 512-byte header excluded). `tests/test_shard_writer.py` checks ours against wds2idx's.
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

from vaedist.shard.manifest import ShardInfo

INDEX_VERSION = "v1.2"
TAR_BLOCK = 512
# A fixed member mtime makes the tars, and so their sha256, depend only on their content.
FIXED_MTIME = 1_500_000_000


def temporary_name(path: Path) -> Path:
    """`train-000000.tar` -> `.train-000000.tar.tmp`: hidden, and swept away by the next run if left behind."""
    return path.with_name(f".{path.name}.tmp")


class _HashingFile:
    """A write-only file that keeps a sha256 and a byte count of what passes through (no second read)."""

    def __init__(self, path: Path):
        self._fh = open(path, "wb")
        self.sha256 = hashlib.sha256()
        self.bytes = 0
        self._discarded = False

    def write(self, data) -> int:
        if self._discarded:  # the abandoned TarFile may still flush its buffer when garbage-collected
            return len(data)
        self.sha256.update(data)
        self.bytes += len(data)
        return self._fh.write(data)

    def tell(self) -> int:
        return self.bytes

    def flush(self) -> None:
        self._fh.flush()

    def close_synced(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()

    def discard(self) -> None:
        self._discarded = True
        self._fh.close()


class ShardWriter:
    """Write samples {"__key__", "jpg", "cls"?, "json"} to `<dir>/<name>.tar` + `.idx`, renamed into place on `commit()`.

        with ShardWriter(out_dir / "train-000000.tar") as shard:
            shard.write({"__key__": "train2017_000000000009", "jpg": b"...", "json": b"{...}"})
            info = shard.commit()      # tar and idx renamed into place; ShardInfo for the manifest
    """

    def __init__(self, tar_path: Path):
        self.tar_path = Path(tar_path)
        self.index_path = self.tar_path.with_suffix(".idx")
        self._tmp_tar = temporary_name(self.tar_path)
        self._file = _HashingFile(self._tmp_tar)
        # tarfile's seekless "w" mode writes each member straight to the file; webdataset's TarWriter uses the
        # stream mode "w|", whose re-buffering costs as much CPU as hashing and writing together, and this
        # process must stay light: it is the one serial step next to the decoding workers.
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self._index_lines: list[str] = []
        self._committed = False

    @property
    def samples(self) -> int:
        return len(self._index_lines)

    def write(self, sample: dict[str, str | bytes]) -> None:
        """`sample`: "__key__" (str, no dots) and one bytes value per component ("jpg", "cls", "json").

        Components are written in sorted order, like webdataset's TarWriter, each as `<key>.<ext>`.
        """
        key = sample["__key__"]
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must not contain dots or slashes")
        components = []
        for ext in sorted(k for k in sample if k != "__key__"):
            data = sample[ext]
            member = tarfile.TarInfo(f"{key}.{ext}")
            member.size, member.mtime, member.mode = len(data), FIXED_MTIME, 0o444
            start = self._tar.offset
            self._tar.addfile(member, io.BytesIO(data))
            padded = -(-len(data) // TAR_BLOCK) * TAR_BLOCK
            header = self._tar.offset - start - padded  # 512 for USTAR names; measured, not assumed
            components.append(f"{ext} {start + header} {len(data)} {member.name}")
        self._index_lines.append(" ".join(components))

    def commit(self) -> ShardInfo:
        """Finish the tar, write the index, fsync both and rename them into place (index first)."""
        if not self._index_lines:
            raise ValueError(f"{self.tar_path.name}: a shard needs at least one sample (DALI rejects empty tars)")
        self._tar.close()  # writes the end-of-archive blocks through _HashingFile; leaves the file open
        self._file.close_synced()
        tmp_index = temporary_name(self.index_path)
        with open(tmp_index, "w") as fh:
            fh.write(f"{INDEX_VERSION} {len(self._index_lines)}\n")
            fh.write("\n".join(self._index_lines) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_index, self.index_path)
        os.replace(self._tmp_tar, self.tar_path)
        self._committed = True
        return ShardInfo(
            name=self.tar_path.name,
            index=self.index_path.name,
            samples=len(self._index_lines),
            bytes=self._file.bytes,
            sha256=self._file.sha256.hexdigest(),
        )

    def abort(self) -> None:
        """Drop a shard that will not be finished (e.g. every sample rejected): no file is left behind."""
        if self._committed:
            return
        self._file.discard()  # the TarFile is dropped unclosed: no end-of-archive blocks for a file we delete
        self._tmp_tar.unlink(missing_ok=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._committed:
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
