"""JPEG: lossless marker-segment filtering."""
from __future__ import annotations

import io
import json
import struct

import pytest
from PIL import Image, ImageCms

from handlers.sanitizer import ImageRefused, Limits, SanitizedImage, sanitize

from . import imagegen as g
from .checks import assert_clean, decoded, displayed

KEPT_MARKERS = {0xD8, 0xD9, 0xDB, 0xC4, 0xC0, 0xC1, 0xC2, 0xDD, 0xDA, 0xE0, 0xE1, 0xE2, 0xEE}


def markers_of(data: bytes) -> list[tuple[int, bytes]]:
    """(marker, payload) of every segment before the first scan's data, plus later ones."""
    out, pos = [(0xD8, b"")], 2
    while pos < len(data):
        assert data[pos] == 0xFF
        marker = data[pos + 1]
        if marker == 0xD9:
            out.append((0xD9, b""))
            assert pos + 2 == len(data), "bytes after EOI"
            break
        ln = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        out.append((marker, data[pos + 4:pos + 2 + ln]))
        pos += 2 + ln
        if marker == 0xDA:
            while not (data[pos] == 0xFF and data[pos + 1] not in (0x00, *range(0xD0, 0xD8))):
                pos += 1
    return out


@pytest.mark.parametrize("progressive", [False, True], ids=["baseline", "progressive"])
def test_planted_jpeg_comes_out_clean_and_pixel_identical(tmp_path, progressive):
    p = g.Planted()
    src = g.planted_jpeg(tmp_path, p, progressive=progressive)
    data = src.read_bytes()
    present = {name.split("/")[0] for name in p.found_in(data)}
    assert present == set(p.markers), set(p.markers) - present  # every marker really is in the input
    before = g.exiftool_json(src)
    assert any(k.startswith("GPS:") for k in before) and "ExifIFD:SerialNumber" in before
    assert "IFD1:ThumbnailImage" in before and any(k.startswith("XMP-") for k in before)
    assert any(k.startswith("IPTC:") for k in before) and "File:Comment" in before

    result = sanitize(data, detect_faces=False)
    out = tmp_path / "out.jpg"
    out.write_bytes(result.data)
    assert_clean(out, p)
    assert decoded(result.data).tobytes() == decoded(data).tobytes()
    assert result.media_type == "image/jpeg" and result.extension == "jpg" and result.lossless
    assert (result.width, result.height) == (640, 480)
    for label in ("GPS location", "camera serial number", "capture time", "device make/model",
                  "embedded thumbnail", "XMP metadata (authorship, edit history)",
                  "IPTC/Photoshop metadata (captions, authorship)", "comments and descriptions",
                  "trailing data after the image (e.g. motion-photo video)", "author/owner name"):
        assert label in result.removed, label
    assert result.removed[0] == "GPS location"  # most sensitive first for the chat reply
    for marker, _payload in markers_of(result.data):
        assert marker in KEPT_MARKERS, hex(marker)


def test_maker_note_and_utf16_xp_tags_are_removed(tmp_path):
    p = g.Planted()
    data = g.jpeg_bytes(g.photo(200, 150), exif=g.maker_note_exif(p))
    assert p.found_in(data)
    result = sanitize(data, detect_faces=False)
    out = tmp_path / "o.jpg"
    out.write_bytes(result.data)
    assert_clean(out, p)
    assert "maker notes" in result.removed and "GPS location" in result.removed


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_is_kept_as_displayed(tmp_path, orientation):
    p = g.Planted()
    src = g.planted_jpeg(tmp_path, p, width=96, height=64, orientation=orientation, icc=False)
    data = src.read_bytes()
    result = sanitize(data, detect_faces=False)
    out = tmp_path / "o.jpg"
    out.write_bytes(result.data)
    tags = assert_clean(out, p)
    assert displayed(result.data).tobytes() == displayed(data).tobytes()
    assert displayed(result.data).size == displayed(data).size == (result.width, result.height)
    if orientation == 1:
        assert "IFD0:Orientation" not in tags
    else:
        assert decoded(result.data).getexif()[0x0112] == orientation
        assert len(decoded(result.data).getexif()) == 1  # Orientation and nothing else


