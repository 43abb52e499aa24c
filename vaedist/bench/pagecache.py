"""What of a directory's files is in the page cache: evict them, count their resident pages (no root needed).

    evict(directory)                   every file's clean pages dropped (posix_fadvise DONTNEED)
    resident_bytes(path)               bytes of the file's pages in the page cache (mincore), page-rounded
    resident_by_kind(directory, kind)  {kind: resident bytes} over the directory's files, `kind(name)` naming each

After `evict`, what is resident is what some process has read since, the kernel's readahead included: the
bench separates the shard directory's own reads from everything else a process reads (its Python modules,
torch's and DALI's libraries), which `/proc/self/io`'s read_bytes lumps together. mincore(2) reports residency
without touching a page; the mapping is made by libc's mmap through ctypes, because Python's read-only
`mmap.mmap` gives no address to pass it. The same figure as util-linux's `fincore` (tests/test_scale_bench.py
compares the two).
"""
from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path
from typing import Callable

PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
_MAP_FAILED = ctypes.c_void_p(-1).value


def evict(directory: Path) -> None:
    """Drop every file of `directory` from the page cache (clean pages only: the sharder fsyncs its files, and
    this syncs each first)."""
    for path in directory.iterdir():
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def resident_bytes(path: Path) -> int:
    """Bytes of `path`'s pages in the page cache (whole pages: what the kernel read, readahead included)."""
    size = path.stat().st_size
    if size == 0:
        return 0
    fd = os.open(path, os.O_RDONLY)
    try:
        address = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address in (None, _MAP_FAILED):
            raise OSError(ctypes.get_errno(), f"mmap of {path} failed")
        try:
            pages = (ctypes.c_ubyte * -(-size // PAGE))()
            if _libc.mincore(address, size, pages) != 0:
                raise OSError(ctypes.get_errno(), f"mincore of {path} failed")
        finally:
            _libc.munmap(address, size)
    finally:
        os.close(fd)
    return sum(page & 1 for page in bytes(pages)) * PAGE


def resident_by_kind(directory: Path, kind: Callable[[str], str]) -> dict[str, int]:
    """{kind(file name): resident bytes} summed over the files of `directory`."""
    totals: dict[str, int] = {}
    for path in sorted(directory.iterdir()):
        if path.is_file():
            totals[kind(path.name)] = totals.get(kind(path.name), 0) + resident_bytes(path)
    return totals
