"""Entry point: size checks, format sniffing, dispatch (the face/text check runs inside each path)."""
from __future__ import annotations

from ._sniff import sniff
from ._types import DetectorUnavailable, ImageRefused, Limits, SanitizedImage, Wanted

_DEFAULT_LIMITS = Limits()
# Errors decoders raise on damaged input. Anything else reaching sanitize() is still turned
# into a refusal (the user never sees a traceback), but tests set _STRICT to surface it.
_DECODER_ERRORS = (OSError, SyntaxError, ValueError, EOFError, RuntimeError)
_STRICT = False


def check_keeps_bytes(data: bytes) -> bool:
    """True when the identifiability check, if it finds nothing to blur, returns exactly the
    bytes ``sanitize(data, detect_faces=False)`` returns: a JPEG, whose entropy data is copied
    and never re-encoded unless something is blurred. A caller may then start sending those
    bytes (encrypted) while the check runs. Decided from the first bytes only."""
    return bytes(data[:3]) == b"\xff\xd8\xff"


def sanitize(
    data: bytes,
    *,
    limits: Limits = _DEFAULT_LIMITS,
    blur_faces: bool = False,
    detect_faces: bool = True,
    detect_text: bool = False,
    blur_text: bool = False,
    thumbnail: bool = False,
) -> SanitizedImage:
    """Strip everything but the pixels from an image.

    ``detect_faces`` / ``detect_text`` run the identifiability check (faces; text regions:
    labels, wristbands, writing), ``blur_faces`` / ``blur_text`` also blur what was found
    (and imply the check). ``thumbnail``: also return ``result.thumbnail`` (800x600 at most)
    when the check's own decode gives it for free (a JPEG in which nothing was blurred);
    otherwise it stays None and the caller makes one from the bytes. Raises ImageRefused (one plain sentence, ``.reason`` a short
    code) for anything we will not pass on. Never raises anything else for bad input, but
    raises ``DetectorUnavailable`` if a check was asked for and its model cannot be loaded.
    """
    if not isinstance(data, bytes):
        if not isinstance(data, (bytearray, memoryview)):
            raise TypeError("sanitize() takes bytes")
        data = bytes(data)
    if not data:
        raise ImageRefused("empty", "That file is empty; please send the photo again.")
    if len(data) > limits.max_bytes:
        raise ImageRefused(
            "too_large",
            f"That file is too big ({len(data) / 1e6:.1f} MB, limit {limits.max_bytes / 1e6:.0f} MB); please send a smaller photo.",
        )
    kind = sniff(data)
    want = Wanted(detect_faces, detect_text, blur_faces, blur_text)
    try:
        if kind == "jpeg":
            from ._jpeg_path import sanitize_jpeg_image

            result = sanitize_jpeg_image(data, limits, want, thumbnail=thumbnail)
        else:
            from ._reencode import sanitize_other

            result = sanitize_other(data, kind, limits, want)
    except ImageRefused:
        raise
    except DetectorUnavailable:  # our models, not the user's file
        raise
    except MemoryError:
        raise ImageRefused("too_many_pixels", "That image is too large to process; please send a smaller photo.") from None
    except Exception as exc:  # a decoder choked on something our checks let through
        if _STRICT and not isinstance(exc, _DECODER_ERRORS):
            raise  # tests run strict, so a bug of ours is not hidden as "corrupt"
        raise ImageRefused("corrupt", "That image is damaged and cannot be read; please send it again or send a different photo.") from None
    return result
