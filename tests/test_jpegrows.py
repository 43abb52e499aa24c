"""The row-by-row JPEG decode (vaedist/shard/jpegrows.py, _pixelpass.c) against Pillow's own decode: the same
pixels (their xxh3-128 through the `xxhash` package, and the grid against Pillow's resize) on real photographs in
every JPEG layout Pillow writes, and the same verdict, message and hashes on damaged files."""
from __future__ import annotations

import io
import random

import numpy as np
import pytest
import xxhash
from PIL import Image

from vaedist.sample import photo_paths
from vaedist.shard import fingerprint, jpegrows
from vaedist.shard.images import ImageOptions, ImageRejected, prepare_image


@pytest.fixture(autouse=True)
def fresh_row_decoder(monkeypatch):
    """Each test starts as a new process does: the library looked up again, the first decode checked again."""
    monkeypatch.setattr(jpegrows, "_usable", None)
    monkeypatch.setattr(jpegrows, "_checked", False)
    assert jpegrows.row_decoder(), "the row decode is not built: pip install -e . needs a C compiler (Linux/macOS)"


def _photo(n: int) -> Image.Image:
    with Image.open(photo_paths()[n]) as img:
        return img.convert("RGB")


def _jpeg(img: Image.Image, **save) -> bytes:
    out = io.BytesIO()
    img.save(out, format="JPEG", **save)
    return out.getvalue()


