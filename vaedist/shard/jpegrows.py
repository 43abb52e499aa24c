"""A clean JPEG the sharder stores unchanged, checked by a decode row by row, each row hashed as it comes.

    decoded = decode_in_rows(data, (width, height), hashes=True)   # RowDecode(hashes) or None

The decode is Pillow's own libjpeg-turbo, driven by vaedist/shard/_pixelpass.c (which says why): the same
pixels as Pillow's `load()`, but no image is made, and the hashes read no memory a second time: per 640x480
photo 13-34 % less time to check it, and the hashes' inputs add ~30-36 us to a ~800 us decode, where reading
Pillow's image took ~55-220 us (2-core CPU VM, 2026-12-03 and 04; docs/benchmarks.md).
None: not decoded here, and the caller decodes with Pillow, whose verdict and message stand:
  - no compiled part (no C compiler at install), no dlopen (Windows), or Pillow not linked to a libjpeg
    with this ABI (libjpeg-turbo, 6b API: the library itself checks the version and the struct's size);
  - any libjpeg error or warning (corrupt or truncated data): Pillow reports it, or accepts the file as it
    did before this decoder existed (Pillow ignores warnings);
  - the pixels differ from Pillow's on the process's first image (`_agrees_with_pillow`): then never again.
"""
from __future__ import annotations

import contextlib
import io
import sys
from dataclasses import dataclass
from typing import Iterator

from PIL import Image

from vaedist.shard.fingerprint import PendingHashes, pending_hashes

try:  # compiled at install when a C compiler is there (setup.py)
    import vaedist.shard._pixelpass as _pixelpass
except ImportError:
    _pixelpass = None


@dataclass(frozen=True)
class RowDecode:
    """Every row of the JPEG decoded without an error or a warning; its hashes' inputs when asked for."""

    hashes: PendingHashes | None


_usable: bool | None = None  # per process: libjpeg found (first call), then False if it ever disagrees with Pillow
_checked = False  # per process: the first decode was compared with Pillow's


def decode_in_rows(data: bytes, size: tuple[int, int], hashes: bool) -> RowDecode | None:
    """Decode `data`, a JPEG whose header Pillow read as `size` (RGB or grey, upright: images._is_clean_jpeg),
    row by row; with `hashes`, hash each row as it comes. None: decode it with Pillow instead."""
    global _checked
    if not row_decoder():
        return None
    width, height = size
    if hashes or not _checked:  # the first decode is hashed, to be compared with Pillow's pixels
        passed = _pixelpass.decode_and_hash_jpeg(data, width, height)
        if passed is None:
            return None
        pending = PendingHashes(exact=passed[0], box_sums=passed[1])
        if not _checked:
            _checked = True
            if not _agrees_with_pillow(data, pending):
                return None
        return RowDecode(hashes=pending if hashes else None)
    return RowDecode(hashes=None) if _pixelpass.decode_jpeg(data, width, height) else None


def row_decoder() -> bool:
    """Whether this process checks clean JPEGs by decode_in_rows (else with Pillow's load)."""
    global _usable
    if _pixelpass is None:
        return False
    if _usable is None:
        # found, and decodes: a libjpeg of another ABI (e.g. a system libjpeg 8) has the same calls but refuses
        # every decode, which would cost each image a failed start before Pillow's decode
        _usable = bool(_pixelpass.use_libjpeg_of(Image.core.__file__)) and _decodes_a_probe()
    return _usable


def _decodes_a_probe() -> bool:
    probe = io.BytesIO()
    Image.new("RGB", (16, 16), (30, 120, 200)).save(probe, format="JPEG")
    return bool(_pixelpass.decode_jpeg(probe.getvalue(), 16, 16))


def xxh3_variants() -> tuple[str, str] | None:
    """(xxh3's SIMD variant for an image in memory, the one for the rows), e.g. ("avx512", "avx2"); None without
    the compiled part. At most AVX2 for the rows: vaedist/shard/_pixelpass.c says why."""
    return _pixelpass.xxh3_variants() if _pixelpass is not None else None


@contextlib.contextmanager
def rows_hashed_by(variant: str) -> Iterator[bool]:
    """Within it, the rows are hashed by xxh3's `variant` ("sse2", "avx2", "avx512") where this CPU runs it
    (yields whether it does): for benchmarks that set the variants side by side (python -m vaedist.bench
    shard). The hashes are the same whichever variant computes them."""
    variants = xxh3_variants()
    if variants is None:
        yield False
        return
    try:
        yield bool(_pixelpass.use_xxh3_for_rows(variant))
    finally:
        _pixelpass.use_xxh3_for_rows(variants[1])


@contextlib.contextmanager
def pillow_decode_only() -> Iterator[None]:
    """Within it, Pillow decodes every JPEG in this process, as without the compiled part: for benchmarks that
    set the two side by side (python -m vaedist.bench shard)."""
    global _usable
    before = row_decoder()
    _usable = False
    try:
        yield
    finally:
        _usable = before


def _agrees_with_pillow(data: bytes, decoded: PendingHashes) -> bool:
    """Whether Pillow's decode of `data` hashes the same (so the same pixels): a stale build, or a Pillow linked
    to another libjpeg, must not store other hashes than Pillow's decode gives. On a mismatch, Pillow decodes
    every JPEG in this process from then on, and that is said once on stderr."""
    global _usable
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            reference = pending_hashes(img, straight_from_decoder=True)
        agrees = reference.exact == decoded.exact and reference.box_sums == decoded.box_sums
    except Exception:  # Pillow refuses what the rows accepted: not the same decoder; its own decode says why
        agrees = False
    if not agrees:
        _usable = False
        print("vaedist: the row-by-row JPEG decode (vaedist.shard._pixelpass) differs from Pillow's decode on "
              "the first image: decoding with Pillow (slower); reinstall vaedist to rebuild it", file=sys.stderr)
    return agrees
