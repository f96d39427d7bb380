"""Lossless JPEG sanitising: a marker-segment filter.

We walk the segment structure and rebuild the file from only what a decoder
needs: SOI, DQT, DHT, DAC, SOFn, DRI, SOS + entropy-coded data, EOI. Every
kept table segment is validated byte for byte against its declared layout,
so a mislabelled segment cannot smuggle text through. Everything else (APPn,
COM, anything after EOI) is dropped, except that we write fresh minimal
versions of the three markers that change how pixels are decoded or shown:

* JFIF APP0 (when the input had one): version and pixel density only, no
  thumbnail. Its presence tells libjpeg the colour space, so it must stay.
* Adobe APP14 (when the input had one): only the colour-transform byte,
  which decides YCbCr/RGB and YCCK/CMYK decoding.
* EXIF APP1 holding only Orientation, when the photo is rotated (2..8).

ICC profiles are kept with their colours but without their text (_icc.py).
The entropy-coded data is copied untouched, so decoded pixels are identical.
"""
from __future__ import annotations

import re
import struct

from . import _types as L
from ._exif import inspect_tiff, minimal_exif_app1
from ._icc import sanitize_icc
from ._types import ImageRefused, Limits

# The end of entropy-coded data: 0xFF followed by anything except a stuffed
# zero or a restart marker.
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7]")

_SOF_DECODABLE = {0xC0, 0xC1, 0xC2, 0xC9, 0xCA}  # what libjpeg-turbo decodes
_SOF_ALL = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_ICC_SIG = b"ICC_PROFILE\x00"
_XMP_SIGS = (b"http://ns.adobe.com/xap/1.0/\x00", b"http://ns.adobe.com/xmp/extension/\x00")
_MAX_ICC = 4 * 1024 * 1024
_MAX_SEGMENTS = 4096
# Cameras write 1 scan (baseline) or ~10 (progressive). Each scan makes the decoder walk
# every block of the picture again: 4,000 tiny scans once cost 14 s and 393 MB to decode.
MAX_SCANS = 64


def _truncated() -> ImageRefused:
    return ImageRefused("truncated", "That image is incomplete (the file was cut short); please send it again.")


def _corrupt(why: str = "") -> ImageRefused:
    return ImageRefused("corrupt", "That image is damaged and cannot be read; please send it again or send a different photo.")


class JpegInfo:
    __slots__ = ("width", "height", "components", "orientation", "sof", "progressive")


def _check_dqt(p: bytes) -> None:
    i = 0
    while i < len(p):
        pq, tq = p[i] >> 4, p[i] & 15
        if pq > 1 or tq > 3:
            raise _corrupt("dqt")
        i += 1 + 64 * (pq + 1)
    if i != len(p) or not p:
        raise _corrupt("dqt")


def _check_dht(p: bytes) -> None:
    i = 0
    while i < len(p):
        tc, th = p[i] >> 4, p[i] & 15
        if tc > 1 or th > 3 or i + 17 > len(p):
            raise _corrupt("dht")
        n = sum(p[i + 1:i + 17])
        if n > 256:
            raise _corrupt("dht")
        i += 17 + n
    if i != len(p) or not p:
        raise _corrupt("dht")


