"""The perceptual hash's cheap thumbnail (a sampled grid, not every pixel) against imagehash's own pHash of the
whole image, and its bits against imagehash's hex string, on the embedded sample's real photographs and on
COCO-sized crops of them; the sharder's chunk-wise hashing against the hashes of each source file."""
from __future__ import annotations

import io
import json
import shutil

import imagehash
import numpy as np
import pytest
from PIL import Image

from vaedist.sample import build_full_size_jpegs, photo_paths
from vaedist.bench.shard import build_distinct_photographs
from vaedist.shard.duplicates import DEFAULT_THRESHOLD, near_pairs
from vaedist.shard import shard_dataset
from vaedist.shard import fingerprint, jpegrows
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


def test_rows_pillows_decode_and_an_install_without_the_c_pass_write_the_same_shards(tmp_path, monkeypatch, capsys):
    # The compiled part is optional at install (no compiler): Pillow's decode and the numpy path must then write
    # byte-identical shards, tables, hashes and duplicate report (the workers are forked: they inherit the
    # modules' state)
    photos = tmp_path / "photos" / "all"
    photos.mkdir(parents=True)
    for path in photo_paths():
        shutil.copyfile(path, photos / path.name)
    assert jpegrows.row_decoder()  # the clean JPEGs are checked in rows, hashed as they are decoded
    shard_dataset("folder", tmp_path / "photos", tmp_path / "with_c", workers=2, progress=True)
    assert "compiled hashing pass is not built" not in capsys.readouterr().out
    monkeypatch.setattr(jpegrows, "_usable", False)  # Pillow's decode, its image hashed by the C pass
    shard_dataset("folder", tmp_path / "photos", tmp_path / "pillow", workers=2, progress=True)
    assert "compiled hashing pass is not built" not in capsys.readouterr().out
    monkeypatch.setattr(fingerprint, "_pixelpass", None)  # no compiled part: no C pass, no row decode either
    monkeypatch.setattr(jpegrows, "_pixelpass", None)
    monkeypatch.setattr(jpegrows, "_usable", None)
    shard_dataset("folder", tmp_path / "photos", tmp_path / "numpy", workers=2, progress=True)
    assert "compiled hashing pass is not built" in capsys.readouterr().out
    written = sorted(p.name for p in (tmp_path / "with_c").iterdir())
    assert any("hashes" in n for n in written)
    for run in ("pillow", "numpy"):
        assert written == sorted(p.name for p in (tmp_path / run).iterdir()), run
        for name in written:
            with_c, other = ((tmp_path / r / name).read_bytes() for r in ("with_c", run))
            if name == "manifest.json":  # its "created" time aside; it lists every other file's sha256
                with_c, other = ({**json.loads(m), "created": None} for m in (with_c, other))
            assert with_c == other, (run, name)


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


@pytest.fixture(params=["c", "numpy"])
def in_place_path(request, monkeypatch) -> str:
    """Both ways of hashing a decoder's image in place: the C pass (_pixelpass) and the numpy path."""
    if request.param == "numpy":
        monkeypatch.setattr(fingerprint, "_pixelpass", None)
    return request.param


def _definition_box_sums(img: Image.Image) -> np.ndarray:
    """Pillow's NEAREST resize to 128x128, green channel, 4x4 box sums (Image.reduce(4) before its rounding)."""
    grid = np.asarray(fingerprint._sampled_channel(img), np.uint16)
    return grid.reshape(32, 4, 32, 4).sum(axis=(1, 3), dtype=np.uint16).ravel()


def _assert_in_place_hashes_are_the_definitions(img: Image.Image, path: str) -> None:
    calls = []
    if path == "c":
        real = fingerprint._pixelpass
        assert real is not None, "the C pass was not built: pip install -e . needs a C compiler"

        class Counted:  # the real module, its calls counted: the C pass must be the one that ran
            @staticmethod
            def hash_and_sample(*args):
                calls.append(args[1:])
                return real.hash_and_sample(*args)

        fingerprint._pixelpass = Counted
        try:
            pending = fingerprint.pending_hashes(img, straight_from_decoder=True)
        finally:
            fingerprint._pixelpass = real
        assert calls == [img.size]
    else:
        pending = fingerprint.pending_hashes(img, straight_from_decoder=True)
    assert isinstance(pending.box_sums, bytes) and len(pending.box_sums) == 2 * 1024  # uint16, native order
    assert np.array_equal(np.frombuffer(pending.box_sums, np.uint16), _definition_box_sums(img))
    assert np.array_equal(fingerprint._box_averages([pending.box_sums])[0], np.asarray(thumbnail(img)))
    assert pending.exact == fingerprint.exact_hash(img.convert("RGBA").convert("RGB"))  # the copying path
    assert fingerprint.finish_hashes([pending])[0].perceptual == perceptual_hash(img)


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (127, 128), (128, 128), (129, 500), (640, 480), (641, 427),
                                  (500, 375), (4000, 3), (3, 4000), (333, 777), (1920, 1080)])
def test_grid_taken_from_the_decoders_memory_is_pillows_nearest_resize_and_reduce(size, in_place_path):
    # The sharder's fast paths (the C pass, or xxhash and numpy's take at _grid_offsets, on the decoder's RGBX
    # memory) against the definitions: xxhash over the copied pixels; Pillow's NEAREST resize to 128x128,
    # green channel, Image.reduce(4); imagehash.phash
    img = _decoded_jpeg(*size, seed=size[0] * 7919 + size[1])
    _assert_in_place_hashes_are_the_definitions(img, in_place_path)


