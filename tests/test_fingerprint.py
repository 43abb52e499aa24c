"""The perceptual hash's cheap thumbnail (a sampled grid, not every pixel) against imagehash's own pHash of the
whole image, and its bits against imagehash's hex string, on the embedded sample's real photographs and on
COCO-sized crops of them."""
from __future__ import annotations

import imagehash
import numpy as np
import pytest
from PIL import Image

from vaedist.sample import build_full_size_jpegs, photo_paths
from vaedist.shard.duplicates import DEFAULT_THRESHOLD
from vaedist.shard.fingerprint import perceptual_hash, thumbnail


def _load(path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB") if img.mode not in ("RGB", "L") else img.copy()


@pytest.fixture(scope="module")
def photographs(tmp_path_factory) -> list[Image.Image]:
    crops = build_full_size_jpegs(tmp_path_factory.mktemp("crops"), 24)
    return [_load(p) for p in photo_paths()] + [_load(p) for p in sorted(crops.glob("*.jpg"))]


def _green(img: Image.Image) -> Image.Image:
    return img.getchannel("G") if img.mode == "RGB" else img


def test_perceptual_hash_stays_near_imagehash_phash_of_every_pixel(photographs):
    # imagehash.phash on the full-resolution channel: its own LANCZOS resize reads every pixel, the thumbnail
    # reads ~16k pixels. Measured here: mean 1.9 bits, the worst (a brick wall's texture) 10, as for a box
    # average over every pixel; a plain nearest sample straight to 32x32 is off by 9 bits on average and up
    # to 28, the error this test is for.
    distances = np.array([(perceptual_hash(img) ^ int(str(imagehash.phash(_green(img))), 16)).bit_count()
                          for img in photographs])
    assert distances.mean() <= 2.5, distances
    assert distances.max() <= DEFAULT_THRESHOLD + 4, distances


def test_perceptual_hash_is_imagehash_phash_of_the_thumbnail_in_its_hex_order(photographs):
    for img in photographs[:20]:
        small = thumbnail(img)
        assert small.size == (32, 32) and small.mode == "L"
        assert perceptual_hash(img) == int(str(imagehash.phash(small)), 16)


def test_thumbnail_of_a_grey_image_is_the_thumbnail_of_its_rgb_copy():
    grey = next(_load(p) for p in photo_paths() if p.stem == "camera")
    assert grey.mode == "L"
    assert thumbnail(grey).tobytes() == thumbnail(grey.convert("RGB")).tobytes()
