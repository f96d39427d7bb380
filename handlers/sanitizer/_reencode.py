"""PNG, GIF, WebP, TIFF, HEIC/HEIF: decode the pixels, write them into a fresh file.

The output is built from raw pixel bytes (Image.frombytes), so no Pillow
``info``/EXIF state can leak into the encoder. Output formats:

* PNG  -> PNG (lossless)          * GIF  -> PNG (lossless, first and only frame; palette expanded to RGB(A))
* TIFF -> PNG (lossless; chat clients do not show TIFF)
* WebP -> WebP lossless (no second generation of lossy compression)
* HEIC/HEIF -> JPEG quality 92 (what every chat client can show); PNG if it has alpha.

Animated GIF/WebP are refused. Metadata is listed (for the report) by a
cheap walk over the container's chunks/boxes before decoding.
"""
from __future__ import annotations

import struct
from io import BytesIO

from . import _types as L
from ._exif import TIFF_STRUCTURE, inspect_tiff
from ._icc import fits_mode, sanitize_icc
from ._jpeg_path import too_many_pixels_error
from ._types import ImageRefused, Limits, SanitizedImage, Wanted

_heif_registered = False
_MAX_CHUNKS = 100_000  # a 40 MB PNG written in 8 KiB IDAT chunks has ~5000


def _register_heif() -> None:
    global _heif_registered
    if not _heif_registered:
        import pillow_heif

        pillow_heif.register_heif_opener()
        _heif_registered = True


def _exif_labels(raw: bytes | None) -> tuple[list[str], int]:
    if not raw:
        return [], 1
    if raw[:6] == b"Exif\x00\x00":
        raw = raw[6:]
    elif raw[4:10] == b"Exif\x00\x00":  # HEIF-style 4-byte offset prefix
        raw = raw[10:]
    return inspect_tiff(raw)


def _png_labels(data: bytes) -> list[str]:
    labels: list[str] = []
    pos = 8
    n = len(data)
    chunks = 0
    while pos + 8 <= n:
        chunks += 1
        if chunks > _MAX_CHUNKS:
            raise _refuse_decode(ValueError("too many chunks"))
        length, ctype = struct.unpack_from(">I4s", data, pos)
        body = data[pos + 8:pos + 8 + length]
        if ctype in (b"tEXt", b"zTXt", b"iTXt"):
            labels.append(L.XMP if body.startswith(b"XML:com.adobe.xmp") else L.TEXT_CHUNKS)
        elif ctype == b"eXIf":
            labels.extend(_exif_labels(body)[0])
        elif ctype == b"tIME":
            labels.append(L.CAPTURE_TIME)
        elif ctype == b"iCCP":
            labels.append(L.ICC_TEXT)
        elif ctype == b"IEND":
            if pos + 12 < n:
                labels.append(L.TRAILER)
            return labels
        if pos + 12 + length > n:
            raise _truncated()
        elif ctype not in (b"IHDR", b"PLTE", b"IDAT", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"sBIT", b"pHYs",
                           b"bKGD", b"hIST", b"sPLT", b"acTL", b"fcTL", b"fdAT", b"cICP"):
            labels.append(L.APP_SEGMENTS)
        pos += 12 + length
    raise _truncated()  # no IEND: the file was cut short


def _webp_labels(data: bytes) -> list[str]:
    labels: list[str] = []
    riff_end = 8 + int.from_bytes(data[4:8], "little")
    pos = 12
    chunks = 0
    while pos + 8 <= min(riff_end, len(data)):
        chunks += 1
        if chunks > _MAX_CHUNKS:
            raise _refuse_decode(ValueError("too many chunks"))
        ctype = data[pos:pos + 4]
        length = int.from_bytes(data[pos + 4:pos + 8], "little")
        body = data[pos + 8:pos + 8 + length]
        if ctype == b"EXIF":
            labels.extend(_exif_labels(body)[0])
        elif ctype == b"XMP ":
            labels.append(L.XMP)
        elif ctype == b"ICCP":
            labels.append(L.ICC_TEXT)
        elif ctype not in (b"VP8 ", b"VP8L", b"VP8X", b"ALPH", b"ANIM", b"ANMF"):
            labels.append(L.APP_SEGMENTS)
        pos += 8 + length + (length & 1)
    if len(data) > riff_end:
        labels.append(L.TRAILER)
    elif len(data) < riff_end:
        raise _truncated()
    return labels


def _truncated() -> ImageRefused:
    return ImageRefused("truncated", "That image is incomplete (the file was cut short); please send it again.")