def sanitize_jpeg(data: bytes, limits: Limits) -> tuple[bytes, JpegInfo, list[str]]:
    """Return (clean JPEG bytes, info, removed labels). Raises ImageRefused."""
    n = len(data)
    labels: list[str] = []
    kept: list[bytes | memoryview] = []
    mv = memoryview(data)
    jfif: bytes | None = None
    adobe: bytes | None = None
    icc_chunks: dict[int, bytes] = {}
    icc_total = 0
    icc_bad = False
    orientation = 1
    exif_seen = False
    info = JpegInfo()
    info.sof = None
    scans = 0
    segments = 0
    pos = 2
    while True:
        if pos >= n:
            raise _truncated()
        segments += 1
        if segments > _MAX_SEGMENTS:  # real files have tens; millions would just burn CPU
            raise _corrupt("too many segments")
        if data[pos] != 0xFF:
            raise _corrupt("expected a marker")
        while pos < n and data[pos] == 0xFF:
            pos += 1
        if pos >= n:
            raise _truncated()
        marker = data[pos]
        pos += 1
        if marker == 0xD9:  # EOI
            break
        if marker in (0x00, 0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            raise _corrupt("unexpected marker")
        if pos + 2 > n:
            raise _truncated()
        length = (data[pos] << 8) | data[pos + 1]
        if length < 2:
            raise _corrupt("bad length")
        end = pos + length
        if end > n:
            raise _truncated()
        payload = data[pos + 2:end] if marker != 0xDA else None
        seg = mv[pos - 2:end]  # FF + marker + length + payload (fill bytes dropped)

        if 0xE0 <= marker <= 0xEF or marker == 0xFE:
            p = data[pos + 2:end]
            if marker == 0xFE:
                labels.append(L.COMMENTS)
            elif marker == 0xE0 and p[:5] == b"JFIF\x00" and len(p) >= 14:
                if jfif is None:
                    jfif = b"JFIF\x00" + p[5:12] + b"\x00\x00"
                if p[12] or p[13] or len(p) > 14:
                    labels.append(L.THUMBNAIL)
            elif marker == 0xE0 and p[:5] == b"JFXX\x00":
                labels.append(L.THUMBNAIL)
            elif marker == 0xE1 and p[:6] == b"Exif\x00\x00":
                tl, o = inspect_tiff(p[6:])
                labels.extend(tl)
                if not exif_seen:
                    exif_seen = True
                    orientation = o
            elif marker == 0xE1 and p.startswith(_XMP_SIGS):
                labels.append(L.XMP)
            elif marker == 0xE2 and p[:12] == _ICC_SIG and len(p) >= 14:
                icc_total += len(p) - 14
                if icc_total > _MAX_ICC or p[12] in icc_chunks:
                    icc_bad = True
                else:
                    icc_chunks[p[12]] = p[14:]
            elif marker == 0xE2 and p[:4] == b"MPF\x00":
                labels.append(L.MPF)
            elif marker == 0xED:
                labels.append(L.IPTC)
            elif marker == 0xEE and p[:5] == b"Adobe" and len(p) >= 12:
                if adobe is None:
                    adobe = b"Adobe" + p[5:7] + b"\x00\x00\x00\x00" + p[11:12]
            else:
                labels.append(L.APP_SEGMENTS)
            pos = end
            continue

        if marker == 0xDB:
            _check_dqt(payload)
        elif marker == 0xC4:
            _check_dht(payload)
        elif marker == 0xCC:
            if len(payload) % 2 or not payload:
                raise _corrupt("dac")
        elif marker == 0xDD:
            if length != 4:
                raise _corrupt("dri")
        elif marker in _SOF_ALL:
            if info.sof is not None:
                raise _corrupt("two frames")
            if marker not in _SOF_DECODABLE:
                raise ImageRefused("unsupported_format", "That kind of JPEG (lossless or hierarchical) is not supported; please send an ordinary photo.")
            if len(payload) < 6:
                raise _corrupt("sof")
            prec, h, w, nf = payload[0], (payload[1] << 8) | payload[2], (payload[3] << 8) | payload[4], payload[5]
            if len(payload) != 6 + 3 * nf or nf not in (1, 3, 4) or prec not in (8, 12):
                raise _corrupt("sof")
            if w == 0 or h == 0:
                raise _corrupt("sof size")
            if w * h > limits.max_pixels:
                raise too_many_pixels(w, h, limits)
            info.sof, info.width, info.height, info.components = marker, w, h, nf
            info.progressive = marker in (0xC2, 0xCA)
        elif marker == 0xDA:
            if info.sof is None:
                raise _corrupt("scan before frame")
            ns = data[pos + 2] if pos + 2 < n else 0
            if length != 6 + 2 * ns or ns == 0 or ns > 4:
                raise _corrupt("sos")
            m = _SCAN_END.search(data, end)
            if m is None:
                raise _truncated()
            scans += 1
            if scans > MAX_SCANS:
                raise _corrupt("too many scans")
            kept.append(seg)
            kept.append(mv[end:m.start()])
            pos = m.start()
            continue
        else:
            raise _corrupt("unknown marker")
        kept.append(seg)
        pos = end

    if info.sof is None or scans == 0:
        raise _corrupt("no image data")
    if pos < n:
        labels.append(L.TRAILER)

    head = [b"\xff\xd8"]
    if jfif is not None:
        head.append(b"\xff\xe0\x00\x10" + jfif)
    if orientation != 1:
        head.append(minimal_exif_app1(orientation))
    if icc_chunks or icc_bad:
        head.extend(_icc_segments(icc_chunks, icc_bad, labels))
    if adobe is not None:
        head.append(b"\xff\xee\x00\x0e" + adobe)
    info.orientation = orientation
    out = b"".join(head + kept + [b"\xff\xd9"])
    return out, info, labels


def _icc_segments(chunks: dict[int, bytes], bad: bool, labels: list[str]) -> list[bytes]:
    profile = None
    if not bad and chunks and sorted(chunks) == list(range(1, len(chunks) + 1)):
        profile = sanitize_icc(b"".join(chunks[i] for i in range(1, len(chunks) + 1)))
    if profile is None:
        labels.append(L.ICC_DROPPED)
        return []
    labels.append(L.ICC_TEXT)
    return icc_app2_segments(profile)


def icc_app2_segments(profile: bytes) -> list[bytes]:
    size = 65519
    parts = [profile[i:i + size] for i in range(0, len(profile), size)]
    return [
        b"\xff\xe2" + struct.pack(">H", len(part) + 16) + _ICC_SIG + bytes((i + 1, len(parts))) + part
        for i, part in enumerate(parts)
    ]


def too_many_pixels(w: int, h: int, limits: Limits) -> ImageRefused:
    return ImageRefused(
        "too_many_pixels",
        f"That image is too large to process ({w}x{h} pixels, limit {limits.max_pixels // 1_000_000} megapixels).",
    )
