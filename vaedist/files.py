"""Writing a file so that it is either absent or whole: temporary name, then an atomic rename.

One helper for every small file vaedist writes (manifest, sharder state, config, metrics, reports), so
that a kill at any moment never leaves a half-written one.
"""
from __future__ import annotations

import os
from pathlib import Path


def write_text_atomic(path: str | Path, text: str, *, fsync: bool = False) -> None:
    """Write UTF-8 `text` to `path.tmp`, then rename it over `path`.

    fsync=True also forces the bytes to disk before the rename, for files whose presence marks finished
    work (the sharder's manifest and done-records): after a power cut they must not exist empty.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)