def _check_complete(kind: str, im, data: bytes) -> None:
    """Our own completeness checks: Pillow's are off when anything in the process (Synapse does)
    sets ImageFile.LOAD_TRUNCATED_IMAGES, and then a cut-short file decodes half grey."""
    if kind == "gif" and b"\x3b" not in data[-16:]:
        raise _truncated()
    if kind == "tiff":
        tags = getattr(im, "tag_v2", {})
        for offs_tag, counts_tag in ((273, 279), (324, 325)):
            offs, counts = tags.get(offs_tag), tags.get(counts_tag)
            if offs is None or counts is None:
                continue
            offs = offs if isinstance(offs, tuple) else (offs,)
            counts = counts if isinstance(counts, tuple) else (counts,)
            if any(int(o) + int(c) > len(data) for o, c in zip(offs, counts)):
                raise _truncated()


def _refuse_decode(exc: BaseException) -> ImageRefused:
    if isinstance(exc, MemoryError):  # the worker's memory cap, not a damaged file
        return ImageRefused("too_many_pixels", "That image is too large to process; please send a smaller photo.")
    text = str(exc).lower()
    if "truncated" in text or isinstance(exc, EOFError):
        return ImageRefused("truncated", "That image is incomplete (the file was cut short); please send it again.")
    return ImageRefused("corrupt", "That image is damaged and cannot be read; please send it again or send a different photo.")


_PNG_MODES = {"1", "L", "LA", "RGB", "RGBA", "I;16"}


