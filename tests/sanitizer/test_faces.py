"""Face detection (OpenCV Haar cascade on a small copy) and blurring."""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from handlers.sanitizer import sanitize
from handlers.sanitizer import _faces

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
    after = decoded(result.data).convert("L")
    assert _faces.detect(after) == []  # the detector no longer finds it
    before = displayed(data).convert("L")
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
    assert _faces.detect(decoded(result.data).convert("L")) == []


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