def _pillows_hashes(data: bytes) -> tuple[bytes, np.ndarray]:
    """The definition on Pillow's own decode: xxh3-128 of the RGBA bytes by the `xxhash` package, and the green
    values at Pillow's NEAREST 128x128 grid summed 4x4 (fingerprint's tests hold the grid to Pillow's resize)."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        rgba = img.convert("RGBA")
        exact = xxhash.xxh3_128(b"RGBA8 %d %d\n" % img.size + rgba.tobytes()).digest()
        grid = np.asarray(fingerprint._sampled_channel(img.convert("RGB")), np.uint16)
    return exact, grid.reshape(32, 4, 32, 4).sum(axis=(1, 3), dtype=np.uint16).ravel()


LAYOUTS = {  # every JPEG layout Pillow writes: chroma subsampling, progressive, Huffman tables, restart markers
    "4:2:0": dict(quality=90, subsampling=2),
    "4:2:2": dict(quality=90, subsampling=1),
    "4:4:4": dict(quality=95, subsampling=0),
    "progressive": dict(quality=85, progressive=True),
    "optimized": dict(quality=75, optimize=True),
    "restart markers": dict(quality=90, restart_marker_rows=1),
    "RGB, no YCbCr": dict(quality=90, keep_rgb=True, subsampling=0),
    "quality 10": dict(quality=10),
}
SIZES = [(1, 1), (7, 5), (127, 129), (128, 128), (300, 17), (640, 480), (641, 427), (33, 1000)]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_rows_hash_what_pillows_decode_hashes_in_every_layout(layout):
    for n, size in enumerate(SIZES):
        data = _jpeg(_photo(n % len(photo_paths())).resize(size), **LAYOUTS[layout])
        decoded = jpegrows.decode_in_rows(data, size, hashes=True)
        assert decoded is not None, (layout, size)
        exact, box_sums = _pillows_hashes(data)
        assert decoded.hashes.exact == exact, (layout, size)
        assert np.array_equal(np.frombuffer(decoded.hashes.box_sums, np.uint16), box_sums), (layout, size)


# where each batch of rows is written depends on the header's length and the row's bytes (_pixelpass.c's
# rows_offset): 14 and 13 bytes of header, rows of a whole number of cache lines or not, and 16 bytes with every
# batch at a 16-byte boundary of the stream, which must fall back to the unaligned place
ROW_PLACES = [(640, 480), (300, 17), (427, 640), (1000, 1000), (1024, 1000), (64, 4000)]


def test_every_xxh3_variant_hashes_the_rows_alike():
    _, rows_variant = jpegrows._pixelpass.xxh3_variants()
    runs = [v for v in ("sse2", "avx2", "avx512", "compiled") if jpegrows._pixelpass.use_xxh3_for_rows(v)]
    try:
        assert runs and rows_variant in runs
        for variant in runs:
            assert jpegrows._pixelpass.use_xxh3_for_rows(variant)
            for n, size in enumerate(ROW_PLACES):
                data = _jpeg(_photo(n % len(photo_paths())).resize(size), quality=85)
                decoded = jpegrows.decode_in_rows(data, size, hashes=True)
                exact, box_sums = _pillows_hashes(data)
                assert decoded.hashes.exact == exact, (variant, size)
                assert np.array_equal(np.frombuffer(decoded.hashes.box_sums, np.uint16), box_sums), (variant, size)
    finally:
        assert jpegrows._pixelpass.use_xxh3_for_rows(rows_variant)
    assert not jpegrows._pixelpass.use_xxh3_for_rows("neon on x86")
    assert jpegrows._pixelpass.xxh3_variants()[1] == rows_variant


def test_a_benchmark_can_hash_the_rows_by_another_variant_and_gets_the_rows_variant_back():
    memory, rows = jpegrows.xxh3_variants()
    with jpegrows.rows_hashed_by(memory) as used:
        assert used and jpegrows.xxh3_variants() == (memory, memory)
    with jpegrows.rows_hashed_by("no such variant") as used:
        assert not used and jpegrows.xxh3_variants() == (memory, rows)
    assert jpegrows.xxh3_variants() == (memory, rows)


def test_rows_are_hashed_by_avx2_at_most():
    # between libjpeg-turbo's AVX2 code, xxh3's AVX-512 loop cost the rows 2.4x as much (_pixelpass.c says where)
    in_memory, rows = jpegrows._pixelpass.xxh3_variants()
    assert rows != "avx512"
    assert in_memory == rows or in_memory == "avx512"


def test_a_grey_jpeg_hashes_as_its_rgb_copy():
    grey = next(p for p in photo_paths() if p.stem == "camera")
    data = grey.read_bytes()
    with Image.open(grey) as img:
        assert img.format == "JPEG" and img.mode == "L"
        size = img.size
    decoded = jpegrows.decode_in_rows(data, size, hashes=True)
    exact, box_sums = _pillows_hashes(data)
    assert decoded.hashes.exact == exact and np.array_equal(np.frombuffer(decoded.hashes.box_sums, np.uint16), box_sums)


def test_every_embedded_photograph_decodes_in_rows_to_pillows_pixels():
    for path in photo_paths():
        data = path.read_bytes()
        with Image.open(path) as img:
            size, fmt = img.size, img.format
        if fmt != "JPEG":
            continue
        decoded = jpegrows.decode_in_rows(data, size, hashes=True)
        assert decoded is not None, path.name
        assert decoded.hashes.exact == _pillows_hashes(data)[0], path.name


def test_what_the_rows_cannot_decode_is_left_to_pillow():
    data = _jpeg(_photo(0).resize((64, 48)), quality=90)
    assert jpegrows.decode_in_rows(data, (64, 48), hashes=False) is not None
    assert jpegrows.decode_in_rows(data, (64, 49), hashes=True) is None  # not the size the header gave
    assert jpegrows.decode_in_rows(data[:-200], (64, 48), hashes=True) is None  # truncated: a warning
    assert jpegrows.decode_in_rows(data[:100], (64, 48), hashes=False) is None  # no scan at all: an error
    png = io.BytesIO()
    _photo(0).resize((64, 48)).save(png, format="PNG")
    assert jpegrows.decode_in_rows(png.getvalue(), (64, 48), hashes=True) is None
    cmyk = _jpeg(_photo(0).resize((64, 48)).convert("CMYK"), quality=90)
    assert jpegrows.decode_in_rows(cmyk, (64, 48), hashes=True) is None  # 4 channels: not converted to RGBX


def _outcome(path, options: ImageOptions):
    try:
        prepared = prepare_image(path, options)
    except ImageRejected as err:
        return "rejected", str(err)
    hashes = fingerprint.finish_hashes([prepared.hashes])[0] if prepared.hashes is not None else None
    return prepared.jpeg, prepared.copied, (prepared.width, prepared.height), hashes


def test_damaged_jpegs_get_pillows_verdict_message_and_hashes(tmp_path, monkeypatch):
    # The row decode stops at any warning or error and hands the file to Pillow: truncations at every kind of
    # place and flipped bytes in headers and scans must end exactly as with Pillow's decode alone
    rng = random.Random(7)
    data = _jpeg(_photo(1).resize((160, 120)), quality=90, progressive=False)
    variants = {f"cut at {cut}": data[:cut] for cut in (2, 20, 200, 400, len(data) // 2, len(data) - 2)}
    for n in range(40):
        damaged = bytearray(data)
        at = rng.randrange(2, len(data) - 2)
        damaged[at] ^= 1 << rng.randrange(8)
        variants[f"bit flip {n} at {at}"] = bytes(damaged)
    variants["progressive, cut"] = _jpeg(_photo(2).resize((160, 120)), progressive=True)[:-300]
    accepted_in_rows = 0
    for name, damaged in variants.items():
        path = tmp_path / f"{len(name)}.jpg"
        path.write_bytes(damaged)
        for hashes in (True, False):
            options = ImageOptions(hashes=hashes)
            monkeypatch.setattr(jpegrows, "_usable", None)
            in_rows = _outcome(path, options)
            monkeypatch.setattr(jpegrows, "_usable", False)
            with_pillow = _outcome(path, options)
            assert in_rows == with_pillow, name
            monkeypatch.setattr(jpegrows, "_usable", None)
            accepted_in_rows += jpegrows.decode_in_rows(damaged, (160, 120), hashes) is not None
    assert accepted_in_rows > 0  # some flips land where libjpeg sees nothing wrong: those took the row path


def test_a_row_decode_that_differs_from_pillow_is_not_used(monkeypatch, capsys):
    real = jpegrows._pixelpass
    calls = []

    class Stale:  # a build whose pixels are not Pillow's
        use_libjpeg_of = staticmethod(real.use_libjpeg_of)

        @staticmethod
        def decode_and_hash_jpeg(*args):
            calls.append(args[1:])
            exact, sums = real.decode_and_hash_jpeg(*args)
            return bytes(16), sums

        @staticmethod
        def decode_jpeg(*args):
            calls.append(args[1:])
            return real.decode_jpeg(*args)

    monkeypatch.setattr(jpegrows, "_pixelpass", Stale)
    monkeypatch.setattr(jpegrows, "_usable", None)
    assert jpegrows.row_decoder()  # its probe decodes
    calls.clear()
    data = _jpeg(_photo(0).resize((64, 48)), quality=90)
    assert jpegrows.decode_in_rows(data, (64, 48), hashes=False) is None  # checked even when not hashing
    assert "differs from Pillow's decode" in capsys.readouterr().err
    assert jpegrows.decode_in_rows(data, (64, 48), hashes=True) is None
    assert calls == [(64, 48)] and not jpegrows.row_decoder()


def test_a_module_without_libjpeg_leaves_the_decoder_as_it_was():
    pixelpass = jpegrows._pixelpass
    assert not pixelpass.use_libjpeg_of(pixelpass.__file__)  # loaded, but not linked to libjpeg
    assert not pixelpass.use_libjpeg_of("/no/such/module.so")
    data = _jpeg(_photo(0).resize((64, 48)), quality=90)
    assert pixelpass.decode_jpeg(data, 64, 48)


def test_a_clean_jpeg_is_checked_in_rows_and_stored_unchanged(tmp_path, monkeypatch):
    path = tmp_path / "photo.jpg"
    path.write_bytes(_jpeg(_photo(0).resize((320, 200)), quality=90))
    rows = []
    real = jpegrows.decode_in_rows
    monkeypatch.setattr("vaedist.shard.images.decode_in_rows",
                        lambda *args: rows.append(args[1:]) or real(*args))
    prepared = prepare_image(path, ImageOptions(hashes=True))
    assert rows == [((320, 200), True)] and prepared.copied and prepared.jpeg == path.read_bytes()
    prepare_image(path, ImageOptions(max_side=160, hashes=True))  # re-encoded: Pillow's image is needed
    assert len(rows) == 1


def test_a_libjpeg_that_refuses_every_decode_is_not_used(monkeypatch):
    # e.g. a Pillow linked to a system libjpeg of another ABI: its calls are found, but every decode fails
    class OtherAbi:
        use_libjpeg_of = staticmethod(lambda path: True)
        decode_jpeg = staticmethod(lambda data, width, height: False)

    monkeypatch.setattr(jpegrows, "_pixelpass", OtherAbi)
    monkeypatch.setattr(jpegrows, "_usable", None)
    assert not jpegrows.row_decoder()
    assert jpegrows.decode_in_rows(_jpeg(_photo(0).resize((64, 48))), (64, 48), hashes=True) is None


def test_a_file_pillow_refuses_after_the_rows_accepted_it_ends_with_pillows_verdict(tmp_path, monkeypatch, capsys):
    # the first-image check decodes with Pillow too: should Pillow refuse what the rows accepted, the two are
    # not the same decoder; the file then gets Pillow's verdict, and the rows are not used again
    def refusing(img, straight_from_decoder=False):
        raise OSError("broken data stream when reading image file")

    monkeypatch.setattr(jpegrows, "pending_hashes", refusing)
    data = _jpeg(_photo(0).resize((64, 48)), quality=90)
    assert jpegrows.decode_in_rows(data, (64, 48), hashes=True) is None
    assert "differs from Pillow's decode" in capsys.readouterr().err and not jpegrows.row_decoder()
