"""The image sanitizer: bytes in, clean bytes + report out (no I/O, no clock).

    from handlers.sanitizer import sanitize, ImageRefused, Limits, SanitizedImage

JPEG is cleaned losslessly by a marker-segment filter (pixels stay
bit-identical); other formats are decoded and re-encoded without metadata.
See docs/sanitizer.md for the design decisions and measured speed.
"""
from ._core import check_keeps_bytes, sanitize
from ._types import DetectorUnavailable, ImageRefused, Limits, SanitizedImage

__all__ = ["sanitize", "check_keeps_bytes", "DetectorUnavailable", "ImageRefused", "Limits", "SanitizedImage"]