@pytest.mark.parametrize(
    "mode,kw",
    [
        ("L", {}),
        ("CMYK", {}),
        ("RGB", {"subsampling": 0}),
        ("RGB", {"progressive": True, "optimize": True}),
        ("RGB", {"restart_marker_blocks": 4}),
        ("RGB", {"quality": 100}),
    ],
    ids=["gray", "cmyk-adobe", "444", "progressive-optimized", "restart-markers", "q100"],
)
def test_pixels_bit_identical_across_jpeg_kinds(mode, kw):
    im = g.photo(257, 131).convert(mode)
    try:
        data = g.jpeg_bytes(im, **kw)
    except TypeError:
        pytest.skip("this Pillow cannot write that option")
    data = data[:2] + g.segment(0xE1, b"Exif\x00\x00" + b"II*\x00junk") + g.segment(0xFE, b"comment") + data[2:]
    if "restart_marker_blocks" in kw:
        assert b"\xff\xdd" in data and b"\xff\xd0" in data  # DRI and RST0 really are there
    result = sanitize(data, detect_faces=False)
    a, b = decoded(data), decoded(result.data)
    assert a.mode == b.mode == mode
    assert a.tobytes() == b.tobytes()
    assert len(result.data) < len(data)


def test_icc_profile_keeps_colours_but_loses_text(tmp_path):
    p = g.Planted()
    icc_in = g.planted_icc(p)
    data = g.jpeg_bytes(g.photo(64, 48), icc_profile=icc_in)
    result = sanitize(data, detect_faces=False)
    icc_out = decoded(result.data).info["icc_profile"]
    assert not p.found_in(icc_out)
    prof_in = ImageCms.ImageCmsProfile(io.BytesIO(icc_in))
    prof_out = ImageCms.ImageCmsProfile(io.BytesIO(icc_out))  # still a valid profile
    assert ImageCms.getProfileDescription(prof_out).strip() == "Colour profile (sanitised)"
    # same colourimetry: converting a picture through either profile gives the same pixels
    srgb = ImageCms.createProfile("sRGB")
    im = g.photo(32, 32)
    via_in = ImageCms.profileToProfile(im, prof_in, srgb)
    via_out = ImageCms.profileToProfile(im, prof_out, srgb)
    assert via_in.tobytes() == via_out.tobytes()
    for field in (b"rXYZ", b"gXYZ", b"bXYZ", b"wtpt"):
        assert field in icc_out


def test_large_icc_profile_split_across_segments():
    prof = bytearray(g.planted_icc(g.Planted()))
    # pad with a dropped tag to over 64 KiB so the profile needs two APP2 segments
    big = bytearray(bytes(prof) + b"\0" * 70000)
    struct.pack_into(">I", big, 0, len(big))
    data = g.jpeg_bytes(g.photo(64, 48), icc_profile=bytes(big))
    assert data.count(b"ICC_PROFILE\x00") == 2
    result = sanitize(data, detect_faces=False)
    assert decoded(result.data).info.get("icc_profile")
    assert decoded(result.data).tobytes() == decoded(data).tobytes()


def test_api_shapes():
    assert Limits() == Limits(40 * 1024 * 1024, 60_000_000)
    with pytest.raises(AttributeError):
        Limits().max_bytes = 1  # type: ignore[misc]
    assert issubclass(ImageRefused, ValueError)
    result = sanitize(g.jpeg_bytes(g.photo(32, 24)), detect_faces=False)
    assert isinstance(result, SanitizedImage)
    rep = result.report()
    assert json.loads(json.dumps(rep)) == rep
    assert rep["removed"] == [] and rep["faces"] == 0 and rep["faces_blurred"] is False
    assert "\\xff" not in repr(result)  # repr never dumps image bytes


def test_twelve_megapixel_phone_photo_is_quick():
    """Not a timing assertion (see bench/), just that the big path works and stays lossless."""
    data = g.jpeg_bytes(g.photo(4032, 3024), quality=88)
    result = sanitize(data, detect_faces=False)
    assert (result.width, result.height) == (4032, 3024)
    assert result.data[-2:] == b"\xff\xd9"
    assert decoded(result.data).tobytes() == decoded(data).tobytes()


def test_profile_colour_space_must_fit_the_pixels_we_write():
    from handlers.sanitizer._icc import fits_mode, sanitize_icc

    rgb = sanitize_icc(g.planted_icc(g.Planted()))
    assert rgb is not None and fits_mode(rgb, "RGB") and fits_mode(rgb, "RGBA")
    cmyk = bytearray(rgb)
    cmyk[16:20] = b"CMYK"
    assert not fits_mode(bytes(cmyk), "RGB") and fits_mode(bytes(cmyk), "CMYK")
    assert not fits_mode(rgb, "L") and not fits_mode(None, "RGB")
