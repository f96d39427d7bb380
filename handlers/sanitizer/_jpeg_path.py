"""JPEG: lossless filter, then (optionally) faces on a small draft decode."""
from __future__ import annotations

from io import BytesIO

from . import _types as L
from ._types import Limits, SanitizedImage
from .jpeg import sanitize_jpeg
from .jpeg import too_many_pixels as too_many_pixels_error  # noqa: F401 (shared message)


def sanitize_jpeg_image(data: bytes, limits: Limits, detect: bool, blur: bool) -> SanitizedImage:
    clean, info, labels = sanitize_jpeg(data, limits)
    w, h = info.width, info.height
    if info.orientation >= 5:
        w, h = h, w
    faces: list = []
    lossless = True
    blurred = False
    if detect:
        from PIL import Image

        from . import _faces
        from ._orient import stored_box, upright, with_orientation

        im = Image.open(BytesIO(clean))
        # libjpeg decodes straight to 1/2, 1/4 or 1/8 scale: only a fraction of the IDCT work.
        s = min(1.0, _faces.DETECT_MAX_SIDE / max(info.width, info.height))
        im.draft("L", (max(1, int(info.width * s)), max(1, int(info.height * s))))
        im = upright(im.convert("L"), info.orientation)
        faces = _faces.detect(im)
        del im
        if blur and faces:
            from ._icc import fits_mode
            from ._jpeg_icc import icc_profile_of

            full = Image.open(BytesIO(clean))
            full.load()
            mode = "RGB" if full.mode not in ("L",) else "L"
            if full.mode != mode:  # convert() to the same mode would copy ~150 MB for 48 MP
                full = full.convert(mode)
            # Blur in the stored orientation (boxes mapped back) and keep the Orientation tag:
            # rotating the pixels would hold a second full-size copy (~150 MB more at 48 MP).
            _faces.blur(full, [stored_box(b, info.orientation) for b in faces])
            out = BytesIO()
            icc = icc_profile_of(clean)
            if not fits_mode(icc, full.mode):  # e.g. a CMYK profile after CMYK -> RGB
                icc = None
            full.save(out, "JPEG", quality=92, optimize=False, **({"icc_profile": icc} if icc else {}))
            del full
            clean = with_orientation(out.getbuffer(), info.orientation)
            out.close()
            lossless, blurred = False, True
            labels.append(L.FACES_BLURRED)
    return SanitizedImage(
        data=clean,
        media_type="image/jpeg",
        extension="jpg",
        width=w,
        height=h,
        removed=L.ordered(labels),
        faces=len(faces),
        faces_blurred=blurred,
        faces_checked=detect,
        lossless=lossless,
    )
