"""Writing a file so that it is either absent or whole: temporary name, then an atomic rename.

One helper for every file vaedist writes whole (manifest, sharder state, config, metrics, reports, PNGs,
weights), so that a kill at any moment never leaves a half-written one.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path
from typing import Iterator

from vaedist.errors import UserError


@contextlib.contextmanager
def atomic_path(path: str | Path, *, fsync: bool = False) -> Iterator[Path]:
    """Yield `path.tmp` to write; when the block ends, rename it over `path` (or remove it, on any error).

    fsync=True forces the bytes to disk before the rename, for files whose presence marks finished work
    (the sharder's manifest and done-records): after a power cut they must not exist empty.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # nothing half-written left behind, whatever stopped us
        raise


def write_text_atomic(path: str | Path, text: str, *, fsync: bool = False) -> None:
    """Write UTF-8 `text` to `path` through `atomic_path`."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | Path, payload: dict) -> None:
    """`payload` as indented JSON through `write_text_atomic(fsync=True)`: absent or whole, even after a power cut."""
    write_text_atomic(path, json.dumps(payload, indent=1) + "\n", fsync=True)


def check_output_file(path: str | Path, option: str) -> Path:
    """Refuse, before any work is done, an output path whose folder is missing or that is a folder itself."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} '{path}' is a folder; give a file name, e.g. {path / 'out.json'}")
    if not path.parent.is_dir():
        raise UserError(f"{option} '{path}': folder '{path.parent}' does not exist; create it first")
    return path


FULL_BELOW = 1 << 20  # free bytes under which a failed write is taken for a full disk


def write_failure(err: BaseException, folder: str | Path) -> str | None:
    """Why writing into `folder` failed when it is the disk's doing (full, quota, read-only, I/O error), as
    the system words it; None for anything else (a bug, which should keep its traceback).

    torch.save reports a full disk as "unexpected pos N vs M" (a RuntimeError) and safetensors as a
    SafetensorError naming "os error 28", so besides OSError the message and the free space tell.
    """
    if isinstance(err, OSError) and err.errno is not None:
        return err.strerror or str(err)
    if "No space left on device" in str(err) or "os error 28" in str(err):
        return os.strerror(errno.ENOSPC)
    try:
        stat = os.statvfs(folder if Path(folder).exists() else Path(folder).parent)
    except OSError:
        return None
    return os.strerror(errno.ENOSPC) if stat.f_bavail * stat.f_frsize < FULL_BELOW else None
