"""Everything we refuse: one plain sentence, a machine reason, never a traceback."""
from __future__ import annotations

import struct
import zlib

import pytest

from handlers.sanitizer import ImageRefused, Limits, sanitize

from . import imagegen as g


def refused(data: bytes, **kw) -> ImageRefused:
    with pytest.raises(ImageRefused) as exc:
        sanitize(data, **kw)
    msg = str(exc.value)
    assert "\n" not in msg and msg.endswith(".") and len(msg) < 200 and msg[0].isupper()
    assert "Traceback" not in msg and "Error" not in msg
    return exc.value


@pytest.fixture(scope="module")
def small_jpeg() -> bytes:
    return g.jpeg_bytes(g.photo(64, 48), exif=g.maker_note_exif(g.Planted()))


def test_empty():
    assert refused(b"").reason == "empty"


@pytest.mark.parametrize(
    "data,what",
    [
        (b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\n%%EOF\n", "PDF"),
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "SVG"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>", "SVG"),
        (b"<!DOCTYPE html><html><body><img src=x></body></html>", "HTML"),
        (b"\xef\xbb\xbf  <html><head></head></html>", "HTML"),
        (b"PK\x03\x04" + b"\0" * 40, "ZIP"),
        (b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\0" * 40, "video"),
        (b"just some text, not an image", None),
    ],
)
def test_non_images_named_plainly(data, what):
    exc = refused(data)
    assert exc.reason == "not_image"
    if what:
        assert what in str(exc)


def test_unsupported_image_format():
    assert refused(b"BM" + b"\0" * 60).reason == "unsupported_format"


@pytest.mark.parametrize("cut", [3, 20, 200, -400, -3, -1])
def test_truncated_jpeg(small_jpeg, cut):
    exc = refused(small_jpeg[:cut])
    assert exc.reason in ("truncated", "corrupt")
    if cut < 0:
        assert exc.reason == "truncated"


def test_truncated_png(tmp_path):
    src = g.planted_png(tmp_path, g.Planted())
    data = src.read_bytes()
    iend = data.rindex(b"IEND")
    assert refused(data[: iend // 2]).reason in ("truncated", "corrupt")


@pytest.mark.parametrize("where", ["dqt", "dht", "sof", "sos"])
def test_corrupt_jpeg_tables(small_jpeg, where):
    marker = {"dqt": b"\xff\xdb", "dht": b"\xff\xc4", "sof": b"\xff\xc0", "sos": b"\xff\xda"}[where]
    i = small_jpeg.index(marker)
    bad = bytearray(small_jpeg)
    bad[i + 3] ^= 0x05  # length no longer matches the table layout
    assert refused(bytes(bad)).reason in ("corrupt", "truncated")


def test_missing_marker_is_corrupt(small_jpeg):
    i = small_jpeg.index(b"\xff\xdb")
    assert refused(small_jpeg[:i] + b"\x12\x34" + small_jpeg[i:]).reason == "corrupt"


def _with_sof_size(data: bytes, w: int, h: int) -> bytes:
    i = data.index(b"\xff\xc0")
    return data[: i + 5] + struct.pack(">HH", h, w) + data[i + 9:]


def test_jpeg_decompression_bomb_refused_before_decoding(small_jpeg):
    bomb = _with_sof_size(small_jpeg, 60000, 60000)
    exc = refused(bomb)
    assert exc.reason == "too_many_pixels" and "60000x60000" in str(exc)
    # and the limit is configurable
    assert refused(small_jpeg, limits=Limits(max_pixels=1000)).reason == "too_many_pixels"
    assert sanitize(small_jpeg, limits=Limits(max_pixels=64 * 48), detect_faces=False).width == 64


def _png_chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def test_png_decompression_bomb_refused():
    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 10000, 9)
    png = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    assert refused(png).reason == "too_many_pixels"


def test_oversize_file_refused(small_jpeg):
    exc = refused(small_jpeg, limits=Limits(max_bytes=100))
    assert exc.reason == "too_large" and "MB" in str(exc)


def test_lossless_or_hierarchical_jpeg_refused(small_jpeg):
    i = small_jpeg.index(b"\xff\xc0")
    lossless = small_jpeg[:i] + b"\xff\xc3" + small_jpeg[i + 2:]
    assert refused(lossless).reason == "unsupported_format"


@pytest.mark.parametrize("garbage", [b"\xff\xd8\xff", b"\xff\xd8\xff\xd9", b"\x89PNG\r\n\x1a\n", b"GIF89a",
                                     b"RIFF\x10\x00\x00\x00WEBPVP8 ", b"II*\x00\x08\x00\x00\x00",
                                     b"\x00\x00\x00\x18ftypheic" + b"\0" * 16])
def test_headers_without_bodies(garbage):
    assert refused(garbage).reason in ("truncated", "corrupt")


@pytest.mark.parametrize("make", ["planted_png", "planted_webp", "planted_tiff", "planted_gif", "planted_heic"])
def test_pixel_limit_checked_for_every_format(tmp_path, make):
    src = getattr(g, make)(tmp_path, g.Planted())
    exc = refused(src.read_bytes(), limits=Limits(max_pixels=10_000))
    assert exc.reason == "too_many_pixels"


def test_millions_of_tiny_segments_are_refused_quickly(small_jpeg):
    """A 20 MB file of empty COM segments must not keep the bot busy for seconds."""
    import time

    hostile = small_jpeg[:2] + b"\xff\xfe\x00\x02" * 5_000_000 + small_jpeg[2:]
    t0 = time.perf_counter()
    assert refused(hostile).reason == "corrupt"
    assert time.perf_counter() - t0 < 2.0


def test_millions_of_tiny_png_chunks_are_refused(tmp_path):
    src = tmp_path / "p.png"
    g.photo(32, 24).save(src)
    data = src.read_bytes()
    junk = _png_chunk(b"abCd", b"")
    assert refused(data[:33] + junk * 2_000_000 + data[33:]).reason == "corrupt"


@pytest.mark.parametrize("make,cut", [("planted_png", 0.6), ("planted_webp", 0.6), ("planted_tiff", 0.5),
                                      ("planted_gif", 0.7), ("planted_heic", 0.6)])
def test_truncated_refused_even_when_pillow_is_told_to_load_truncated_images(tmp_path, monkeypatch, make, cut):
    """Synapse sets ImageFile.LOAD_TRUNCATED_IMAGES globally; our refusals must not depend on it."""
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = getattr(g, make)(tmp_path, g.Planted()).read_bytes()
    assert refused(data[: int(len(data) * cut)]).reason in ("truncated", "corrupt")


def test_truncated_jpeg_refused_even_when_pillow_loads_truncated_images(monkeypatch, small_jpeg):
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    assert refused(small_jpeg[:-500]).reason == "truncated"


# --- hostile files from the security review (issue 9, finding 7) ---------------------------

@pytest.mark.parametrize("detect_faces", [False, True])
def test_jpeg_with_thousands_of_progressive_scans_is_refused(detect_faces):
    """4,000 scans: every scan walks the whole picture again (14 s, 393 MB, and the file was
    forwarded as is). More than MAX_SCANS is refused before any decoding."""
    from handlers.sanitizer.jpeg import MAX_SCANS

    bomb = g.progressive_scan_bomb()
    assert bomb.count(b"\xff\xda") >= 4000
    assert refused(bomb, detect_faces=detect_faces).reason == "corrupt"
    # an ordinary progressive photo (about 10 scans) and one at the cap still pass
    normal = g.jpeg_bytes(g.photo(320, 240), progressive=True)
    assert sanitize(normal, detect_faces=detect_faces).width == 320
    at_cap = g.progressive_scan_bomb(scans=MAX_SCANS, size=(64, 64))
    assert sanitize(at_cap, detect_faces=False).width == 64
    assert refused(g.progressive_scan_bomb(scans=MAX_SCANS + 1, size=(64, 64))).reason == "corrupt"


@pytest.mark.parametrize("data", [
    g.webp_declaring(16384, 16384, "VP8X"),
    g.webp_declaring(10000, 10000, "VP8X"),  # over our 60 MP limit, under Pillow's own bomb check
    g.webp_declaring(16384, 16384, "VP8L"),
    g.webp_declaring(16383, 16383, "VP8 "),
    b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 10000, 10000, 8, 2, 0, 0, 0)),
    b"GIF89a" + struct.pack("<HH", 10000, 10000) + b"\x00\x00\x00",
], ids=["webp-34-bytes", "webp-100MP", "webp-lossless", "webp-lossy", "png-header", "gif-header"])
def test_declared_size_is_checked_before_any_decoder_opens_the_file(monkeypatch, data):
    """The reviewer's 34-byte WebP declaring 16384x16384 cost 2.7 s and 1.2 GB: the decoder
    allocated the canvas when it opened the file. No decoder may see such a file at all."""
    from PIL import Image

    def no_decoder(*a, **k):
        raise AssertionError("a decoder opened a file whose header declares too many pixels")

    monkeypatch.setattr(Image, "open", no_decoder)
    exc = refused(data)
    assert exc.reason == "too_many_pixels" and "megapixels" in str(exc)
    if data.startswith(b"RIFF") and b"VP8X" in data[:16] and b"16384x16384" in str(exc).encode():
        assert len(data) == 34
