"""EXIF orientation value -> the PIL transpose that shows the image upright."""
from __future__ import annotations


def upright(im, orientation: int):
    from PIL import Image

    method = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }.get(orientation)
    return im.transpose(method) if method is not None else im


# For each orientation: displayed (u, v) in 0..1 -> stored (s, t) in 0..1.
_TO_STORED = {
    1: lambda u, v: (u, v),
    2: lambda u, v: (1 - u, v),
    3: lambda u, v: (1 - u, 1 - v),
    4: lambda u, v: (u, 1 - v),
    5: lambda u, v: (v, u),
    6: lambda u, v: (v, 1 - u),
    7: lambda u, v: (1 - v, 1 - u),
    8: lambda u, v: (1 - v, u),
}


def stored_box(box, orientation: int):
    """A (x, y, w, h) box, as fractions of the displayed image, in the stored image's frame."""
    x, y, w, h = box
    f = _TO_STORED.get(orientation, _TO_STORED[1])
    (s0, t0), (s1, t1) = f(x, y), f(x + w, y + h)
    return (min(s0, s1), min(t0, t1), abs(s1 - s0), abs(t1 - t0))


def with_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Put our minimal Orientation-only EXIF into a JPEG we just encoded (after its JFIF APP0)."""
    if orientation == 1:
        return bytes(jpeg)
    from ._exif import minimal_exif_app1

    at = 2
    if jpeg[2:4] == b"\xff\xe0":
        at = 4 + ((jpeg[4] << 8) | jpeg[5])
    return b"".join((jpeg[:at], minimal_exif_app1(orientation), jpeg[at:]))
