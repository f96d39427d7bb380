"""The thumbnail of a clean image, without a homeserver: the clean pixels, upright, at
tile size, and nothing else (no metadata of any kind)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from bot.matrix.photo import make_photo
from bot.matrix.thumbnail import MAX_SIZE, make_thumbnail
from handlers.sanitizer import sanitize


def _pixels(data: bytes, size: tuple[int, int]) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        return np.asarray(im.resize(size, Image.Resampling.BOX), np.float32)


def _no_metadata(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "JPEG"
        assert not im.getexif() and "icc_profile" not in im.info and "comment" not in im.info
        assert set(im.info) <= {"jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi",
                                "progressive", "progression"}, im.info
    # no APPn segment but JFIF's APP0, no COM
    i = 2
    while data[i] == 0xFF and data[i + 1] not in (0xDA,):
        marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        assert marker not in range(0xE1, 0xF0) and marker != 0xFE, hex(marker)
        i += 2 + length


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_thumbnail_of_a_clean_phone_photo_is_upright_and_bare(orientation):
    photo = make_photo(2000, 1500, seed=5)
    with Image.open(io.BytesIO(photo)) as im:
        exif = im.getexif()
        exif[0x0112] = orientation
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=92, exif=exif.tobytes())
    clean = sanitize(buf.getvalue(), detect_faces=False).data
    thumb = make_thumbnail(clean)
    sideways = orientation in (6, 8)
    assert (thumb.width, thumb.height) == ((450, 600) if sideways else (800, 600))
    _no_metadata(thumb.data)
    size = (thumb.width // 4, thumb.height // 4)
    assert np.abs(_pixels(thumb.data, size) - _pixels(clean, size)).mean() < 4


def test_small_images_are_their_own_thumbnail():
    assert make_thumbnail(make_photo(*MAX_SIZE)) is None
    assert make_thumbnail(make_photo(640, 480)) is None


def test_transparent_png_is_flattened_on_white():
    im = Image.new("RGBA", (1200, 900), (200, 30, 30, 255))
    im.paste((0, 0, 0, 0), (0, 0, 600, 900))            # left half transparent
    buf = io.BytesIO()
    im.save(buf, "PNG")
    thumb = make_thumbnail(buf.getvalue())
    assert (thumb.width, thumb.height) == (800, 600)
    px = _pixels(thumb.data, (8, 6))
    assert px[3, 1].min() > 240                          # white where it was transparent
    assert px[3, 6][0] > 170 and px[3, 6][1] < 70        # red where it was red
    _no_metadata(thumb.data)


def _oriented(photo: bytes, orientation: int) -> bytes:
    with Image.open(io.BytesIO(photo)) as im:
        exif = im.getexif()
        exif[0x0112] = orientation
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=92, exif=exif.tobytes())
    return buf.getvalue()


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_the_check_gives_the_same_thumbnail_from_its_own_decode(orientation):
    """Under a consent that needs the face/text check, the sanitizer makes the thumbnail from
    the decode the check does anyway: the same size and pixels as one made from the bytes."""
    upload = _oriented(make_photo(2000, 1500, seed=6), orientation)
    r = sanitize(upload, detect_faces=True, detect_text=True, blur_faces=True, blur_text=True, thumbnail=True)
    assert r.faces == 0 and r.text_regions == 0 and r.thumbnail is not None
    ours = make_thumbnail(r.data)
    assert (r.thumbnail.width, r.thumbnail.height) == (ours.width, ours.height)
    _no_metadata(r.thumbnail.data)
    size = (ours.width // 4, ours.height // 4)
    assert np.abs(_pixels(r.thumbnail.data, size) - _pixels(ours.data, size)).mean() < 3
    assert sanitize(upload, thumbnail=True, detect_faces=False).thumbnail is None  # no decode: none


def test_a_blurred_photo_never_gets_a_thumbnail_from_before_the_blur():
    """The check's decode shows the face before blurring: when anything is blurred the
    sanitizer gives no thumbnail (the transport makes one from the blurred bytes)."""
    from tests.sanitizer.imagegen import face_photo

    with Image.open(io.BytesIO(face_photo())) as im:
        buf = io.BytesIO()
        im.convert("RGB").resize((1600, 1600)).save(buf, "JPEG", quality=90)  # big enough for one
    r = sanitize(buf.getvalue(), blur_faces=True, blur_text=True, thumbnail=True)
    assert r.faces_blurred and r.thumbnail is None
    assert sanitize(buf.getvalue(), detect_faces=True, thumbnail=True).thumbnail is not None  # found, not blurred
