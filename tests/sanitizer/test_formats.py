"""PNG, WebP, TIFF, GIF, HEIC: decoded and re-encoded without any metadata."""
from __future__ import annotations

import pytest
from PIL import Image, ImageOps

from handlers.sanitizer import ImageRefused, sanitize

from . import imagegen as g
from .checks import assert_clean, decoded, displayed


def _run(tmp_path, src, planted):
    data = src.read_bytes()
    result = sanitize(data, detect_faces=False)
    out = tmp_path / f"out.{result.extension}"
    out.write_bytes(result.data)
    tags = assert_clean(out, planted)
    return data, result, tags


@pytest.mark.parametrize("orientation", [1, 6, 3])
def test_png_text_exif_xmp_time_private_chunks_and_trailer_removed(tmp_path, orientation):
    p = g.Planted()
    src = g.planted_png(tmp_path, p, orientation=orientation)
    before = g.exiftool_json(src)
    assert "PNG:Author" in before and any(k.startswith("XMP") for k in before) and "PNG:ModifyDate" in before
    data, result, _ = _run(tmp_path, src, p)
    assert result.media_type == "image/png" and result.lossless
    # lossless: what a viewer showed before is exactly the pixels now (orientation applied)
    assert decoded(result.data).tobytes() == displayed(data).tobytes()
    assert decoded(result.data).getexif().get(0x0112) is None
    for label in ("text notes embedded in the file", "XMP metadata (authorship, edit history)",
                  "capture time", "maker notes", "GPS location",
                  "trailing data after the image (e.g. motion-photo video)"):
        assert label in result.removed, label


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L", "I;16", "1"])
def test_png_modes_survive_losslessly(tmp_path, mode):
    im = g.photo(50, 40)
    im = im.convert("RGBA").convert(mode) if mode != "I;16" else im.convert("L").convert("I;16")
    src = tmp_path / "m.png"
    im.save(src)
    result = sanitize(src.read_bytes(), detect_faces=False)
    before, after = decoded(src.read_bytes()), decoded(result.data)
    if mode == "P":  # palettes are expanded (see _reencode.py): compare the colours shown
        before, after = before.convert("RGBA"), after.convert("RGBA")
    assert after.tobytes() == before.tobytes()


def test_png_palette_transparency_kept(tmp_path):
    im = g.photo(40, 30).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    src = tmp_path / "t.png"
    im.save(src, transparency=3)
    out = decoded(sanitize(src.read_bytes(), detect_faces=False).data)
    assert out.mode == "RGBA"
    assert out.convert("RGBA").tobytes() == decoded(src.read_bytes()).convert("RGBA").tobytes()


@pytest.mark.parametrize("lossless", [False, True], ids=["lossy", "lossless"])
def test_webp_exif_xmp_icc_text_removed(tmp_path, lossless):
    p = g.Planted()
    src = g.planted_webp(tmp_path, p, lossless=lossless, orientation=8)
    before = g.exiftool_json(src)
    assert any(k.startswith("XMP") for k in before) and any(k.startswith("GPS") for k in before)
    data, result, _ = _run(tmp_path, src, p)
    assert result.media_type == "image/webp"
    assert decoded(result.data).convert("RGB").tobytes() == displayed(data).convert("RGB").tobytes()


def test_tiff_becomes_clean_png(tmp_path):
    p = g.Planted()
    src = g.planted_tiff(tmp_path, p, orientation=6)
    before = g.exiftool_json(src)
    assert any(k.startswith("GPS") for k in before) and any(k.startswith("IPTC") for k in before)
    data, result, _ = _run(tmp_path, src, p)
    assert result.media_type == "image/png"
    assert decoded(result.data).tobytes() == displayed(data).tobytes()
    assert "camera serial number" in result.removed and "GPS location" in result.removed


def test_gif_becomes_clean_png(tmp_path):
    p = g.Planted()
    src = g.planted_gif(tmp_path, p)
    data, result, _ = _run(tmp_path, src, p)
    assert result.media_type == "image/png"
    assert decoded(result.data).convert("RGB").tobytes() == decoded(data).convert("RGB").tobytes()
    assert "comments and descriptions" in result.removed


def test_animated_gif_refused(tmp_path):
    src = g.planted_gif(tmp_path, g.Planted(), frames=3)
    with pytest.raises(ImageRefused) as exc:
        sanitize(src.read_bytes())
    assert exc.value.reason == "unsupported_format" and "still photo" in str(exc.value)


def test_heic_becomes_clean_jpeg(tmp_path):
    p = g.Planted()
    src = g.planted_heic(tmp_path, p, orientation=1)
    before = g.exiftool_json(src)
    assert any(k.startswith("GPS") for k in before)
    data, result, _ = _run(tmp_path, src, p)
    assert result.media_type == "image/jpeg" and result.extension == "jpg" and not result.lossless
    assert decoded(result.data).size == displayed(data).size
    assert "GPS location" in result.removed and "maker notes" in result.removed


def test_heic_upright_as_displayed(tmp_path):
    """HEIF rotation (irot) is applied by the decoder; the JPEG must look the same."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    im = g.photo(120, 60)
    src = tmp_path / "r.heic"
    im.save(src, "HEIF", quality=90, exif=g.maker_note_exif(g.Planted(), orientation=6))
    data = src.read_bytes()
    result = sanitize(data, detect_faces=False)
    shown_before = ImageOps.exif_transpose(Image.open(src))
    assert decoded(result.data).size == shown_before.size == (60, 120)
    # lossy, so compare coarsely: the same picture the same way up
    small_a = shown_before.convert("L").resize((6, 12))
    small_b = decoded(result.data).convert("L").resize((6, 12))
    assert max(abs(x - y) for x, y in zip(small_a.tobytes(), small_b.tobytes())) < 40
