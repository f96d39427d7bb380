"""Face detection (OpenCV Haar cascade on a small copy) and blurring."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from handlers.sanitizer import sanitize
from handlers.sanitizer import _detect

from . import imagegen as g
from .checks import decoded, displayed


def test_face_found_in_portrait_and_not_in_coffee():
    result = sanitize(g.face_photo())
    assert result.faces_checked and result.faces == 1
    assert result.lossless and not result.faces_blurred
    coffee = (Path(__file__).parent / "data" / "coffee.jpg").read_bytes()
    assert sanitize(coffee).faces == 0


def test_detect_faces_off_reports_zero():
    result = sanitize(g.face_photo(), detect_faces=False)
    assert result.faces == 0 and not result.faces_checked


def test_face_found_when_photo_is_stored_sideways():
    """Phones store portrait photos sideways plus an Orientation tag: detect on the upright view."""
    im = Image.open(io.BytesIO(g.face_photo())).rotate(90, expand=True)  # stored sideways
    ex = Image.Exif()
    ex[0x0112] = 6  # "rotate 90 CW to display"
    data = g.jpeg_bytes(im, exif=ex.tobytes())
    assert sanitize(data).faces == 1


def test_blur_faces_hides_the_face_and_keeps_the_rest():
    data = g.face_photo()
    result = sanitize(data, blur_faces=True)
    assert result.faces == 1 and result.faces_blurred and not result.lossless
    assert "faces (blurred)" in result.removed
    after = decoded(result.data).convert("RGB")
    assert _detect.faces(np.asarray(after)) == []  # the detector no longer finds it
    before = displayed(data).convert("RGB")
    # away from the face (bottom-right corner) the picture is the same apart from re-encoding noise
    box = (400, 400, 512, 512)
    diff = [abs(a - b) for a, b in zip(before.crop(box).tobytes(), after.crop(box).tobytes())]
    assert sum(diff) / len(diff) < 4


def test_blur_on_png_input(tmp_path):
    im = Image.open(io.BytesIO(g.face_photo()))
    src = tmp_path / "face.png"
    im.save(src)
    result = sanitize(src.read_bytes(), blur_faces=True)
    assert result.media_type == "image/png" and result.faces == 1 and result.faces_blurred
    assert _detect.faces(np.asarray(decoded(result.data).convert("RGB"))) == []


def test_faces_from_several_threads():
    """The bot may sanitize in worker threads; each gets its own cascade."""
    from concurrent.futures import ThreadPoolExecutor

    data = g.face_photo()
    with ThreadPoolExecutor(max_workers=4) as pool:
        counts = list(pool.map(lambda _: sanitize(data).faces, range(8)))
    assert counts == [1] * 8


def test_small_face_in_a_big_photo():
    """A face about 7% of the picture's height (someone in the background) is still found."""
    canvas = g.photo(2016, 1512)
    canvas.paste(Image.open(io.BytesIO(g.face_photo())).resize((600, 600)), (500, 375))
    assert sanitize(g.jpeg_bytes(canvas)).faces == 1
    assert sanitize(g.jpeg_bytes(g.photo(2016, 1512))).faces == 0


@pytest.mark.parametrize("orientation", range(1, 9))
def test_blur_lands_on_the_face_whatever_the_orientation(orientation):
    """Blurring happens in the stored frame (no full-size rotation); the face must still be hit."""
    from PIL import ImageOps

    upright_im = Image.open(io.BytesIO(g.face_photo())).convert("RGB")
    inverse = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
               5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
               8: Image.Transpose.ROTATE_270}
    stored = upright_im.transpose(inverse[orientation]) if orientation != 1 else upright_im
    ex = Image.Exif()
    ex[0x0112] = orientation
    data = g.jpeg_bytes(stored, exif=ex.tobytes())
    shown_in = ImageOps.exif_transpose(decoded(data)).convert("L").resize((64, 64))
    ref = upright_im.convert("L").resize((64, 64))
    assert sum(abs(a - b) for a, b in zip(shown_in.tobytes(), ref.tobytes())) / 4096 < 6  # test set-up is right
    result = sanitize(data, blur_faces=True)
    assert result.faces == 1 and result.faces_blurred
    shown = displayed(result.data)
    assert shown.size == upright_im.size == (result.width, result.height)
    assert _detect.faces(np.asarray(shown.convert("RGB"))) == []
    assert decoded(result.data).getexif().get(0x0112, 1) == orientation
