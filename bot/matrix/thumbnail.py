"""The thumbnail posted with a clean image, so clients draw the tile without fetching
the full photo (on a phone in Element that is several megabytes per tile).

Made with Pillow from the already-sanitized image only (its pixels, blurred where the
sanitizer blurred them), never from what the GP uploaded and never from a thumbnail
embedded in a file: an embedded preview can show what the main picture no longer does.
The result is a fresh baseline JPEG with no metadata at all (no EXIF, XMP, ICC or
comment; the orientation is applied to the pixels). Runs in a worker thread while the
clean image itself is encrypted and uploaded.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageOps

#: the largest thumbnail: what Element's own clients make for the tiles they draw
MAX_SIZE = (800, 600)
QUALITY = 80


@dataclass(frozen=True)
class ThumbnailImage:
    data: bytes
    width: int
    height: int
    mimetype: str = "image/jpeg"


def make_thumbnail(clean: bytes, max_size: tuple[int, int] = MAX_SIZE) -> ThumbnailImage | None:
    """A JPEG thumbnail of ``clean`` within ``max_size``, or None when the image already
    fits (clients then draw the image itself)."""
    with Image.open(io.BytesIO(clean)) as src:
        sideways = src.getexif().get(0x0112, 1) in (5, 6, 7, 8)
        shown = (src.height, src.width) if sideways else src.size
        if shown[0] <= max_size[0] and shown[1] <= max_size[1]:
            return None
        scale = min(max_size[0] / shown[0], max_size[1] / shown[1])
        final = (max(1, round(shown[0] * scale)), max(1, round(shown[1] * scale)))
        # JPEG: libjpeg decodes at 1/2, 1/4 or 1/8 scale (the coarsest that still gives
        # the final size) for a fraction of the work of decoding every pixel
        src.draft("RGB", (final[1], final[0]) if sideways else final)
        im = ImageOps.exif_transpose(src)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        im = Image.new("RGB", rgba.size, (255, 255, 255))
        im.paste(rgba, mask=rgba.getchannel("A"))
    elif im.mode != "RGB":
        im = im.convert("RGB")
    if im.size != final:
        im = im.resize(final, Image.Resampling.BICUBIC)
    # a new image from the pixels alone: nothing of the source's info can follow
    pixels = Image.frombytes("RGB", im.size, im.tobytes())
    out = io.BytesIO()
    pixels.save(out, "JPEG", quality=QUALITY, optimize=True)
    return ThumbnailImage(out.getvalue(), pixels.width, pixels.height)
