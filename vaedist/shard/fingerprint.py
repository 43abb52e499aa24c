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
    (nearest), box-averaged 4x4. Sampling ~16k pixels instead of averaging all of them keeps the hash where
    the full average had it: within 1.9 bits on average of imagehash's own pHash of the full-resolution
    channel on real photos (tests/test_fingerprint.py); sampling straight to 32x32 is 9 bits off on average.
    Green rather than luma because extracting one channel costs about a third of converting to grey. The
    threshold measurement (`python -m vaedist.bench dedup threshold`) is of this definition. Grey images use
    their one channel, which is the green of their RGB copy.

Where the time goes (the hashing's goal: under 5 % of the sharder's time, `python -m vaedist.bench shard`).
Per image, the sharder decodes a 640x480 photo in ~1.1-2.6 ms (this host's speed varies that much); called
once per image, Pillow's resize and reduce (the thumbnail) took ~40-80 us and imagehash.phash ~120-150 us (~30
numpy and SciPy calls on 1,024 values, `np.median` alone ~48 us; 2026-12-02, 2-core CPU VM): together ~3x the
goal. So the work is split by what it costs per call:
  - per image, only what needs its pixels, in one read of the decoder's own memory: the exact hash and the
    4x4 box sums of the 16,384 grid points' green values (the same points Pillow's NEAREST resize picks:
    `_grid_offsets`). `_pixelpass` (C, vaedist/shard/_pixelpass.c) hashes each row and sums its grid points
    while the row is in the first-level cache: ~90 us per image where the numpy path (xxhash, then numpy's
    `take`, which reads ~5,000 cache lines of the image a second time) took ~190 us (2026-12-03, 640x480;
    221 against 326 us in a phase when this shared host's memory was contended: the read moves with it).
    A clean JPEG stored unchanged (nearly all of COCO and Food-101) does not come here at all: jpegrows.py
    decodes it row by row and `_pixelpass` runs the same pass on each row as libjpeg-turbo emits it, ~30-36 us
    per 640x480 image with xxh3's AVX2 code on a decode of ~800 us, 13-30 % less than Pillow's (2026-12-04,
    same VM; xxh3's AVX-512 code took ~120 us there: _pixelpass.c says why). Without a
    compiler at install time the numpy path is taken: the same hashes. The Pillow path, `thumbnail`, is kept
    as the definition and for images not straight from the decoder; the tests hold the three equal, and each
    process checks the C pass against the numpy path on its first image (`_pixelpass_agrees`);
  - per chunk, everything else, for all its images in one call each: the box averages (`_box_averages`),
    then imagehash.phash's own steps — the same SciPy DCTs, median and comparison, on a stack instead of one
    image (`_phash_stack`; its exact steps in C where _pixelpass is built): ~9 us per image in the worker's
    loop (2026-12-04). Each process checks the stack's result against imagehash.phash itself on its first chunk
    (`_agrees_with_imagehash`), and hashes one image at a time with imagehash from then on if they ever differ:
    what is stored is imagehash's pHash, bit for bit.
"""
from __future__ import annotations

import ctypes
import functools
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import xxhash
from PIL import Image

from vaedist.shard.format import ImageHashes

try:  # compiled at install when a C compiler is there (setup.py); else the numpy path, the same hashes
    import vaedist.shard._pixelpass as _pixelpass
except ImportError:
    _pixelpass = None

if TYPE_CHECKING:  # for the annotations only: numpy is imported where hashes are made (_imagehash_code says why)
    import numpy as np

PHASH_INPUT_SIDE = 32  # imagehash.phash's own working size (hash_size 8 x highfreq_factor 4)
PHASH_HASH_SIDE = 8  # imagehash.phash's hash_size: the 8x8 lowest frequencies
BOX = 4  # each thumbnail value averages BOX x BOX grid points
SAMPLE_GRID = BOX * PHASH_INPUT_SIDE  # points sampled per side, then box-averaged to imagehash's 32x32


@dataclass(frozen=True)
class PendingHashes:
    """What an image's hashes need of its pixels, taken while they are decoded: the exact hash, and the
    PHASH_INPUT_SIDE x PHASH_INPUT_SIDE box sums of the green values at the SAMPLE_GRID x SAMPLE_GRID grid
    points, as the bytes of uint16 in native order, row by row (at most BOX**2 x 255 each): what `_pixelpass`
    returns. `finish_hashes` averages and hashes a chunk's sums together: bytes, so that it makes one array of
    a chunk's sums, not one per image and then a stack of them (~6 us per image less, with the median below;
    2026-12-04)."""

    exact: bytes
    box_sums: bytes


def pending_hashes(img: Image.Image, straight_from_decoder: bool = False) -> PendingHashes:
    """The exact hash and the box sums of an upright RGB or grey ("L") image.

    `straight_from_decoder`: `img` is an RGB image as Pillow's decoder produced it, whose hidden fourth byte
    per pixel is 255 (libjpeg-turbo and Pillow's unpackers write it so; the tests check it against the
    general path), so its memory can be hashed and sampled in place: by `_pixelpass` in one pass, or by
    xxhash and numpy. Other images (composited, converted) go through a copy that sets that byte, and
    through Pillow for the grid.
    """
    passed = _one_pass_in_c(img) if straight_from_decoder else None
    if passed is not None:
        return PendingHashes(exact=passed[0], box_sums=passed[1])
    memory = _pixel_memory(img) if straight_from_decoder else None
    if memory is None:
        return PendingHashes(exact=exact_hash(img), box_sums=_box_sums(_sampled_channel(img)))
    return _pending_in_place(img.size, memory[1])


def pixel_pass() -> str:
    """What reads a decoder's image for its hashes in this process: "C" (_pixelpass) or "numpy"."""
    return "C" if _pixelpass is not None else "numpy"


def _pending_in_place(size: tuple[int, int], pixels: memoryview) -> PendingHashes:
    """The numpy path over an RGBX image's memory: xxhash reads it, then numpy's take its grid points."""
    import numpy as np  # numpy: only where hashes are made (_imagehash_code says why)

    exact = _exact_digest(size, pixels)
    planes = np.frombuffer(pixels, np.uint8).take(_grid_offsets(*size))  # green values, box by box
    return PendingHashes(exact=exact, box_sums=planes.sum(axis=0, dtype=np.uint16).tobytes())


def _one_pass_in_c(img: Image.Image) -> tuple[bytes, bytes] | None:
    """(exact hash, box sums as bytes) of a decoder's RGB image by `_pixelpass`; None where it is not built,
    Pillow cannot export the image in one block, or it failed its check."""
    array_capsule = _rgb_export(img) if _pixelpass is not None else None
    if array_capsule is None:
        return None
    passed = _pixelpass.hash_and_sample(array_capsule, img.width, img.height)
    return passed if passed is not None and _pixelpass_agrees(img, passed) else None


_pixelpass_checked: bool | None = None  # per process: the C pass's first result against the numpy path's


def _pixelpass_agrees(img: Image.Image, passed: tuple[bytes, bytes]) -> bool:
    """Whether the C pass gives what the numpy path gives, checked on the process's first image (a stale or
    miscompiled build must not store other hashes than a numpy-only install); on a mismatch the numpy path
    is taken from then on, and that is said once on stderr."""
    global _pixelpass, _pixelpass_checked
    if _pixelpass_checked is None:
        memory = _pixel_memory(img)
        reference = _pending_in_place(img.size, memory[1]) if memory is not None else None
        _pixelpass_checked = reference is not None and reference.exact == passed[0] \
            and reference.box_sums == passed[1]
        if not _pixelpass_checked:
            _pixelpass = None
            print("vaedist: the compiled hashing pass (vaedist.shard._pixelpass) differs from the numpy path on "
                  "the first image: hashing with numpy (slower); reinstall vaedist to rebuild it", file=sys.stderr)
    return _pixelpass_checked


def finish_hashes(pending: Sequence[PendingHashes]) -> list[ImageHashes]:
    """The hashes of images whose pixels are gone: their thumbnails and perceptual hashes, the chunk's at once.

    Why a chunk at once: per call, numpy and SciPy cost far more than the arithmetic on 1,024 values (module
    docstring); the first call after a chunk's decodes also pays for their code and data, which the decodes
    flushed from the caches (~300 us for imagehash.phash in the worker's loop, 2026-12-01).
    """
    if not pending:
        return []
    thumbnails = _box_averages([p.box_sums for p in pending])
    return [ImageHashes(exact=p.exact, perceptual=code) for p, code in zip(pending, _perceptual_codes(thumbnails))]


def image_hashes(img: Image.Image, straight_from_decoder: bool = False) -> ImageHashes:
    """Both hashes of one image (see pending_hashes)."""
    return finish_hashes([pending_hashes(img, straight_from_decoder)])[0]


def exact_hash(img: Image.Image, straight_from_decoder: bool = False) -> bytes:
    in_place = _pixel_memory(img) if straight_from_decoder else None
    if in_place is not None:
        return _exact_digest(img.size, in_place[1])
    return _exact_digest(img.size, img.convert("RGBA").tobytes())  # RGB -> RGBA sets alpha 255; grey replicated


def _exact_digest(size: tuple[int, int], rgba: "bytes | memoryview") -> bytes:
    digest = xxhash.xxh3_128(b"RGBA8 %d %d\n" % size)
    digest.update(rgba)
    return digest.digest()


def perceptual_hash(img: Image.Image) -> int:
    """imagehash.phash of `thumbnail(img)`, as an integer in imagehash's bit order: the definition, one image
    at a time (the sharder's chunk-wise path gives the same bits, tests/test_fingerprint.py)."""
    return _imagehash_code(thumbnail(img))


def thumbnail(img: Image.Image) -> Image.Image:
    """The 32x32 grey image the perceptual hash is of: the green channel (grey: the one channel) at a
    SAMPLE_GRID x SAMPLE_GRID grid of pixels (nearest), box-averaged 4x4, so that each of the 32x32 values
    still averages 16 pixels spread over its cell (sampled straight to 32x32, resized copies move too far)."""
    return _sampled_channel(img).reduce(BOX)


def _sampled_channel(img: Image.Image) -> Image.Image:
    """The SAMPLE_GRID x SAMPLE_GRID grid points of the green channel, by Pillow (the definition)."""
    sampled = img.resize((SAMPLE_GRID, SAMPLE_GRID), Image.Resampling.NEAREST)
    return sampled.getchannel("G") if sampled.mode == "RGB" else sampled.convert("L")


def _box_sums(channel: Image.Image) -> bytes:
    """A SAMPLE_GRID x SAMPLE_GRID grey image's BOX x BOX box sums, row by row (PendingHashes.box_sums)."""
    import numpy as np  # numpy: only where hashes are made (_imagehash_code says why)

    return _as_planes(np.asarray(channel)).sum(axis=0, dtype=np.uint16).tobytes()


def _as_planes(grid: "np.ndarray") -> "np.ndarray":
    """A SAMPLE_GRID x SAMPLE_GRID array as BOX**2 planes of its boxes' points: planes[k, b] is the k-th of the
    16 points of box b (boxes row by row), so that the box sums are 16 planes added."""
    import numpy as np  # numpy: only where hashes are made (_imagehash_code says why)

    boxes = grid.reshape(PHASH_INPUT_SIDE, BOX, PHASH_INPUT_SIDE, BOX).transpose(1, 3, 0, 2)
    return np.ascontiguousarray(boxes).reshape(BOX**2, PHASH_INPUT_SIDE**2)


@functools.lru_cache(maxsize=512)  # datasets hold a few hundred sizes at most (COCO: ~1,000 in 118k images)
def _grid_offsets(width: int, height: int) -> "np.ndarray":
    """Byte offsets of the grid points' green values in an RGBX image of this size, in PendingHashes.grid's
    order. Pillow's NEAREST resize to SAMPLE_GRID takes, for output column x, input column
    floor((x + 0.5) * width / SAMPLE_GRID): exact in binary (SAMPLE_GRID is a power of two), so integer
    arithmetic gives the same points (tests/test_fingerprint.py checks it on many sizes)."""
    import numpy as np  # numpy: only where hashes are made (_imagehash_code says why)

    points = 2 * np.arange(SAMPLE_GRID, dtype=np.int64) + 1
    columns, rows = points * width // (2 * SAMPLE_GRID), points * height // (2 * SAMPLE_GRID)
    offsets = (rows[:, None] * width + columns[None, :]) * 4 + 1  # +1: green, in R G B X
    # intp, numpy's own index type: take converts any other per call (int32 was ~25 % slower, 2026-12-02)
    return _as_planes(offsets).astype(np.intp)


def _box_averages(box_sums: Sequence[bytes]) -> "np.ndarray":
    """Each image's box averages, rounded as Image.reduce rounds them ((sum + 8) // 16): (n, 32, 32) float64
    holding integers 0..255, imagehash's pixels as SciPy's DCT receives them. One call per chunk: per call,
    numpy costs more than the arithmetic (and a matrix product for the sums went through OpenBLAS, whose
    threads, started above ~32 images per call, cost the sharder's busy workers ~1 ms of CPU per image).
    With _pixelpass, in C (the same integers; together with _phash_stack's ~3 us per image less)."""
    import numpy as np  # numpy: only where hashes are made (_imagehash_code says why)

    shape = (len(box_sums), PHASH_INPUT_SIDE, PHASH_INPUT_SIDE)
    if _pixelpass is not None:
        return np.frombuffer(_pixelpass.box_averages(box_sums), np.float64).reshape(shape)
    sums = np.frombuffer(b"".join(box_sums), np.uint16)
    averages = (sums + BOX**2 // 2) >> 4  # // 16, in uint16: at most 16 x 255 + 8
    return averages.astype(np.float64).reshape(shape)


def _perceptual_codes(thumbnails: "np.ndarray") -> list[int]:
    """imagehash.phash's codes of (n, 32, 32) thumbnails, each an integer in imagehash's bit order."""
    if _agrees_with_imagehash(thumbnails[0]):
        return _phash_stack(thumbnails)
    return [_imagehash_code(_grey_image(t)) for t in thumbnails]


def _phash_stack(thumbnails: "np.ndarray") -> list[int]:
    """imagehash.phash's steps (imagehash 4.3: two scipy.fftpack DCTs, the 8x8 lowest frequencies, their
    median, greater-than) on every thumbnail of the stack at once."""
    import numpy as np  # numpy: only where hashes are made (_imagehash_code says why)
    import scipy.fftpack  # SciPy: as numpy

    # imagehash: dct(dct(pixels, axis=0), axis=1) on one image; here axis 0 is the stack. Each 1-D transform
    # is computed on its own, so the second one only on the 8 rows whose lowest frequencies are kept.
    rows = scipy.fftpack.dct(thumbnails, axis=1)[:, :PHASH_HASH_SIDE]
    transformed = np.ascontiguousarray(scipy.fftpack.dct(rows, axis=2))  # (n, 8, 32); the 8x8 are [:, :, :8]
    if _pixelpass is not None:  # the median and the bits in C: the same comparisons of the same doubles
        return _pixelpass.phash_codes(transformed)
    low = transformed[:, :, :PHASH_HASH_SIDE].reshape(len(thumbnails), PHASH_HASH_SIDE**2)
    # imagehash's np.median of 64 values is the mean of the two middle ones, (a + b) / 2: the same value from one
    # partition here, without np.median's Python layers (~2.5 us per image in the worker's loop, 2026-12-04)
    middle = np.partition(low, (PHASH_HASH_SIDE**2 // 2 - 1, PHASH_HASH_SIDE**2 // 2), axis=1)
    median = (middle[:, PHASH_HASH_SIDE**2 // 2 - 1] + middle[:, PHASH_HASH_SIDE**2 // 2]) / 2
    bits = low > median[:, None]
    return np.packbits(bits, axis=1).view(">u8").ravel().tolist()  # the first bit most significant


_imagehash_agrees: bool | None = None  # per process: the stack's first result against imagehash.phash


def _agrees_with_imagehash(thumbnail_values: "np.ndarray") -> bool:
    global _imagehash_agrees
    if _imagehash_agrees is None:
        _imagehash_agrees = _phash_stack(thumbnail_values[None]) == [_imagehash_code(_grey_image(thumbnail_values))]
        if not _imagehash_agrees:
            print("vaedist: this numpy/SciPy's pHash of a chunk differs from imagehash.phash: hashing one image at "
                  "a time with imagehash (slower)", file=sys.stderr)
    return _imagehash_agrees


def _grey_image(values: "np.ndarray") -> Image.Image:
    import numpy as np  # numpy: only where hashes are made (_imagehash_code says why)

    return Image.fromarray(values.astype(np.uint8))  # 2-D uint8: mode "L"


def _imagehash_code(small: Image.Image) -> int:
    # imagehash imports SciPy and numpy (~0.2-0.45 s, OpenBLAS's threads): only the worker processes that hash
    # pay for it, not the sharder's writing process (which imports this module through images.py) nor --dedup off
    import imagehash
    import numpy as np  # numpy: only where hashes are made (_imagehash_code says why)

    code = imagehash.phash(small)
    # imagehash's bits in its own order, row by row, the first most significant (its hex string's order):
    # int(str(code), 16) is the same integer at ~10x the cost (11 against 1 us here)
    return int.from_bytes(np.packbits(code.hash).tobytes(), "big")


# --- the pixels in place -------------------------------------------------------------------------------------
# Pillow stores an RGB image as 4 bytes per pixel; tobytes() repacks them to 3 (~150 us for 640x480 here,
# 8x the hash itself). Pillow (>= 11.2) also exports its memory through the Arrow C data interface, a
# stable C ABI: an RGB image is a fixed-size list of 4 bytes per pixel, whose one child holds the pixels as
# RGBX bytes. Read through ctypes, without a copy, with as few Python steps as will do: right after a decode
# has flushed the caches, each step costs several times what it costs in a loop (ctypes Structures and their
# fields took ~58 us per image there, against ~10 in a loop; 2026-12-02).

# struct ArrowSchema / ArrowArray as their 8-byte fields (pointers and int64 alike on 64-bit platforms):
# schema: format, name, metadata, flags, n_children, children, dictionary, release, private_data
# array: length, null_count, offset, n_buffers, n_children, buffers, children, dictionary, release, private_data
_Fields = ctypes.c_uint64 * 10
_Pointers = ctypes.c_uint64 * 2
_SCHEMA_FORMAT, _SCHEMA_N_CHILDREN, _SCHEMA_CHILDREN = 0, 4, 5
_LENGTH, _OFFSET, _N_BUFFERS, _N_CHILDREN, _BUFFERS, _CHILDREN = 0, 2, 3, 4, 5, 6

_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_memory_view = ctypes.pythonapi.PyMemoryView_FromMemory
_memory_view.restype = ctypes.py_object
_memory_view.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int]
_PyBUF_READ = 0x100

_rgb_layout_checked: bool | None = None  # per process: Pillow's schema for RGB is the layout read here


def _rgb_layout_is_known(img: Image.Image) -> bool:
    """Whether this Pillow exports an RGB image as the layout read here (checked on the first image only)."""
    global _rgb_layout_checked
    if _rgb_layout_checked is None:
        try:
            schema_capsule = img.__arrow_c_schema__()  # held while it is read: its release frees the schema
        except (AttributeError, ValueError, OSError):  # Pillow < 11.2
            _rgb_layout_checked = False
        else:
            _rgb_layout_checked = _is_rgbx_schema(_capsule_pointer(schema_capsule, b"arrow_schema"))
    return _rgb_layout_checked


def _rgb_export(img: Image.Image) -> object | None:
    """Pillow's Arrow export of an RGB image (an "arrow_array" capsule, read by _pixel_memory or _pixelpass);
    None for other modes (RGBA exports the same layout, with other fourth bytes), a Pillow whose layout is not
    the one read here, or an image it cannot export (older Pillow, several blocks)."""
    if img.mode != "RGB" or not _rgb_layout_is_known(img):
        return None
    try:
        # the core image's own export, without Image.__arrow_c_array__'s schema capsule per image (its
        # allocation and release took ~6 us right after a decode, 2026-12-02); the layout is checked once
        return img.im.__arrow_c_array__()
    except (AttributeError, ValueError, OSError):
        return None


def _pixel_memory(img: Image.Image) -> tuple[object, memoryview] | None:
    """(owner, RGBX bytes of `img`, row by row) without a copy; None where Pillow cannot export them (older
    Pillow, an image stored in several blocks): the caller then copies. Keep `owner` alive while reading."""
    array_capsule = _rgb_export(img)
    if array_capsule is None:
        return None
    array = _Fields.from_address(_capsule_pointer(array_capsule, b"arrow_array"))
    pixels_count = img.width * img.height
    if array[_N_CHILDREN] != 1 or array[_LENGTH] != pixels_count or array[_OFFSET] != 0:
        return None
    child = _Fields.from_address(_Pointers.from_address(array[_CHILDREN])[0])
    if child[_N_BUFFERS] != 2 or child[_OFFSET] != 0 or child[_LENGTH] != 4 * pixels_count:
        return None
    data = _Pointers.from_address(child[_BUFFERS])[1]  # buffers: validity (none), then the bytes
    return array_capsule, _memory_view(data, 4 * pixels_count, _PyBUF_READ)


def _is_rgbx_schema(address: int) -> bool:
    """A fixed-size list of 4 (Arrow format "+w:4") whose one child is uint8 ("C")."""
    schema = _Fields.from_address(address)
    if ctypes.string_at(schema[_SCHEMA_FORMAT]) != b"+w:4" or schema[_SCHEMA_N_CHILDREN] != 1:
        return False
    child = _Fields.from_address(_Pointers.from_address(schema[_SCHEMA_CHILDREN])[0])
    return ctypes.string_at(child[_SCHEMA_FORMAT]) == b"C"
