"""The thumbnail a chat client draws instead of the whole photo (Element: the tile).

Made only from clean pixels, already upright, never from a preview embedded in the upload (an
embedded preview can show what the main picture no longer does). A fresh baseline JPEG with no
metadata at all. ``bot/matrix/thumbnail.py`` makes one from the clean bytes; the sanitizer
makes one from the decode the face/text check already did, which costs no second decode.
"""
from __future__ import annotations

import io

#: the largest thumbnail: what Element's own clients make for the tiles they draw
MAX_SIZE = (800, 600)
QUALITY = 80


class Thumbnail:
    """JPEG bytes of a thumbnail and its size; its ``repr`` never prints the bytes."""

    __slots__ = ("data", "width", "height", "mimetype")

    def __init__(self, data: bytes, width: int, height: int, mimetype: str = "image/jpeg") -> None:
        self.data, self.width, self.height, self.mimetype = data, width, height, mimetype

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Thumbnail) and (self.data, self.width, self.height) == (
            other.data, other.width, other.height)

    def __repr__(self) -> str:
        return f"Thumbnail({self.width}x{self.height}, {len(self.data)} bytes)"


def target_size(shown: tuple[int, int], max_size: tuple[int, int] = MAX_SIZE) -> tuple[int, int] | None:
    """The thumbnail's size for a picture of ``shown`` (width, height as displayed), or None
    when it already fits (clients then draw the image itself)."""
    if shown[0] <= max_size[0] and shown[1] <= max_size[1]:
        return None
    scale = min(max_size[0] / shown[0], max_size[1] / shown[1])
    return max(1, round(shown[0] * scale)), max(1, round(shown[1] * scale))


def encode(upright, final: tuple[int, int]) -> Thumbnail:
    """``upright``: a PIL image as displayed, any mode; returns the JPEG thumbnail at ``final``."""
    from PIL import Image

    im = upright
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        im = Image.new("RGB", rgba.size, (255, 255, 255))
        im.paste(rgba, mask=rgba.getchannel("A"))
    elif im.mode != "RGB":
        im = im.convert("RGB")
    if im.size != final:
        # area averaging: what OpenCV advises for shrinking, and half the time of bicubic
        # here (6 against 12 ms for the 1008 px decode of a 12 MP photo, which the face and
        # text check waits for when it makes the thumbnail)
        im = im.resize(final, Image.Resampling.BOX)
    # a new image from the pixels alone: nothing of the source's info can follow
    pixels = Image.frombytes("RGB", im.size, im.tobytes())
    out = io.BytesIO()
    pixels.save(out, "JPEG", quality=QUALITY, optimize=True)
    return Thumbnail(out.getvalue(), pixels.width, pixels.height)
