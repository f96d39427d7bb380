"""Decode a JPEG in two pieces at once when its restart markers allow it.

Why: the identifiability check cannot start before the photo is decoded (at 1/4 scale), and
for a 12 MP photo most of that decode is Huffman decoding, which is serial within one stream.
A restart marker (RSTn) resets the decoder's state (the DC predictions and the bit buffer), so
a stream that has them can be cut at a marker and each piece decoded as a JPEG of its own, on
the other core. Phones commonly write them: the iPhone JPEG in the shared corpus has one
restart interval per row of 16-pixel blocks. Pillow's own encoder (and so the benchmark's
generated photos) writes none, and then the photo is decoded whole, as before.

The cut is made only where a restart interval starts a new row of blocks (MCUs), so each
piece is a complete JPEG of whole rows: the same header with its height changed, then its
share of the entropy-coded data. The second piece's restart markers are renumbered from RST0,
which is what a decoder expects at the start of a stream. Only a scaled decode (1/2, 1/4, 1/8)
is cut: its pixels are exactly those of one decode (tests/sanitizer/test_jpeg_split.py), where
a full-scale decode would smooth the chroma across the cut differently.

Only a single-scan, sequential, 3-component JPEG is cut; anything else returns None and the
caller decodes it whole, which also does the "can libjpeg decode this at all" check.
"""
from __future__ import annotations

import struct
from io import BytesIO

import numpy as np

_SEQUENTIAL = (0xC0, 0xC1)  # baseline and extended sequential, Huffman-coded
_MIN_SHARE = 1 / 3  # a cut further from the middle than this saves too little to be worth it


class _Layout:
    __slots__ = ("sof_at", "width", "height", "mcu_w", "mcu_h", "interval", "scan_at", "scan_end")


def _layout(data: bytes) -> _Layout | None:
    """Where the pieces of a sanitised JPEG are, or None when it cannot be cut."""
    if data[:2] != b"\xff\xd8":
        return None
    lay = _Layout()
    lay.interval, lay.sof_at, components = 0, None, 0
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        length = struct.unpack_from(">H", data, i + 2)[0]
        body = data[i + 4:i + 2 + length]
        if marker in _SEQUENTIAL:
            if lay.sof_at is not None or len(body) < 6:
                return None
            _, lay.height, lay.width, components = struct.unpack_from(">BHHB", body)
            if components != 3 or len(body) != 6 + 3 * components or lay.height == 0:
                return None
            factors = [body[6 + 3 * c + 1] for c in range(components)]
            lay.mcu_w, lay.mcu_h = 8 * max(f >> 4 for f in factors), 8 * max(f & 15 for f in factors)
            lay.sof_at = i
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return None  # progressive, lossless or arithmetic: not cut
        elif marker == 0xDD and length == 4:
            lay.interval = struct.unpack_from(">H", body)[0]
        elif marker == 0xDA:
            if lay.sof_at is None or not body or body[0] != components:
                return None  # one interleaved scan of all components, or nothing
            lay.scan_at = i + 2 + length
            # the sanitiser wrote the file: one scan, then EOI at the very end
            lay.scan_end = len(data) - 2
            if data[-2:] != b"\xff\xd9" or lay.interval == 0:
                return None
            return lay
        i += 2 + length
    return None


def _restart_markers(data: bytes, start: int, end: int) -> np.ndarray:
    """Offsets of every RSTn marker in data[start:end] (0xFF then 0xD0..0xD7; a 0xFF inside
    entropy-coded data is always followed by a stuffed 0x00, so this cannot misread)."""
    a = np.frombuffer(data, np.uint8, count=end - start, offset=start)
    ff = np.flatnonzero(a[:-1] == 0xFF)
    nxt = a[ff + 1]
    return ff[(nxt >= 0xD0) & (nxt <= 0xD7)] + start


def split(data: bytes) -> tuple[bytes, bytes, int, tuple[int, int]] | None:
    """Two JPEGs, the top and bottom of ``data``, with the top one's height and the whole
    picture's (width, height) in pixels; or None when the file has no restart interval that begins a row of
    blocks near the middle."""
    lay = _layout(data)
    if lay is None:
        return None
    per_row = -(-lay.width // lay.mcu_w)
    rows = -(-lay.height // lay.mcu_h)
    # the MCU row nearest the middle at which a restart interval begins
    cuts = [r for r in range(1, rows) if (r * per_row) % lay.interval == 0]
    if not cuts:
        return None
    cut = min(cuts, key=lambda r: abs(2 * r - rows))
    if not rows * _MIN_SHARE <= cut <= rows * (1 - _MIN_SHARE):
        return None
    markers = _restart_markers(data, lay.scan_at, lay.scan_end)
    intervals = -(-rows * per_row // lay.interval)
    if len(markers) != intervals - 1:
        return None  # not the stream its header describes: let the whole decode judge it
    first = cut * per_row // lay.interval  # index of the interval that begins the bottom piece
    at = int(markers[first - 1])  # the marker just before it
    top_h = cut * lay.mcu_h
    header = bytearray(data[:lay.scan_at])

    def with_height(h: int) -> bytes:
        struct.pack_into(">H", header, lay.sof_at + 5, h)
        return bytes(header)

    top = with_height(top_h) + data[lay.scan_at:at] + b"\xff\xd9"
    bottom = bytearray(with_height(lay.height - top_h))
    offset = len(bottom) - (at + 2)
    bottom += data[at + 2:]
    view = np.frombuffer(bottom, np.uint8)
    numbers = markers[first:] + offset + 1
    view[numbers] = 0xD0 + (view[numbers] - 0xD0 + 8 - first % 8) % 8
    del view
    return top, bytes(bottom), top_h, (lay.width, lay.height)


def decode_scaled(data: bytes, request: tuple[int, int], run_beside=None):
    """``data`` decoded to RGB at the DCT scale Pillow's ``draft`` picks for ``request`` (a PIL
    image). ``run_beside(fn, *args)`` runs fn on another thread and returns a future; with it,
    a JPEG that can be cut is decoded as two pieces at once. Whatever goes wrong with the
    pieces, the whole file is decoded instead, so its errors are the usual ones."""
    from PIL import Image

    whole = Image.open(BytesIO(data))
    whole.draft("RGB", request)
    scale = whole.decoderconfig[0] if whole.decoderconfig else 1
    # at full scale the chroma upsampling of the rows beside the cut would differ; such a
    # picture is small (at most ~2x the size asked for) and quick to decode whole anyway
    pieces = split(data) if run_beside is not None and scale > 1 else None
    if pieces is None:
        return whole.convert("RGB")
    top, bottom, top_h, (width, height) = pieces

    def decode(piece: bytes, h: int):
        im = Image.open(BytesIO(piece))
        im.draft("RGB", (max(1, width // scale), max(1, h // scale)))
        if (im.decoderconfig[0] if im.decoderconfig else 1) != scale:
            return None
        return np.asarray(im.convert("RGB"))

    try:
        pending = run_beside(decode, bottom, height - top_h)
        above = decode(top, top_h)
        below = pending.result()
    except Exception:  # noqa: BLE001 - the whole decode below gives the real verdict
        above = below = None
    if above is None or below is None or above.shape[1] != below.shape[1] \
            or above.shape[0] + below.shape[0] != whole.size[1] or above.shape[1] != whole.size[0]:
        return whole.convert("RGB")
    return Image.fromarray(np.concatenate([above, below]), "RGB")
