"""Image checking: every input is fully decoded and becomes a clean, upright JPEG (or is rejected).

`prepare_image(path, options)` is the one function the worker processes run. Clean JPEGs (8-bit RGB or
grey, no EXIF rotation, no downscale asked for) are stored byte for byte, so the shards hold exactly what
the dataset authors published (checked by a decode row by row that makes no image: jpegrows.py);
everything a decoder could render differently — CMYK, palette, alpha, 16-bit, PNG/WebP/other formats,
EXIF orientation — is converted to 8-bit RGB and re-encoded as a JPEG at `jpeg_quality`. With `hashes`
(--dedup report or drop), the pixels decoded for the check are also hashed (fingerprint.py), upright and
mode-normalised, before any downscale: the exact hash and the perceptual hash's thumbnail here, the
perceptual hash itself per chunk (fingerprint.finish_hashes).
"""
from __future__ import annotations

import functools
import io
import os
import stat
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from vaedist.jpeg import marker_chain_problem
from vaedist.shard.fingerprint import PendingHashes, pending_hashes
from vaedist.shard.jpegrows import decode_in_rows

DEFAULT_MAX_PIXELS = 64_000_000  # 8000x8000: above any photo in COCO/Food-101 (<= 640 px); ~190 MB as RGB
DEFAULT_JPEG_QUALITY = 95  # re-encoded images only; copied JPEGs keep their own quality
EXIF_ORIENTATION = 0x0112


@functools.lru_cache(maxsize=None)
def image_extensions() -> frozenset[str]:
    """File extensions (lower case, with dot) of the formats Pillow can open: other files are ignored."""
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


@dataclass(frozen=True)
class ImageOptions:
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_side: int | None = None  # longer side of the stored image at most this many pixels
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    hashes: bool = False  # compute the exact and perceptual hashes of the decoded pixels


@dataclass(frozen=True)
class PreparedImage:
    jpeg: bytes
    width: int  # upright size (EXIF orientation applied), before any --max-side downscale
    height: int
    copied: bool  # True: the source bytes unchanged; False: re-encoded
    hashes: PendingHashes | None = None  # with ImageOptions.hashes; fingerprint.finish_hashes completes them


class ImageRejected(Exception):
    """The input is not a usable image; `str(err)` is the reason recorded in the manifest's `skipped`."""


def configure_pillow() -> None:
    """Per process: let our pixel limit, not Pillow's default, decide; silence warnings we turn into reasons."""
    # prepare_image checks the header size against `max_pixels` itself, right after open() and before any
    # pixel is allocated, so it can name the size in the reason; Pillow's own (different) limit would fire
    # first at open() above 2x its default, with a less useful message.
    Image.MAX_IMAGE_PIXELS = None
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    warnings.filterwarnings("ignore", message=".*EXIF.*")  # corrupt EXIF only loses the orientation


