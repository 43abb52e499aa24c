"""Image checking on its own: each kind of input, good or bad, gets the stored JPEG or the reason we expect."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from vaedist.sample import photo_paths
from vaedist.shard.images import ImageOptions, ImageRejected, configure_pillow, prepare_image

configure_pillow()


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A real colour photograph, cropped to a non-square size so that rotations show in the size."""
    with Image.open(photo_paths()[0]) as src:
        return src.convert("RGB").crop((0, 0, 320, 200))


def _decoded(jpeg: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(jpeg))
    assert img.format == "JPEG"
    img.load()
    return img


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("empty", "empty file"),
        ("truncated", "truncated"),
        ("text", "not an image"),
        ("corrupt", "corrupt"),
        ("bomb", "over the pixel limit (3000x3000 > 1000000 pixels)"),
    ],
)
def test_bad_input_is_rejected_with_its_reason(tmp_path, photo, kind, reason):
    path = tmp_path / ("bomb.png" if kind == "bomb" else f"{kind}.jpg")
    good = io.BytesIO()
    photo.save(good, "JPEG", quality=90)
    data = good.getvalue()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path.write_text("this is a note, not a picture\n")
    elif kind == "corrupt":  # header intact, entropy-coded data overwritten with noise
        noisy = bytearray(data)
        start = len(noisy) // 3
        noisy[start : start + 2000] = np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes()
        path.write_bytes(bytes(noisy))
    else:  # a tiny file that would decode to 9 megapixels
        Image.new("RGB", (3000, 3000), (200, 10, 10)).save(path)
        assert path.stat().st_size < 100_000
    for max_side in (None, 64):  # the downscaling decode (JPEG draft mode) must catch the same faults
        with pytest.raises(ImageRejected) as err:
            prepare_image(path, ImageOptions(max_pixels=1_000_000, max_side=max_side))
        assert str(err.value).startswith(reason)


def test_clean_rgb_and_grey_jpegs_are_copied_byte_for_byte(tmp_path, photo):
    for name, img in (("rgb.jpg", photo), ("grey.jpg", photo.convert("L"))):
        photo_path = tmp_path / name
        img.save(photo_path, quality=87)
        prepared = prepare_image(photo_path, ImageOptions())
        assert prepared.copied and prepared.jpeg == photo_path.read_bytes()
        assert (prepared.width, prepared.height) == (320, 200)


def test_exif_rotated_jpeg_is_stored_upright(tmp_path, photo):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    photo.save(path, quality=95, exif=exif)
    prepared = prepare_image(path, ImageOptions())
    stored = _decoded(prepared.jpeg)
    assert not prepared.copied
    assert stored.size == (200, 320) and (prepared.width, prepared.height) == (200, 320)
    assert stored.getexif().get(0x0112, 1) == 1
    with Image.open(path) as src:
        expected = np.asarray(ImageOps.exif_transpose(src).convert("RGB"), dtype=np.float32)
    assert np.abs(np.asarray(stored, dtype=np.float32) - expected).mean() < 3.0  # re-encoding error only


@pytest.mark.parametrize("kind, mode", [("cmyk", "RGB"), ("palette", "RGB"), ("rgba", "RGB"), ("grey16", "RGB"),
                                        ("webp", "RGB"), ("bmp", "RGB")])
def test_other_modes_and_formats_become_rgb_jpegs(tmp_path, photo, kind, mode):
    if kind == "cmyk":
        path = tmp_path / "cmyk.jpg"
        photo.convert("CMYK").save(path, quality=95)
    elif kind == "palette":
        path = tmp_path / "palette.png"
        photo.convert("P", palette=Image.Palette.ADAPTIVE).save(path)
    elif kind == "rgba":
        path = tmp_path / "rgba.png"
        rgba = photo.convert("RGBA")
        rgba.putalpha(255)
        rgba.save(path)
    elif kind == "grey16":
        path = tmp_path / "grey16.png"
        Image.fromarray(np.asarray(photo.convert("L"), dtype=np.uint16) * 257).save(path)
    elif kind == "webp":
        path = tmp_path / "photo.webp"
        photo.save(path, quality=95)
    else:
        path = tmp_path / "photo.bmp"
        photo.save(path)
    prepared = prepare_image(path, ImageOptions())
    stored = _decoded(prepared.jpeg)
    assert not prepared.copied
    assert stored.mode == mode and stored.size == (320, 200)
    # The picture survives the conversion (a 16-bit image is scaled, not clipped to white).
    reference = np.asarray(photo.convert("L" if kind == "grey16" else "RGB").convert("RGB"), dtype=np.float32)
    assert np.abs(np.asarray(stored, dtype=np.float32) - reference).mean() < 8.0


