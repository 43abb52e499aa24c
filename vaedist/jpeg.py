"""The JPEG header's marker chain, checked without decoding (microseconds): SOI, then segments up to the
first start-of-scan, each a 0xFF marker with a length that stays inside the file.

libjpeg (Pillow) skips stray bytes between segments with a warning; DALI's parser (nvImageCodec) rejects
the file ("Invalid marker"), and DALI 2.4's CPU decoder, given such a file in a batch of a few dozen, can
crash the process (a segfault, measured here: 3 runs in 6), which no error handling can catch. So the
sharder re-encodes a JPEG whose chain is not clean instead of copying it, and the loader's start-up check
treats a chain broken after sharding as a damaged member, before DALI ever sees it.
"""
from __future__ import annotations

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