def declared_size(data: bytes, kind: str) -> tuple[int, int] | None:
    """Width and height as the file's own header states them, read before any decoder sees
    the file: some decoders allocate the whole canvas when they open it (a 34-byte WebP
    declaring 16384x16384 once cost 1.2 GB). None when the header does not say (the decoder
    then refuses the file)."""
    if kind == "png" and len(data) >= 24 and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if kind == "gif" and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if kind == "webp":
        ctype, body = data[12:16], data[20:30]
        if ctype == b"VP8X" and len(body) == 10:
            return 1 + int.from_bytes(body[4:7], "little"), 1 + int.from_bytes(body[7:10], "little")
        if ctype == b"VP8 " and len(body) == 10 and body[3:6] == b"\x9d\x01\x2a":
            return struct.unpack("<H", body[6:8])[0] & 0x3FFF, struct.unpack("<H", body[8:10])[0] & 0x3FFF
        if ctype == b"VP8L" and len(body) >= 5 and body[0] == 0x2F:
            bits = int.from_bytes(body[1:5], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def sanitize_other(data: bytes, kind: str, limits: Limits, want: Wanted) -> SanitizedImage:
    from PIL import Image

    if kind == "heif":
        _register_heif()
    size = declared_size(data, kind)
    if size is not None and size[0] * size[1] > limits.max_pixels:
        raise too_many_pixels_error(size[0], size[1], limits)

    labels: list[str] = []
    if kind == "png":
        labels += _png_labels(data)
    elif kind == "webp":
        labels += _webp_labels(data)
    elif kind == "tiff":
        labels += inspect_tiff(data, skip=TIFF_STRUCTURE)[0]

    expected = {"png": "PNG", "gif": "GIF", "webp": "WEBP", "tiff": "TIFF", "heif": "HEIF"}[kind]
    try:
        im = Image.open(BytesIO(data), formats=[expected])
    except Image.DecompressionBombError:
        raise ImageRefused("too_many_pixels", f"That image is too large to process (limit {limits.max_pixels // 1_000_000} megapixels); please send a smaller photo.") from None
    except Exception as exc:
        raise _refuse_decode(exc) from None
    w, h = im.size
    if w <= 0 or h <= 0:
        raise _refuse_decode(ValueError("no size"))
    if w * h > limits.max_pixels:
        raise too_many_pixels_error(w, h, limits)

    _check_complete(kind, im, data)
    info = dict(im.info)
    # is_animated looks for a second frame only; n_frames would walk every frame (slow on a hostile file)
    if getattr(im, "is_animated", False):
        if kind in ("gif", "webp"):
            raise ImageRefused("unsupported_format", "Animated images are not supported; please send a still photo.")
        labels.append(L.EXTRA_IMAGES)  # extra TIFF pages / HEIF images: only the primary image is kept
    if kind == "heif":
        labels += _exif_labels(info.get("exif"))[0]
        if info.get("xmp"):
            labels.append(L.XMP)
        if info.get("thumbnails"):
            labels.append(L.THUMBNAIL)
        if info.get("depth_images") or info.get("aux"):
            labels.append(L.EXTRA_IMAGES)
        if info.get("metadata"):
            labels.append(L.APP_SEGMENTS)
        if info.get("icc_profile"):
            labels.append(L.ICC_TEXT)
    elif kind == "gif":
        if info.get("comment"):
            labels.append(L.COMMENTS)
        if info.get("xmp"):
            labels.append(L.XMP)
        if info.get("extension"):
            labels.append(L.APP_SEGMENTS)
    elif kind == "tiff" and info.get("icc_profile"):
        labels.append(L.ICC_TEXT)

    orientation = 1
    try:
        im.load()
        orientation = im.getexif().get(0x0112, 1) if kind != "heif" else 1
    except Exception as exc:
        raise _refuse_decode(exc) from None
    if not isinstance(orientation, int) or orientation not in range(1, 9):
        orientation = 1

    # Normalise the mode to something every output format can hold.
    transparency = info.get("transparency")
    if im.mode in ("P", "PA"):
        # Palette images are expanded: a PNG palette is stored uncompressed, so a damaged
        # file whose "palette" is really leftover text would carry that text out verbatim.
        has_alpha = im.mode == "PA" or transparency is not None or (im.palette is not None and "A" in im.palette.mode)
        im = im.convert("RGBA" if has_alpha else "RGB")
        transparency = None
    elif im.mode not in _PNG_MODES:
        has_alpha = "A" in im.getbands() or transparency is not None
        im = im.convert("RGBA" if has_alpha else "RGB")
        transparency = None
    if kind == "heif" and im.mode not in ("RGB", "RGBA", "L"):
        im = im.convert("RGB")

    from ._orient import upright

    im = upright(im, orientation)
    # Build the clean image from raw pixels only.
    clean = Image.frombytes(im.mode, im.size, im.tobytes())
    if im.mode in ("L", "RGB") and isinstance(transparency, (int, tuple)):
        clean.info["transparency"] = transparency
    del im

    face_boxes: list = []
    text_boxes: list = []
    faces_blurred = text_blurred = False
    if want.faces or want.text:
        import numpy as np

        from . import _detect

        rgb = clean if clean.mode == "RGB" else clean.convert("RGB")
        if max(rgb.size) > _detect.DETECT_SIDE:  # the ~1000-px copy a JPEG's decode gives too
            rgb = rgb.copy() if rgb is clean else rgb
            rgb.thumbnail((_detect.DETECT_SIDE, _detect.DETECT_SIDE), Image.Resampling.BILINEAR)
        face_boxes, text_boxes = _detect.check(np.asarray(rgb), want_faces=want.faces, want_text=want.text)
        del rgb
        blur_faces = face_boxes if want.blur_faces else []
        blur_text = text_boxes if want.blur_text else []
        to_blur = blur_faces + blur_text
        if to_blur:
            if clean.mode not in ("RGB", "RGBA", "L"):
                clean = clean.convert("RGBA" if clean.mode == "LA" else "RGB")
            _detect.blur(clean, blur_faces)
            _detect.blur(clean, blur_text, cells=_detect.TEXT_BLUR_CELLS)
            faces_blurred = bool(want.blur_faces and face_boxes)
            text_blurred = bool(want.blur_text and text_boxes)
            labels += [L.FACES_BLURRED] * faces_blurred + [L.TEXT_BLURRED] * text_blurred
    blurred = faces_blurred or text_blurred

    icc = sanitize_icc(info["icc_profile"]) if info.get("icc_profile") else None
    if info.get("icc_profile") and icc is None:
        labels.append(L.ICC_DROPPED)
    if icc is not None and not fits_mode(icc, clean.mode if kind != "webp" else "RGB"):
        icc = None  # e.g. a CMYK TIFF's profile on the RGB pixels we write
    extra = {"icc_profile": icc} if icc else {}
    out = BytesIO()
    if kind == "heif" and clean.mode in ("RGB", "L"):
        clean.save(out, "JPEG", quality=92, **extra)
        media, ext, lossless = "image/jpeg", "jpg", False
    elif kind == "webp":
        if clean.mode not in ("RGB", "RGBA"):
            clean = clean.convert("RGBA")
        clean.save(out, "WEBP", lossless=True, quality=0, method=0, exact=True, **extra)
        media, ext, lossless = "image/webp", "webp", True
    else:
        if "transparency" in clean.info:
            extra["transparency"] = clean.info["transparency"]
        clean.save(out, "PNG", compress_level=6, **extra)
        media, ext, lossless = "image/png", "png", kind != "heif"
    return SanitizedImage(
        data=out.getvalue(),
        media_type=media,
        extension=ext,
        width=clean.size[0],
        height=clean.size[1],
        removed=L.ordered(labels),
        face_boxes=face_boxes,
        faces_blurred=faces_blurred,
        faces_checked=want.faces,
        lossless=lossless and not blurred,
        text_boxes=text_boxes,
        text_checked=want.text,
        text_blurred=text_blurred,
    )
