"""JPEG: lossless filter, then (optionally) the face/text check on a small draft decode."""
from __future__ import annotations

from io import BytesIO

from . import _thumb
from . import _types as L
from ._types import Limits, SanitizedImage, Wanted
from .jpeg import sanitize_jpeg
from .jpeg import too_many_pixels as too_many_pixels_error  # noqa: F401 (shared message)


def sanitize_jpeg_image(data: bytes, limits: Limits, want: Wanted, *, thumbnail: bool = False) -> SanitizedImage:
    clean, info, labels = sanitize_jpeg(data, limits)
    w, h = info.width, info.height
    if info.orientation >= 5:
        w, h = h, w
    face_boxes: list = []
    text_boxes: list = []
    lossless = True
    faces_blurred = text_blurred = False
    thumb = None
    if want.faces or want.text:
        import numpy as np
        from PIL import Image

        from . import _detect
        from ._orient import stored_box, upright, with_orientation

        from ._jpeg_split import decode_scaled

        # libjpeg decodes straight to 1/2, 1/4 or 1/8 scale: only a fraction of the IDCT work,
        # and in two pieces at once when restart markers allow (_jpeg_split.py). The decode
        # also serves as the decode check: what libjpeg cannot decode is refused.
        s = min(1.0, _detect.DETECT_SIDE / max(info.width, info.height))
        request = (max(1, int(info.width * s)), max(1, int(info.height * s)))
        im = upright(decode_scaled(clean, request, run_beside=_detect.beside), info.orientation)
        final = _thumb.target_size((w, h)) if thumbnail else None
        made: list = []
        # the thumbnail comes from the same decode (1/4 of a 12 MP photo, 1008 px), made while
        # the text detector finishes; it is dropped below if anything gets blurred
        then = (lambda: made.append(_thumb.encode(im, final))) if final is not None else None
        face_boxes, text_boxes = _detect.check(np.asarray(im), want_faces=want.faces, want_text=want.text, then=then)
        del im
        thumb = made[0] if made else None
        blur_faces = face_boxes if want.blur_faces else []
        blur_text = text_boxes if want.blur_text else []
        to_blur = blur_faces + blur_text
        if to_blur:
            thumb = None  # it shows the pixels before blurring: never used
            from ._icc import fits_mode
            from ._jpeg_icc import icc_profile_of

            full = Image.open(BytesIO(clean))
            full.load()
            mode = "RGB" if full.mode not in ("L",) else "L"
            if full.mode != mode:  # convert() to the same mode would copy ~150 MB for 48 MP
                full = full.convert(mode)
            # Blur in the stored orientation (boxes mapped back) and keep the Orientation tag:
            # rotating the pixels would hold a second full-size copy (~150 MB more at 48 MP).
            _detect.blur(full, [stored_box(b, info.orientation) for b in blur_faces])
            _detect.blur(full, [stored_box(b, info.orientation) for b in blur_text], cells=_detect.TEXT_BLUR_CELLS)
            out = BytesIO()
            icc = icc_profile_of(clean)
            if not fits_mode(icc, full.mode):  # e.g. a CMYK profile after CMYK -> RGB
                icc = None
            full.save(out, "JPEG", quality=92, optimize=False, **({"icc_profile": icc} if icc else {}))
            del full
            clean = with_orientation(out.getbuffer(), info.orientation)
            out.close()
            lossless = False
            faces_blurred = bool(want.blur_faces and face_boxes)
            text_blurred = bool(want.blur_text and text_boxes)
            labels += [L.FACES_BLURRED] * faces_blurred + [L.TEXT_BLURRED] * text_blurred
    return SanitizedImage(
        data=clean,
        media_type="image/jpeg",
        extension="jpg",
        width=w,
        height=h,
        removed=L.ordered(labels),
        face_boxes=face_boxes,
        faces_blurred=faces_blurred,
        faces_checked=want.faces,
        lossless=lossless,
        text_boxes=text_boxes,
        text_checked=want.text,
        text_blurred=text_blurred,
        thumbnail=thumb,
    )