def prepare_image(path: str | Path, options: ImageOptions) -> PreparedImage:
    """Decode `path` fully and return the JPEG to store, or raise `ImageRejected` with the reason."""
    data = _read_regular_file(path)
    if not data:
        raise ImageRejected("empty file")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageRejected("not an image (no format Pillow recognises)") from None
    except Image.DecompressionBombError as err:
        raise ImageRejected(f"over the pixel limit ({err})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageRejected(f"corrupt header ({_short(err)})") from None
    with img:
        width, height = img.size  # from the header: no pixels allocated yet
        if width * height > options.max_pixels:
            raise ImageRejected(f"over the pixel limit ({width}x{height} > {options.max_pixels} pixels)")
        if width == 0 or height == 0:
            raise ImageRejected(f"corrupt header (size {width}x{height})")
        orientation = _orientation(img)
        scale_to = _downscaled_size(width, height, orientation, options.max_side)
        stored_unchanged = not scale_to and _is_clean_jpeg(img, orientation, data)  # from the header alone
        if stored_unchanged:
            # only checked, so no image is needed: decoded row by row, each row hashed as it comes (jpegrows.py)
            decoded = decode_in_rows(data, img.size, options.hashes)
            if decoded is not None:
                return PreparedImage(jpeg=data, width=width, height=height, copied=True, hashes=decoded.hashes)
        if scale_to and img.format == "JPEG":
            # DCT-domain downscale: decodes every scan (truncation still detected) at a fraction of the cost
            img.draft(img.mode if img.mode in ("RGB", "L") else None, scale_to)
        _decode(img)  # Pillow: every other image, and any JPEG the row decode stopped at (its verdict stands)
        upright_w, upright_h = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
        if stored_unchanged:
            # the decoder's own RGB image: its memory can be hashed in place (fingerprint.py)
            hashes = pending_hashes(img, straight_from_decoder=True) if options.hashes else None
            return PreparedImage(jpeg=data, width=width, height=height, copied=True, hashes=hashes)
        clean = _to_rgb(ImageOps.exif_transpose(img) if orientation != 1 else img)
        # an upright RGB JPEG decoded at a reduced scale (--max-side) is still the decoder's own image: hashed
        # in place, ~90 us less per image than through a copy (2026-12-03); rotated or converted ones are copies
        from_decoder = clean is img and img.format == "JPEG"
        hashes = pending_hashes(clean, straight_from_decoder=from_decoder) if options.hashes else None
        if scale_to:
            clean = clean.resize(scale_to, Image.Resampling.LANCZOS)
        out = io.BytesIO()
        clean.save(out, format="JPEG", quality=options.jpeg_quality)
        return PreparedImage(jpeg=out.getvalue(), width=upright_w, height=upright_h, copied=False, hashes=hashes)


def _read_regular_file(path: str | Path) -> bytes:
    """The file's bytes; never blocks on a FIFO (or a device) put in place of an image after listing."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImageRejected("not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read()
    finally:
        os.close(fd)


def _decode(img: Image.Image) -> None:
    """Decode every pixel: `Image.verify()` is not enough, it passes truncated JPEGs."""
    try:
        img.load()
    except Image.DecompressionBombError as err:
        raise ImageRejected(f"over the pixel limit ({err})") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as err:
        message = _short(err)
        if "truncated" in message or isinstance(err, EOFError):
            raise ImageRejected(f"truncated ({message})") from None
        raise ImageRejected(f"corrupt ({message})") from None


def _orientation(img: Image.Image) -> int:
    try:
        value = int(img.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # a corrupt EXIF block: treat as upright, like most viewers do
        return 1
    return value if 1 <= value <= 8 else 1


def _downscaled_size(width: int, height: int, orientation: int, max_side: int | None) -> tuple[int, int] | None:
    """Upright (w, h) of the stored image when --max-side asks for a downscale, else None."""
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    if not max_side or max(width, height) <= max_side:
        return None
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _is_clean_jpeg(img: Image.Image, orientation: int, data: bytes) -> bool:
    # MPO (camera multi-picture JPEGs) and CMYK/YCCK JPEGs render differently across decoders: convert them.
    # Stray bytes between header segments: Pillow reads past them, DALI refuses the file (vaedist.jpeg).
    return (img.format == "JPEG" and img.mode in ("RGB", "L") and orientation == 1
            and marker_chain_problem(data) is None)


def _to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB, whatever the mode (grey, grey+alpha and 16-bit grey included: one layout for every re-encoded
    image; a grey picture stays grey, its chroma planes are flat and cost almost nothing in the JPEG)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # Pillow's convert("L") clips 16-bit values at 255; scale the full range down instead.
        # numpy is imported here, for these rare images only: importing it starts OpenBLAS's thread pool, and
        # in the sharder's writing process its idle threads took ~30 ms of CPU per run from the decoders.
        import numpy as np

        pixels = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or pixels.max(initial=0) > 255 else 255.0
        grey = np.clip(pixels * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode == "RGBA":
        # Transparent pixels hold arbitrary colours (often black): composite on white, as viewers show them.
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, RGBX, ...


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:120]
