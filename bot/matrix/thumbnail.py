"""The thumbnail posted with a clean image, so clients draw the tile without fetching
the full photo (on a phone in Element that is several megabytes per tile).

Made with Pillow from the already-sanitized image only (its pixels, blurred where the
sanitizer blurred them), never from what the GP uploaded and never from a thumbnail
embedded in a file: an embedded preview can show what the main picture no longer does.
The result is a fresh baseline JPEG with no metadata at all (no EXIF, XMP, ICC or
comment; the orientation is applied to the pixels). Size rules and encoding are the
sanitizer's (``handlers/sanitizer/_thumb.py``), which also makes one from the decode its
face/text check already did; this one decodes the clean bytes and runs in a worker thread
while the clean image itself is encrypted and uploaded.
"""
from __future__ import annotations

import io

from PIL import Image, ImageOps

from handlers.sanitizer._thumb import MAX_SIZE, QUALITY, Thumbnail, encode, target_size

ThumbnailImage = Thumbnail
__all__ = ["MAX_SIZE", "QUALITY", "ThumbnailImage", "make_thumbnail"]


def make_thumbnail(clean: bytes, max_size: tuple[int, int] = MAX_SIZE) -> ThumbnailImage | None:
    """A JPEG thumbnail of ``clean`` within ``max_size``, or None when the image already
    fits (clients then draw the image itself)."""
    with Image.open(io.BytesIO(clean)) as src:
        sideways = src.getexif().get(0x0112, 1) in (5, 6, 7, 8)
        shown = (src.height, src.width) if sideways else src.size
        final = target_size(shown, max_size)
        if final is None:
            return None
        # JPEG: libjpeg decodes at 1/2, 1/4 or 1/8 scale (the coarsest that still gives
        # the final size) for a fraction of the work of decoding every pixel
        src.draft("RGB", (final[1], final[0]) if sideways else final)
        im = ImageOps.exif_transpose(src)
    return encode(im, final)