def test_transparent_pixels_are_composited_on_white(tmp_path, photo):
    rgba = photo.convert("RGBA")
    rgba.putalpha(0)
    path = tmp_path / "clear.png"
    rgba.save(path)
    stored = np.asarray(_decoded(prepare_image(path, ImageOptions()).jpeg))
    assert stored.min() >= 250


def test_max_side_downscales_the_longer_side_and_keeps_the_original_size_in_meta(tmp_path, photo):
    path = tmp_path / "photo.jpg"
    photo.save(path, quality=90)
    prepared = prepare_image(path, ImageOptions(max_side=64))
    assert _decoded(prepared.jpeg).size == (64, 40)
    assert (prepared.width, prepared.height) == (320, 200)
    assert prepare_image(path, ImageOptions(max_side=320)).copied  # already small enough: untouched


@pytest.mark.parametrize("max_side", [None, 160, 64])
def test_an_upright_rgb_jpeg_is_hashed_in_the_decoders_memory_at_any_scale(tmp_path, photo, monkeypatch, max_side):
    # the in-place path (no copy of the pixels) for the decoder's own image, downscaled by --max-side or not,
    # with the hashes of the copying path on the same decoded pixels; at full size it is taken where the row
    # decode is not (no compiled part, or a file it stopped at), so the row decode is off here
    from vaedist.shard import fingerprint, images, jpegrows

    monkeypatch.setattr(jpegrows, "_usable", False)
    path = tmp_path / "photo.jpg"
    photo.save(path, quality=90)
    calls = []
    monkeypatch.setattr(images, "pending_hashes", lambda img, straight_from_decoder=False: calls.append(
        (img.size, straight_from_decoder)) or fingerprint.pending_hashes(img, straight_from_decoder))
    prepared = prepare_image(path, ImageOptions(max_side=max_side, hashes=True))
    with Image.open(path) as img:
        if max_side:
            img.draft("RGB", _decoded(prepared.jpeg).size)
        img.load()
        expected = fingerprint.image_hashes(img.convert("RGBA").convert("RGB"))  # a copy: the general path
    assert calls == [(img.size, True)]
    assert fingerprint.finish_hashes([prepared.hashes]) == [expected]
    if not max_side:  # and the row decode, on, gives the same hashes without Pillow's image
        monkeypatch.setattr(jpegrows, "_usable", None)
        assert fingerprint.finish_hashes([prepare_image(path, ImageOptions(hashes=True)).hashes]) == [expected]
        assert len(calls) == 1


def test_a_rotated_jpeg_is_hashed_through_a_copy_upright(tmp_path, photo):
    from vaedist.shard import fingerprint

    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    photo.save(path, quality=90, exif=exif)
    for max_side in (None, 160):
        prepared = prepare_image(path, ImageOptions(max_side=max_side, hashes=True))
        with Image.open(path) as img:
            if max_side:
                img.draft("RGB", (100, 160))  # as prepare_image asks: the upright size at --max-side 160
            upright = ImageOps.exif_transpose(img)
        assert fingerprint.finish_hashes([prepared.hashes]) == [fingerprint.image_hashes(upright)]


def test_a_jpeg_with_stray_bytes_between_header_segments_is_re_encoded_so_dali_can_parse_it(tmp_path, photo):
    """libjpeg (Pillow) reads past stray bytes between segments; DALI's parser refuses such a file (and can
    crash on it in a batch): the sharder must not copy it byte for byte."""
    from vaedist.data.dali import undecodable
    from vaedist.data.reference import pillow_problem

    good = io.BytesIO()
    photo.save(good, "JPEG", quality=90)
    data = good.getvalue()
    dht = data.find(b"\xff\xc4")
    quirky = data[:dht] + b"\x00\x11\x22\x33" + data[dht:]
    assert pillow_problem(quirky) is None and undecodable([np.frombuffer(quirky, np.uint8)])  # as found in the wild
    (tmp_path / "quirky.jpg").write_bytes(quirky)
    prepared = prepare_image(tmp_path / "quirky.jpg", ImageOptions())
    assert not prepared.copied and (prepared.width, prepared.height) == photo.size
    assert undecodable([np.frombuffer(prepared.jpeg, np.uint8)]) == {}
    assert np.abs(np.asarray(_decoded(prepared.jpeg), float) - np.asarray(_decoded(quirky), float)).mean() < 2
