"""The JPEG header's marker chain, checked without decoding (microseconds): SOI, then segments up to the
first start-of-scan, each a 0xFF marker with a length that stays inside the file.

libjpeg (Pillow) skips stray bytes between segments with a warning; DALI's parser (nvImageCodec) rejects
the file ("Invalid marker"), and DALI 2.4's CPU decoder, given such a file in a batch of a few dozen, can
crash the process (a segfault, measured here: 3 runs in 6), which no error handling can catch. So the
sharder re-encodes a JPEG whose chain is not clean instead of copying it, and the loader checks the chain
of every JPEG it reads for a batch (vaedist.data.dali, .reference) and treats a chain broken after sharding
as a bad sample, before DALI ever sees it.

`jpeg_size` / `header_size` read the stored size from the frame header without decoding (the sharder's
table); `stored_size` is that read on a JPEG inside a tar: its first 64 KiB, else the whole JPEG (the
table's rebuild, the old start-up path that indexes the tars).
"""
from __future__ import annotations

import io
from typing import Callable

from PIL import Image, UnidentifiedImageError

SOI, EOI, SOS = 0xD8, 0xD9, 0xDA
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: no length field


def marker_chain_problem(data: bytes | memoryview) -> str | None:
    """What is wrong with the header's marker chain, or None when it is clean up to the first scan."""
    end = len(data)
    if end < 4 or data[0] != 0xFF or data[1] != SOI:
        return "has no start-of-image marker"
    pos = 2
    while True:
        if pos + 4 > end:
            return "ends before its start-of-scan marker"
        if data[pos] != 0xFF:
            return f"has a broken marker chain (byte {pos} is 0x{data[pos]:02x}, not a marker)"
        marker = data[pos + 1]
        if marker == 0xFF:  # fill bytes before a marker are allowed
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker in (SOI, EOI, 0x00):
            return f"has a broken marker chain (marker 0x{marker:02x} at byte {pos}, before any scan)"
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2 or pos + 2 + length > end:
            return f"has a broken marker chain (the segment at byte {pos} runs past the end)"
        if marker == SOS:
            return None
        pos += 2 + length


# Start-of-frame markers (baseline, extended, progressive, lossless; Huffman or arithmetic coded).
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def jpeg_size(data: memoryview | bytes) -> tuple[int, int]:
    """(width, height) of a JPEG from its frame header, without decoding: a few marker hops, microseconds.

    These are the coded pixels, what the decoders return with EXIF orientation ignored (the sharder writes
    upright images). Anything unexpected falls back to Pillow's header parser.
    """
    pos, end = 2, len(data)
    while pos + 9 <= end and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _SOF_MARKERS:
            height, width = int.from_bytes(data[pos + 5 : pos + 7], "big"), int.from_bytes(data[pos + 7 : pos + 9], "big")
            if width and height:  # height 0: defined later by a DNL marker; let Pillow work it out
                return width, height
            break
        if 0xD0 <= marker <= 0xD9 or marker == 0x01:  # markers without a length field
            pos += 2
            continue
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    with Image.open(io.BytesIO(bytes(data))) as img:
        return img.size


# The start of a JPEG read for its size: its frame header follows EXIF / ICC segments (up to 64 KiB each)
# in the worst case; a JPEG whose header lies further in is read whole.
JPEG_HEADER_BYTES = 1 << 16


class JpegProblem(ValueError):
    """A JPEG whose header cannot be trusted to a decoder; `str(err)` says what is wrong, as a predicate."""


def header_size(data: memoryview | bytes) -> tuple[int, int]:
    """(width, height) of a JPEG whose marker chain is clean (JpegProblem otherwise: DALI's parser rejects such
    a file, and may crash in a batch), read from its header."""
    problem = marker_chain_problem(data)
    if problem is not None:
        raise JpegProblem(problem)
    try:
        return jpeg_size(data)
    except Exception as err:  # whatever Pillow's fallback parser raises for bytes that are no JPEG
        what = ("no frame header, and Pillow cannot identify it" if isinstance(err, UnidentifiedImageError)
                else f"{type(err).__name__}: {err}")
        raise JpegProblem(f"is not a readable JPEG ({what})") from None


def stored_size(read_start: Callable[[int], bytes | memoryview], size: int) -> tuple[int, int]:
    """(width, height) of a JPEG of `size` bytes stored elsewhere (a tar member): `read_start(n)` gives its
    first n bytes. Reads the first JPEG_HEADER_BYTES, and the whole JPEG only when its frame header lies
    further in (JpegProblem when even that has none)."""
    try:
        return header_size(read_start(min(size, JPEG_HEADER_BYTES)))
    except JpegProblem:
        if size <= JPEG_HEADER_BYTES:
            raise
        return header_size(read_start(size))
