"""An image's two hashes, computed from the pixels the sharder decoded to check it (no second decode).

    hashes = image_hashes(img, straight_from_decoder=True)   # format.ImageHashes(exact, perceptual)

    pending = [pending_hashes(img, straight_from_decoder=True) for img in chunk]   # while each is decoded
    hashes = finish_hashes(pending)                                                # once per chunk

exact (format.EXACT_HASH): xxh3-128 over a header with the size and the upright pixels as 8-bit RGBA, alpha
    255. Any two files that decode to the same pixels match — a byte copy, a PNG or lossless WebP re-save,
    a grey JPEG and its RGB copy, an EXIF-rotated JPEG and its upright copy — and nothing else does: a JPEG
    re-encode (even at quality 100) changes pixels, so it is a *near* copy. With --max-side a JPEG is
    decoded at a reduced scale (DCT-domain, what the sharder stores): its exact hash covers those pixels,
    so byte copies still match exactly but a PNG re-save of it only as a near copy.
    xxh3, not sha256: this is a duplicate finder, not a signature; xxh3 over a 640x480 image's pixels in
    place took ~40 us in the worker's loop (its decode and check ~1.1 ms; 2026-12-01, 2-core CPU VM; about
    the time to read 1.2 MB that has just left the cache); 128 bits make an accidental collision among 10^6
    images ~10^-27 likely.
perceptual (format.PERCEPTUAL_HASH): imagehash's pHash (the 8x8 lowest frequencies of a 32x32 DCT, each
    bit above or below their median) of a 32x32 thumbnail of the green channel: a 128x128 grid of pixels
    (nearest), box-averaged 4x4. Sampling ~16k pixels instead of averaging all of them takes ~30-40 us on a
    640x480 photo (2026-12-01, 2-core CPU VM; with the chunked pHash, hashing went from +36 % to +18 % of the
    decode-and-check time, docs/benchmarks.md) and kept the hash where the full average had it: within 1.9 bits on average of imagehash's own pHash of the full-resolution channel on real photos
    (tests/test_fingerprint.py); sampling straight to 32x32 is 9 bits off on average. Green rather than luma
    because extracting one channel costs about a third of converting to grey. The threshold measurement
    (`python -m vaedist.bench dedup threshold`) is of this definition. Grey images use their one channel,
    which is the green of their RGB copy.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Sequence

import xxhash
from PIL import Image

from vaedist.shard.format import ImageHashes

PHASH_INPUT_SIDE = 32  # imagehash.phash's own working size (hash_size 8 x highfreq_factor 4)
SAMPLE_GRID = 4 * PHASH_INPUT_SIDE  # points sampled per side, then box-averaged 4x4 to imagehash's 32x32


@dataclass(frozen=True)
class PendingHashes:
    """What an image's hashes need of its pixels, taken while they are decoded: the exact hash, and the 32x32
    thumbnail its perceptual hash is of (1 KB); `finish_hashes` hashes the thumbnails of a chunk together."""

    exact: bytes
    thumbnail: Image.Image


def pending_hashes(img: Image.Image, straight_from_decoder: bool = False) -> PendingHashes:
    """The exact hash and the thumbnail of an upright RGB or grey ("L") image.

    `straight_from_decoder`: `img` is an RGB image as Pillow's decoder produced it, whose hidden fourth byte
    per pixel is 255 (libjpeg-turbo and Pillow's unpackers write it so; the tests check it against the
    general path), so its memory can be hashed in place. Other images (composited, converted) go through
    a copy that sets that byte.
    """
    return PendingHashes(exact=exact_hash(img, straight_from_decoder), thumbnail=thumbnail(img))


def finish_hashes(pending: Sequence[PendingHashes]) -> list[ImageHashes]:
    """The hashes of images whose pixels are gone: the perceptual hash of each thumbnail, one after the other.

    Why not one image at a time: imagehash.phash (~30 numpy and SciPy calls on 32x32 values) took ~44 us when
    called in a row, but ~130 us when called between two decodes, which flush the caches it runs from (in
    the worker's loop, 2026-12-01, 2-core CPU VM). Hashing a chunk's thumbnails together pays that once.
    """
    return [ImageHashes(exact=p.exact, perceptual=_phash(p.thumbnail)) for p in pending]


def image_hashes(img: Image.Image, straight_from_decoder: bool = False) -> ImageHashes:
    """Both hashes of one image (see pending_hashes)."""
    return finish_hashes([pending_hashes(img, straight_from_decoder)])[0]


def exact_hash(img: Image.Image, straight_from_decoder: bool = False) -> bytes:
    digest = xxhash.xxh3_128(b"RGBA8 %d %d\n" % img.size)
    in_place = _pixel_memory(img) if straight_from_decoder and img.mode == "RGB" else None
    if in_place is not None:
        digest.update(in_place[1])
    else:
        digest.update(img.convert("RGBA").tobytes())  # RGB -> RGBA sets alpha 255; grey is replicated
    return digest.digest()


def perceptual_hash(img: Image.Image) -> int:
    return _phash(thumbnail(img))


def _phash(small: Image.Image) -> int:
    # imagehash imports SciPy and numpy (~0.2-0.45 s, OpenBLAS's threads): only the worker processes that hash
    # pay for it, not the sharder's writing process (which imports this module through images.py) nor --dedup off
    import imagehash
    # numpy: imported by imagehash anyway, so kept off the same paths
    import numpy as np

    code = imagehash.phash(small)
    # imagehash's bits in its own order, row by row, the first most significant (its hex string's order):
    # int(str(code), 16) is the same integer at ~10x the cost (11 against 1 us here)
    return int.from_bytes(np.packbits(code.hash).tobytes(), "big")


def thumbnail(img: Image.Image) -> Image.Image:
    """The 32x32 grey image the perceptual hash is of: the green channel (grey: the one channel) at a
    SAMPLE_GRID x SAMPLE_GRID grid of pixels (nearest), box-averaged 4x4, so that each of the 32x32 values
    still averages 16 pixels spread over its cell (sampled straight to 32x32, resized copies move too far)."""
    sampled = img.resize((SAMPLE_GRID, SAMPLE_GRID), Image.Resampling.NEAREST)
    channel = sampled.getchannel("G") if sampled.mode == "RGB" else sampled.convert("L")
    return channel.reduce(SAMPLE_GRID // PHASH_INPUT_SIDE)


# --- the pixels in place -------------------------------------------------------------------------------------
# Pillow stores an RGB image as 4 bytes per pixel; tobytes() repacks them to 3 (~150 us for 640x480 here,
# 8x the hash itself). Pillow (>= 11.2) also exports its memory through the Arrow C data interface, a
# stable C ABI: the array's one child holds the pixels as RGBX bytes. Read through ctypes, without a copy.


class _ArrowArray(ctypes.Structure):
    pass


_ArrowArray._fields_ = [("length", ctypes.c_int64), ("null_count", ctypes.c_int64), ("offset", ctypes.c_int64),
                        ("n_buffers", ctypes.c_int64), ("n_children", ctypes.c_int64),
                        ("buffers", ctypes.POINTER(ctypes.c_void_p)),
                        ("children", ctypes.POINTER(ctypes.POINTER(_ArrowArray))),
                        ("dictionary", ctypes.c_void_p), ("release", ctypes.c_void_p),
                        ("private_data", ctypes.c_void_p)]


class _ArrowSchema(ctypes.Structure):
    pass


_ArrowSchema._fields_ = [("format", ctypes.c_char_p), ("name", ctypes.c_char_p), ("metadata", ctypes.c_char_p),
                         ("flags", ctypes.c_int64), ("n_children", ctypes.c_int64),
                         ("children", ctypes.POINTER(ctypes.POINTER(_ArrowSchema))),
                         ("dictionary", ctypes.c_void_p), ("release", ctypes.c_void_p),
                         ("private_data", ctypes.c_void_p)]

_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


def _pixel_memory(img: Image.Image) -> tuple[object, memoryview] | None:
    """(owner, RGBX bytes of `img`, row by row) without a copy; None where Pillow cannot export them (older
    Pillow, an image stored in several blocks): the caller then copies. Keep `owner` alive while reading."""
    try:
        schema_capsule, array_capsule = img.__arrow_c_array__()
    except (AttributeError, ValueError, OSError):
        return None
    schema = _ArrowSchema.from_address(_capsule_pointer(schema_capsule, b"arrow_schema"))
    array = _ArrowArray.from_address(_capsule_pointer(array_capsule, b"arrow_array"))
    # RGB images come as fixed-size lists of 4 bytes: anything else is not the layout we hash
    if (schema.format != b"+w:4" or schema.n_children != 1 or schema.children[0].contents.format != b"C"
            or array.n_children != 1 or array.length != img.width * img.height or array.offset != 0):
        return None
    pixels = array.children[0].contents
    if pixels.n_buffers != 2 or pixels.offset != 0 or pixels.length != 4 * img.width * img.height:
        return None
    data = (ctypes.c_char * pixels.length).from_address(pixels.buffers[1])
    return (schema_capsule, array_capsule), memoryview(data).cast("B")
