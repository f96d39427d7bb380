"""Decoding a JPEG in two pieces at once (handlers/sanitizer/_jpeg_split.py).

The check's decode is cut in two at a restart marker when the file has them; these tests
hold it to giving exactly the pixels of one decode, to cutting only where it is safe, and to
falling back to one decode (and so to its verdict) whenever anything does not fit.
"""
from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from handlers.sanitizer import _jpeg_split, sanitize
from handlers.sanitizer._types import Limits
from handlers.sanitizer.jpeg import sanitize_jpeg

from .imagegen import face_photo

CORPUS_IPHONE = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "exif-samples" / "jpg" / "hdr" / "iphone_hdr_YES.jpg"


@pytest.fixture(scope="module")
def pool():
    with ThreadPoolExecutor(1) as p:
        yield p


def _picture(w: int, h: int, seed: int = 1) -> Image.Image:
    """Smooth colour gradients plus noise and a face: real structure in every row."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 255 // w), (y * 255 // h), ((x + y) * 127 // (w + h)) + 64], axis=-1)
    noisy = np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)
    im = Image.fromarray(noisy, "RGB")
    face = Image.open(io.BytesIO(face_photo())).convert("RGB").resize((w // 3, w // 3))
    im.paste(face, (w // 3, h // 3))
    return im


def _jpeg(im: Image.Image, **options) -> bytes:
    out = io.BytesIO()
    im.save(out, "JPEG", quality=90, **options)
    return sanitize_jpeg(out.getvalue(), Limits())[0]  # what the check decodes: the clean file


def _whole(data: bytes, request) -> np.ndarray:
    return np.asarray(_jpeg_split.decode_scaled(data, request))


def _markers(piece: bytes) -> list[int]:
    scan = piece.index(b"\xff\xda")
    return [piece[i + 1] for i in range(scan, len(piece) - 1) if piece[i] == 0xFF and 0xD0 <= piece[i + 1] <= 0xD7]


@pytest.mark.parametrize("request_size", [(800, 600), (400, 300), (200, 150)])  # scales 1/2, 1/4, 1/8
def test_two_pieces_give_exactly_the_pixels_of_one_decode(pool, request_size):
    data = _jpeg(_picture(1600, 1200), restart_marker_rows=1)
    assert _jpeg_split.split(data) is not None
    whole = _whole(data, request_size)
    both = np.asarray(_jpeg_split.decode_scaled(data, request_size, run_beside=pool.submit))
    assert both.shape == whole.shape and whole.shape[1] == 1600 * request_size[0] // 1600
    assert np.array_equal(both, whole)


def test_the_pieces_are_two_whole_jpegs_and_the_bottom_restarts_at_rst0():
    data = _jpeg(_picture(1600, 1200), restart_marker_rows=1)
    top, bottom, top_h, size = _jpeg_split.split(data)
    assert size == (1600, 1200)
    assert top_h % 16 == 0 and 400 <= top_h <= 800  # whole rows of blocks, near the middle
    assert Image.open(io.BytesIO(top)).size == (1600, top_h)
    assert Image.open(io.BytesIO(bottom)).size == (1600, 1200 - top_h)
    numbers = _markers(bottom)
    assert numbers[:9] == [0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD0]
    for piece in (top, bottom):
        Image.open(io.BytesIO(piece)).load()  # each decodes on its own, no error


def test_an_interval_that_is_not_a_whole_row_is_cut_where_one_begins_a_row(pool):
    # 100 blocks a row, a marker every 7 blocks: intervals begin a row every 7 rows
    data = _jpeg(_picture(1600, 1200), restart_marker_blocks=7)
    top, bottom, top_h, _ = _jpeg_split.split(data)
    assert (top_h // 16) % 7 == 0
    assert np.array_equal(np.asarray(_jpeg_split.decode_scaled(data, (400, 300), run_beside=pool.submit)),
                          _whole(data, (400, 300)))


def test_files_that_cannot_be_cut_are_decoded_whole(pool):
    pic = _picture(1600, 1200)
    plain = _jpeg(pic)  # no restart markers: what Pillow (and many cameras) write
    no_cut_near_middle = _jpeg(pic, restart_marker_blocks=97)  # begins a row only every 97 rows
    progressive = _jpeg(pic, progressive=True, restart_marker_rows=1)
    for data in (plain, no_cut_near_middle, progressive):
        assert _jpeg_split.split(data) is None
        assert np.array_equal(np.asarray(_jpeg_split.decode_scaled(data, (400, 300), run_beside=pool.submit)),
                              _whole(data, (400, 300)))
    cmyk = io.BytesIO()
    pic.convert("CMYK").save(cmyk, "JPEG", quality=90, restart_marker_rows=1)
    assert _jpeg_split.split(sanitize_jpeg(cmyk.getvalue(), Limits())[0]) is None  # four components


def test_a_stream_with_a_missing_interval_is_left_to_the_whole_decode():
    data = bytearray(_jpeg(_picture(1600, 1200), restart_marker_rows=1))
    scan = data.index(b"\xff\xda")
    firsts = [i for i in range(scan, len(data) - 1) if data[i] == 0xFF and 0xD0 <= data[i + 1] <= 0xD7]
    del data[firsts[10]:firsts[11]]  # one restart interval gone: the header no longer describes the stream
    assert _jpeg_split.split(bytes(data)) is None


def test_the_check_decodes_a_photo_with_restart_markers_in_two_pieces(monkeypatch):
    """The sanitizer uses the cut, and finds the same faces and text as with one decode."""
    data = io.BytesIO()
    _picture(2016, 1512).save(data, "JPEG", quality=90, restart_marker_rows=1)
    data = data.getvalue()
    cuts = []
    real_split = _jpeg_split.split
    monkeypatch.setattr(_jpeg_split, "split", lambda d: cuts.append(1) or real_split(d))
    two = sanitize(data, detect_faces=True, detect_text=True)
    assert cuts, "the check did not try the cut"
    monkeypatch.setattr(_jpeg_split, "split", lambda d: None)
    one = sanitize(data, detect_faces=True, detect_text=True)
    assert two.faces == 1 and (two.face_boxes, two.text_boxes) == (one.face_boxes, one.text_boxes)


@pytest.mark.skipif(not CORPUS_IPHONE.exists(), reason="the shared corpus is not beside this checkout")
def test_an_iphone_jpeg_is_cut_and_decodes_the_same(pool):
    """A real iPhone JPEG: one restart interval per row of 16-px blocks (what the cut is for)."""
    data = sanitize_jpeg(CORPUS_IPHONE.read_bytes(), Limits())[0]
    assert _jpeg_split.split(data) is not None
    both = np.asarray(_jpeg_split.decode_scaled(data, (1000, 750), run_beside=pool.submit))
    assert np.array_equal(both, _whole(data, (1000, 750)))