@pytest.mark.parametrize("size, scale", [((640, 480), 2), ((640, 480), 4), ((640, 427), 8), ((511, 383), 4),
                                         ((333, 777), 2)])
def test_grid_and_exact_hash_of_a_jpeg_decoded_at_a_reduced_scale_are_those_of_the_copying_path(
        size, scale, in_place_path):
    # --max-side decodes a JPEG at 1/2, 1/4 or 1/8 scale (Pillow's draft, libjpeg's DCT scaling) and hashes
    # that image in place: its hidden fourth byte must be 255 and its memory one block, as at full scale
    img = _decoded_jpeg(*size, seed=scale * 31 + size[0], draft=(size[0] // scale, size[1] // scale))
    assert img.size == (-(-size[0] // scale), -(-size[1] // scale))  # libjpeg's scaled size, rounded up
    assert fingerprint._pixel_memory(img) is not None
    _assert_in_place_hashes_are_the_definitions(img, in_place_path)


def test_c_pass_is_xxhash_and_the_grid_on_every_byte_of_any_rgbx_memory():
    # Not only decoded JPEGs: random RGB images (Pillow sets the fourth byte to 255 in their memory too) of
    # sizes around the grid's and xxh3's own boundaries (128 rows or columns; 16/128/240-byte inputs, 1 KB
    # stripes), against xxhash.xxh3_128 of the pixels and the grid picked by numpy from the same memory
    import xxhash

    assert fingerprint._pixelpass is not None, "the C pass was not built: pip install -e . needs a C compiler"
    rng = np.random.default_rng(5)
    for width, height in [(1, 1), (1, 2), (2, 1), (3, 5), (4, 15), (30, 2), (60, 1), (64, 4), (127, 129),
                          (128, 127), (255, 256), (256, 255), (1000, 1), (1, 1000), (1023, 7)]:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        img = Image.fromarray(pixels, "RGB")
        rgbx = np.concatenate([pixels, np.full((height, width, 1), 255, np.uint8)], axis=2)
        assert bytes(fingerprint._pixel_memory(img)[1]) == rgbx.tobytes()
        exact, sums = fingerprint._pixelpass.hash_and_sample(img.im.__arrow_c_array__(), width, height)
        expected = xxhash.xxh3_128(b"RGBA8 %d %d\n" % (width, height) + rgbx.tobytes()).digest()
        assert exact == expected, (width, height)
        assert np.array_equal(np.frombuffer(sums, np.uint16), _definition_box_sums(img)), (width, height)


def test_c_pass_refuses_memory_that_is_not_the_size_asked_for():
    img = Image.new("RGB", (8, 6), (1, 2, 3))
    capsule = img.im.__arrow_c_array__()
    assert fingerprint._pixelpass.hash_and_sample(capsule, 8, 6) is not None
    # (the export holds a pixel count, not a shape: 6x8 would pass, which is why the caller passes img.size)
    for width, height in [(8, 5), (9, 6), (0, 6), (8, -1),]:
        assert fingerprint._pixelpass.hash_and_sample(capsule, width, height) is None
    with pytest.raises(ValueError):  # not an Arrow array capsule
        fingerprint._pixelpass.hash_and_sample(img.im.__arrow_c_schema__(), 8, 6)


def test_a_c_pass_that_differs_from_the_numpy_path_is_not_used(monkeypatch, capsys):
    # A stale or miscompiled build: the process's first image shows it, and every image is then hashed by the
    # numpy path, so what is stored is what a numpy-only install stores
    class Stale:
        @staticmethod
        def hash_and_sample(capsule, width, height):
            return bytes(16), bytes(2048)

    monkeypatch.setattr(fingerprint, "_pixelpass", Stale)
    monkeypatch.setattr(fingerprint, "_pixelpass_checked", None)
    img = _decoded_jpeg(64, 48, seed=3)
    pending = fingerprint.pending_hashes(img, straight_from_decoder=True)
    assert fingerprint._pixelpass is None and fingerprint._pixelpass_checked is False
    assert "differs from the numpy path" in capsys.readouterr().err
    assert pending.exact == fingerprint.exact_hash(img.convert("RGBA").convert("RGB"))
    assert np.array_equal(np.frombuffer(pending.box_sums, np.uint16), _definition_box_sums(img))


def test_chunk_wise_phash_is_imagehash_phash_bit_for_bit_ties_included(photographs, in_place_path):
    # imagehash.phash one image at a time is the reference; flat and few-valued thumbnails put many DCT values
    # on the median, where a different order of arithmetic would flip bits; the median and the bits in C
    # (_pixelpass.phash_codes) and by numpy alike
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


def test_the_c_chunk_steps_refuse_what_is_not_their_layout():
    pixelpass = fingerprint._pixelpass
    assert pixelpass is not None, "the C pass was not built: pip install -e . needs a C compiler"
    with pytest.raises(ValueError, match="item 1 is not 2048 bytes"):
        pixelpass.box_averages([bytes(2048), bytes(2047)])
    with pytest.raises(ValueError, match=r"not \(n, 8, 32\) float64"):
        pixelpass.phash_codes(np.zeros((2, 8, 31)))
    assert pixelpass.box_averages([]) == b"" and pixelpass.phash_codes(np.zeros((0, 8, 32))) == []


def test_box_sums_of_the_brightest_grid_do_not_overflow(in_place_path):
    img = Image.new("RGB", (640, 480), (255, 255, 255))
    sums = fingerprint.pending_hashes(img, straight_from_decoder=True).box_sums
    assert np.all(np.frombuffer(sums, np.uint16) == 16 * 255)
    assert np.all(fingerprint._box_averages([sums, bytes(len(sums))])[0] == 255)
