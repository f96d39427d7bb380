"""Keep the colours of an ICC profile, drop its words.

An embedded ICC profile matters for a clinical photo: phones tag their photos
with a wide-gamut profile (e.g. Display P3) and dropping it makes skin tones
and redness render less saturated. But a profile can also carry free text
(description, copyright, device manufacturer/model descriptions, metadata
dictionaries) and header fields naming the device and creator. We rebuild
the profile with only colourimetric tags whose type we recognise, blank the
header's identifying fields, and add a neutral description and copyright.
"""
from __future__ import annotations

import struct

# tag signature -> allowed tag types
_KEEP: dict[bytes, tuple[bytes, ...]] = {}
for _sig in (b"wtpt", b"bkpt", b"rXYZ", b"gXYZ", b"bXYZ", b"lumi"):
    _KEEP[_sig] = (b"XYZ ",)
for _sig in (b"rTRC", b"gTRC", b"bTRC", b"kTRC"):
    _KEEP[_sig] = (b"curv", b"para")
_KEEP[b"chad"] = (b"sf32",)
_KEEP[b"chrm"] = (b"chrm",)
_KEEP[b"cicp"] = (b"cicp",)
for _sig in (b"A2B0", b"A2B1", b"A2B2", b"B2A0", b"B2A1", b"B2A2"):
    _KEEP[_sig] = (b"mft1", b"mft2", b"mAB ", b"mBA ")

_CLASSES = (b"mntr", b"scnr", b"prtr", b"spac")
_SPACES = (b"RGB ", b"GRAY", b"CMYK")
_TEXT = "Colour profile (sanitised)"


def _text_tag(text: str, v4: bool) -> bytes:
    if v4:
        enc = text.encode("utf-16-be")
        return b"mluc" + b"\0" * 4 + struct.pack(">II", 1, 12) + b"enUS" + struct.pack(">II", len(enc), 28) + enc
    asc = text.encode("ascii") + b"\0"
    return b"desc" + b"\0" * 4 + struct.pack(">I", len(asc)) + asc + struct.pack(">II", 0, 0) + b"\0\0" + b"\0" + b"\0" * 67


def _copyright_tag(v4: bool) -> bytes:
    if v4:
        return _text_tag("No copyright, use freely", True)
    return b"text" + b"\0" * 4 + b"No copyright, use freely\0"


def sanitize_icc(profile: bytes) -> bytes | None:
    """Return a rebuilt profile, or None when it is unusable (then it is dropped)."""
    if len(profile) < 132 or profile[36:40] != b"acsp":
        return None
    size = struct.unpack_from(">I", profile, 0)[0]
    if size > len(profile) or size < 132:
        return None
    profile = profile[:size]
    if profile[12:16] not in _CLASSES or profile[16:20] not in _SPACES:
        return None
    v4 = profile[8] >= 4
    count = struct.unpack_from(">I", profile, 128)[0]
    if count > 200 or 132 + 12 * count > size:
        return None
    kept: list[tuple[bytes, bytes]] = []
    for i in range(count):
        sig, off, ln = struct.unpack_from(">4sII", profile, 132 + 12 * i)
        types = _KEEP.get(sig)
        if types is None or ln < 8 or off + ln > size:
            continue
        body = profile[off:off + ln]
        if body[:4] not in types:
            continue
        kept.append((sig, body))
    if profile[16:20] == b"GRAY":
        needed = (b"kTRC",)
    elif profile[16:20] == b"RGB ":
        needed = (b"rXYZ", b"gXYZ", b"bXYZ", b"rTRC", b"gTRC", b"bTRC") if not any(s == b"A2B0" for s, _ in kept) else (b"A2B0",)
    else:
        needed = (b"A2B0",)
    have = {s for s, _ in kept}
    if not all(n in have for n in needed):
        return None
    kept.append((b"desc", _text_tag(_TEXT, v4)))
    kept.append((b"cprt", _copyright_tag(v4)))

    header = bytearray(profile[:128])
    for start, end in ((4, 8), (24, 36), (40, 48), (48, 64), (80, 128)):
        header[start:end] = b"\0" * (end - start)
    table = bytearray(struct.pack(">I", len(kept)))
    data = bytearray()
    base = 128 + 4 + 12 * len(kept)
    offsets: dict[bytes, int] = {}
    for sig, body in kept:
        if body in offsets:  # shared data (e.g. identical TRCs) stays shared
            off = offsets[body]
        else:
            while (base + len(data)) % 4:
                data += b"\0"
            off = base + len(data)
            offsets[body] = off
            data += body
        table += struct.pack(">4sII", sig, off, len(body))
    while (base + len(data)) % 4:
        data += b"\0"
    out = header + table + data
    struct.pack_into(">I", out, 0, len(out))
    return bytes(out)


def fits_mode(profile: bytes | None, mode: str) -> bool:
    """Whether a profile describes pixels of this Pillow mode (a CMYK profile on RGB pixels would be wrong)."""
    if not profile or len(profile) < 20:
        return False
    space = profile[16:20]
    if mode in ("RGB", "RGBA", "RGBX"):
        return space == b"RGB "
    if mode in ("L", "LA", "1", "I;16", "I", "P"):
        return space == b"GRAY"
    if mode == "CMYK":
        return space == b"CMYK"
    return False
