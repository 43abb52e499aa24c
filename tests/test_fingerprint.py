"""The perceptual hash's cheap thumbnail (a sampled grid, not every pixel) against imagehash's own pHash of the
whole image, and its bits against imagehash's hex string, on the embedded sample's real photographs and on
COCO-sized crops of them; the sharder's chunk-wise hashing against the hashes of each source file."""
from __future__ import annotations

import io
import shutil

import imagehash
import numpy as np
import pytest
from PIL import Image

from vaedist.sample import build_full_size_jpegs, photo_paths
from vaedist.bench.shard import build_distinct_photographs
from vaedist.shard.duplicates import DEFAULT_THRESHOLD, near_pairs
from vaedist.shard import shard_dataset
from vaedist.shard import fingerprint
from vaedist.shard.fingerprint import image_hashes, perceptual_hash, thumbnail


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


def test_sharder_gives_each_sample_its_own_hashes_when_a_chunk_holds_rejected_files(tmp_path, read_shards):
    # The workers hash a chunk's thumbnails after decoding all of it: a rejected file among them must not
    # shift the hashes onto the wrong samples
    train = tmp_path / "coco" / "train2017"
    train.mkdir(parents=True)
    (tmp_path / "coco" / "val2017").mkdir()
    for n, path in enumerate(photo_paths()):
        shutil.copyfile(path, train / path.name)
        if n % 5 == 1:
            (train / f"broken_{n}.jpg").write_bytes(path.read_bytes()[: 2000])  # truncated: rejected
    manifest = shard_dataset("coco", tmp_path / "coco", tmp_path / "out", workers=2, coco_train_dirs=("train2017",),
                             progress=False)
    assert len(manifest.skipped) == 3
    samples = read_shards(tmp_path / "out", manifest).values()
    assert len(samples) == len(photo_paths())
    for sample in samples:
        meta = sample["meta"]
        with Image.open(tmp_path / "coco" / meta["path"]) as img:
            img.load()
            expected = image_hashes(img, straight_from_decoder=True)
        assert (meta["exact"], meta["phash"]) == (expected.exact_hex, expected.perceptual_hex), meta["path"]


def test_bench_photographs_are_no_near_copies_of_each_other(tmp_path):
    # python -m vaedist.bench shard times the sharder with and without hashing on these: a set full of near
    # copies (build_full_size_jpegs crops 6 photographs: 24 of its images hold several pairs within the
    # threshold) charges a duplicate report no real dataset has to the hashing
    codes = []
    for path in sorted(build_distinct_photographs(tmp_path, 24).glob("*.jpg")):
        with Image.open(path) as img:
            img.load()
            assert img.size == (640, 480) and img.mode == "RGB"
            codes.append(perceptual_hash(img))
    i, _, _ = near_pairs(np.array(codes, np.uint64), DEFAULT_THRESHOLD)
    assert len(i) == 0


def _decoded_jpeg(width: int, height: int, seed: int, draft: tuple[int, int] | None = None) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    img = Image.open(io.BytesIO(out.getvalue()))
    if draft:
        img.draft("RGB", draft)
    img.load()
    return img


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (127, 128), (128, 128), (129, 500), (640, 480), (641, 427),
                                  (500, 375), (4000, 3), (3, 4000), (333, 777), (1920, 1080)])
def test_grid_taken_from_the_decoders_memory_is_pillows_nearest_resize_and_reduce(size):
    # The sharder's fast path (numpy take at _grid_offsets on the decoder's RGBX memory, then the chunk's box
    # sums) against the definition: Pillow's NEAREST resize to 128x128, green channel, Image.reduce(4)
    img = _decoded_jpeg(*size, seed=size[0] * 7919 + size[1])
    pending = fingerprint.pending_hashes(img, straight_from_decoder=True)
    assert np.array_equal(pending.grid, fingerprint._box_rows(fingerprint._sampled_channel(img)))
    assert np.array_equal(fingerprint._box_averages([pending.grid])[0], np.asarray(thumbnail(img)))
    assert pending.exact == fingerprint.exact_hash(img.convert("RGBA").convert("RGB"))  # the copying path
    assert fingerprint.finish_hashes([pending])[0].perceptual == perceptual_hash(img)


@pytest.mark.parametrize("size, scale", [((640, 480), 2), ((640, 480), 4), ((640, 427), 8), ((511, 383), 4),
                                         ((333, 777), 2)])
def test_grid_and_exact_hash_of_a_jpeg_decoded_at_a_reduced_scale_are_those_of_the_copying_path(size, scale):
    # --max-side decodes a JPEG at 1/2, 1/4 or 1/8 scale (Pillow's draft, libjpeg's DCT scaling) and hashes
    # that image in place: its hidden fourth byte must be 255 and its memory one block, as at full scale
    img = _decoded_jpeg(*size, seed=scale * 31 + size[0], draft=(size[0] // scale, size[1] // scale))
    assert img.size == (-(-size[0] // scale), -(-size[1] // scale))  # libjpeg's scaled size, rounded up
    assert fingerprint._pixel_memory(img) is not None
    pending = fingerprint.pending_hashes(img, straight_from_decoder=True)
    assert pending.exact == fingerprint.exact_hash(img.convert("RGBA").convert("RGB"))
    assert np.array_equal(pending.grid, fingerprint._box_rows(fingerprint._sampled_channel(img)))
    assert fingerprint.finish_hashes([pending])[0].perceptual == perceptual_hash(img)


def test_chunk_wise_phash_is_imagehash_phash_bit_for_bit_ties_included(photographs):
    # imagehash.phash one image at a time is the reference; flat and few-valued thumbnails put many DCT values
    # on the median, where a different order of arithmetic would flip bits
    rng = np.random.default_rng(1)
    cases = [np.asarray(thumbnail(img)) for img in photographs]
    cases += [rng.integers(0, 256, (32, 32)) for _ in range(300)]
    cases += [np.full((32, 32), v) for v in (0, 1, 127, 128, 254, 255)]
    cases += [rng.integers(0, 2, (32, 32)) * 255 for _ in range(50)]
    cases += [rng.integers(100, 103, (32, 32)) for _ in range(50)]
    cases += [np.kron(rng.integers(0, 256, (4, 4)), np.ones((8, 8), np.int64)) for _ in range(50)]
    expected = [int(str(imagehash.phash(Image.fromarray(c.astype(np.uint8)))), 16) for c in cases]
    stack = np.stack(cases).astype(np.float64)
    got = [code for start in range(0, len(cases), 64) for code in fingerprint._phash_stack(stack[start : start + 64])]
    assert got == expected


def test_box_sums_of_the_brightest_grid_do_not_overflow():
    grid = np.full((16, 1024), 255, np.uint8)
    assert np.all(fingerprint._box_averages([grid, np.zeros_like(grid)])[0] == 255)
