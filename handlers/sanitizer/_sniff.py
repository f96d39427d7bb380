"""Decide what a file is from its first bytes (never from its name)."""
from __future__ import annotations

from ._types import ImageRefused

_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1", b"mif2"}
_AVIF_BRANDS = {b"avif", b"avis"}

SUPPORTED = "please send a JPEG, PNG, WebP, TIFF, HEIC or GIF photo"


def _not_image(what: str) -> ImageRefused:
    return ImageRefused("not_image", f"That file is not an image (it looks like {what}); {SUPPORTED}.")


def sniff(data: bytes) -> str:
    """Return one of jpeg, png, gif, webp, tiff, heif; or raise ImageRefused."""
    head = data[:64]
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[4:8] == b"ftyp":
        brands = {head[8:12]} | {head[i:i + 4] for i in range(16, min(len(head), 8 + int.from_bytes(head[:4], "big")), 4)}
        if brands & _HEIF_BRANDS:
            return "heif"
        if brands & _AVIF_BRANDS:
            raise ImageRefused("unsupported_format", f"AVIF images are not supported yet; {SUPPORTED}.")
        return _raise(_not_image("a video"))
    if head[:4] == b"%PDF" or b"%PDF-" in data[:1024]:
        raise _not_image("a PDF")
    if head[:4] == b"PK\x03\x04":
        raise _not_image("a ZIP archive or office document")
    if head[:8] == b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1":
        raise _not_image("an old-style office document")
    text = data[:2048].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if b"<svg" in text:
        raise _not_image("an SVG drawing")
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in text:
        raise _not_image("a web page (HTML)")
    if text.startswith(b"<?xml"):
        raise _not_image("an XML document")
    if head[:2] == b"BM" or head[:4] in (b"\x00\x00\x01\x00", b"8BPS") or head[:4] == b"\xff\x4f\xff\x51" or head[4:12] == b"jP  \r\n\x87\n":
        raise ImageRefused("unsupported_format", f"That image format is not supported; {SUPPORTED}.")
    raise ImageRefused("not_image", f"That file is not a supported image; {SUPPORTED}.")


def _raise(exc: ImageRefused) -> str:
    raise exc
