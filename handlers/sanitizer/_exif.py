"""A tiny, bounds-checked EXIF (TIFF structure) reader.

It only answers two questions: which kinds of identifying data are present
(for the "removed" report) and what the Orientation is. It never raises on
malformed input: anything it cannot read is reported as generic EXIF data.
It also writes the one EXIF we emit: a minimal block holding only Orientation.
"""
from __future__ import annotations

import struct

from . import _types as L

_GPS_IFD, _EXIF_IFD, _INTEROP_IFD = 0x8825, 0x8769, 0xA005
ORIENTATION = 0x0112

_TAG_LABELS: dict[int, str] = {}
for _tags, _label in (
    ((0x010F, 0x0110, 0xA433, 0xA434, 0xC614), L.DEVICE),  # Make, Model, LensMake, LensModel, UniqueCameraModel
    ((0xA431, 0xA435, 0xC62F), L.SERIAL),  # BodySerialNumber, LensSerialNumber, CameraSerialNumber
    ((0x0132, 0x9003, 0x9004, 0x9010, 0x9011, 0x9012, 0x9290, 0x9291, 0x9292), L.CAPTURE_TIME),
    ((0x013B, 0x8298, 0xA430, 0x9C9D), L.AUTHOR),  # Artist, Copyright, CameraOwnerName, XPAuthor
    ((0x010E, 0x9286, 0x9C9B, 0x9C9C, 0x9C9E, 0x9C9F), L.COMMENTS),  # ImageDescription, UserComment, XP*
    ((0x927C,), L.MAKER_NOTES),
    ((0x0131, 0x000B), L.SOFTWARE),
    ((0x010D, 0x011D), L.COMMENTS),  # DocumentName, PageName
    ((0x013C,), L.DEVICE),  # HostComputer
    ((0x02BC,), L.XMP),  # XMP packet inside TIFF
    ((0x83BB, 0x8649, 0x935C), L.IPTC),  # IPTC, Photoshop, ImageSourceData  # Software, ProcessingSoftware
    ((0xA420,), L.UNIQUE_ID),
    ((0x0201, 0x0202), L.THUMBNAIL),
):
    for _t in _tags:
        _TAG_LABELS[_t] = _label

_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
_MAX_IFDS = 16
_MAX_ENTRIES = 1000


def tag_label(tag: int) -> str:
    return _TAG_LABELS.get(tag, L.OTHER_EXIF)


# Tags that describe the pixels of a TIFF file itself (not metadata worth reporting).
TIFF_STRUCTURE = frozenset({254, 255, 256, 257, 258, 259, 262, 263, 266, 273, 277, 278, 279, 280, 281, 282, 283,
                            284, 296, 305, 317, 318, 319, 320, 322, 323, 324, 325, 338, 339, 340, 341, 530, 531,
                            532, 0x8773})


def inspect_tiff(buf: bytes, skip: frozenset[int] = frozenset()) -> tuple[list[str], int]:
    """Labels of what a TIFF-structured EXIF block holds, and its Orientation (1 if none).

    ``skip`` lists IFD0 tags not to report (the image structure of a TIFF file).
    """
    labels: list[str] = []
    orientation = 1
    try:
        if len(buf) < 8 or buf[:4] not in (b"II*\x00", b"MM\x00*"):
            return [L.OTHER_EXIF], 1
        bo = "<" if buf[:2] == b"II" else ">"
        u16 = struct.Struct(bo + "H").unpack_from
        u32 = struct.Struct(bo + "I").unpack_from
        todo: list[tuple[int, str]] = [(u32(buf, 4)[0], "ifd0")]
        seen: set[int] = set()
        while todo and len(seen) < _MAX_IFDS:
            off, kind = todo.pop(0)
            if off in seen or off < 8 or off + 2 > len(buf):
                continue
            seen.add(off)
            count = u16(buf, off)[0]
            if count > _MAX_ENTRIES or off + 2 + 12 * count > len(buf):
                labels.append(L.OTHER_EXIF)
                continue
            if kind == "gps" and count:
                labels.append(L.GPS)
            if kind == "ifd1" and count:
                labels.append(L.THUMBNAIL)
            for i in range(count):
                e = off + 2 + 12 * i
                tag, typ, n = u16(buf, e)[0], u16(buf, e + 2)[0], u32(buf, e + 4)[0]
                if kind in ("ifd0", "exif"):
                    if tag == _GPS_IFD:
                        todo.append((u32(buf, e + 8)[0], "gps"))
                        continue
                    if tag == _EXIF_IFD:
                        todo.append((u32(buf, e + 8)[0], "exif"))
                        continue
                    if tag == _INTEROP_IFD:
                        continue
                    if tag == ORIENTATION and kind == "ifd0" and typ == 3 and n == 1:
                        orientation = u16(buf, e + 8)[0]
                        continue
                    if kind == "ifd0" and tag in skip:
                        continue
                    labels.append(tag_label(tag))
            if kind == "ifd0":
                nxt_at = off + 2 + 12 * count
                if nxt_at + 4 <= len(buf):
                    nxt = u32(buf, nxt_at)[0]
                    if nxt:
                        todo.append((nxt, "ifd1"))
    except (struct.error, IndexError):
        labels.append(L.OTHER_EXIF)
    if orientation not in range(1, 9):
        orientation = 1
    return labels, orientation


def minimal_exif_app1(orientation: int) -> bytes:
    """A whole APP1 segment (marker included) carrying only IFD0 Orientation."""
    tiff = b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 1)
    tiff += struct.pack(">HHIHH", ORIENTATION, 3, 1, orientation, 0) + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
