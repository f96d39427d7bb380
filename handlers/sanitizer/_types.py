"""Public value types of the sanitizer: limits, result and refusal."""
from __future__ import annotations

# Plain classes rather than dataclasses: importing dataclasses (and with it
# inspect) costs ~8 ms, which is a tenth of the sanitize command's start-up.


class Limits:
    """What the sanitizer accepts. Both limits are checked before any pixel is decoded."""

    __slots__ = ("max_bytes", "max_pixels")

    def __init__(self, max_bytes: int = 40 * 1024 * 1024, max_pixels: int = 60_000_000) -> None:
        object.__setattr__(self, "max_bytes", int(max_bytes))
        object.__setattr__(self, "max_pixels", int(max_pixels))

    def __setattr__(self, name, value):
        raise AttributeError("Limits is immutable")

    def __eq__(self, other):
        if not isinstance(other, Limits):
            return NotImplemented
        return (self.max_bytes, self.max_pixels) == (other.max_bytes, other.max_pixels)

    def __hash__(self):
        return hash((self.max_bytes, self.max_pixels))

    def __repr__(self) -> str:
        return f"Limits(max_bytes={self.max_bytes}, max_pixels={self.max_pixels})"


class Wanted:
    """Which checks to run and what to blur (blurring something implies looking for it)."""

    __slots__ = ("faces", "text", "blur_faces", "blur_text")

    def __init__(self, faces: bool, text: bool, blur_faces: bool, blur_text: bool) -> None:
        self.blur_faces, self.blur_text = blur_faces, blur_text
        self.faces, self.text = faces or blur_faces, text or blur_text


class ImageRefused(ValueError):
    """The input is not something we will pass on.

    ``str(exc)`` is one plain sentence meant for the person who sent the file;
    ``exc.reason`` is a short machine code (``not_image``, ``truncated``,
    ``too_large``, ``too_many_pixels``, ``corrupt``, ``empty``,
    ``unsupported_format``).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class DetectorUnavailable(RuntimeError):
    """A face/text model is missing or is not the file we vetted: the check cannot run.
    Not the sender's fault, so never reported to them as a damaged image."""


class SanitizedImage:
    """Clean image bytes and what was done to them.

    ``faces`` / ``text_regions`` count what the identifiability check found; ``face_boxes`` /
    ``text_boxes`` say where, as (x, y, w, h) fractions of the picture as displayed.
    ``faces_checked`` / ``text_checked`` say whether each check ran at all: 0 found by a check
    that did not run means nothing.
    """

    __slots__ = ("data", "media_type", "extension", "width", "height", "removed", "face_boxes", "faces_blurred",
                 "faces_checked", "lossless", "text_boxes", "text_checked", "text_blurred", "thumbnail")

    def __init__(self, data: bytes, media_type: str, extension: str, width: int, height: int,
                 removed: list[str] | None = None, face_boxes: list | None = None, faces_blurred: bool = False,
                 faces_checked: bool = False, lossless: bool = True, text_boxes: list | None = None,
                 text_checked: bool = False, text_blurred: bool = False, thumbnail=None) -> None:
        self.data = data
        self.media_type = media_type
        self.extension = extension
        self.width = width
        self.height = height
        self.removed = list(removed or [])
        self.face_boxes = list(face_boxes or [])
        self.faces_blurred = faces_blurred
        self.faces_checked = faces_checked
        self.lossless = lossless
        self.text_boxes = list(text_boxes or [])
        self.text_checked = text_checked
        self.text_blurred = text_blurred
        #: a ``_thumb.Thumbnail`` of exactly these pixels when one was asked for and came free
        #: with the check's decode (nothing blurred), else None
        self.thumbnail = thumbnail

    @property
    def faces(self) -> int:
        return len(self.face_boxes)

    @property
    def text_regions(self) -> int:
        return len(self.text_boxes)

    def report(self) -> dict:
        """A JSON-able summary (what `referral-bot sanitize --report` prints)."""
        return {
            "media_type": self.media_type,
            "extension": self.extension,
            "width": self.width,
            "height": self.height,
            "bytes": len(self.data),
            "lossless": self.lossless,
            "removed": list(self.removed),
            "faces_checked": self.faces_checked,
            "faces": self.faces,
            "faces_blurred": self.faces_blurred,
            "face_boxes": [[round(v, 4) for v in b] for b in self.face_boxes],
            "text_checked": self.text_checked,
            "text_regions": self.text_regions,
            "text_blurred": self.text_blurred,
            "text_boxes": [[round(v, 4) for v in b] for b in self.text_boxes],
        }

    def __repr__(self) -> str:  # never dump image bytes into a log line
        return (
            f"SanitizedImage(media_type={self.media_type!r}, {self.width}x{self.height}, "
            f"{len(self.data)} bytes, removed={self.removed!r}, faces={self.faces}, "
            f"faces_blurred={self.faces_blurred}, text_regions={self.text_regions}, text_blurred={self.text_blurred})"
        )


# Labels used in SanitizedImage.removed (the chat reply shows them as they are).
GPS = "GPS location"
DEVICE = "device make/model"
SERIAL = "camera serial number"
CAPTURE_TIME = "capture time"
AUTHOR = "author/owner name"
COMMENTS = "comments and descriptions"
MAKER_NOTES = "maker notes"
SOFTWARE = "software name"
UNIQUE_ID = "unique image ID"
THUMBNAIL = "embedded thumbnail"
OTHER_EXIF = "other EXIF camera data"
XMP = "XMP metadata (authorship, edit history)"
IPTC = "IPTC/Photoshop metadata (captions, authorship)"
MPF = "extra embedded images (MPF)"
TRAILER = "trailing data after the image (e.g. motion-photo video)"
APP_SEGMENTS = "other application data segments"
ICC_TEXT = "colour profile text (colours kept)"
ICC_DROPPED = "unusable colour profile"
TEXT_CHUNKS = "text notes embedded in the file"
EXTRA_IMAGES = "extra images in the file (depth map, burst or preview)"
STRAY = "stray bytes between segments"
TIFF_TAGS = "other TIFF tags"
FACES_BLURRED = "faces (blurred)"
TEXT_BLURRED = "text on the photo (blurred)"

_ORDER = [GPS, CAPTURE_TIME, DEVICE, SERIAL, AUTHOR, UNIQUE_ID, COMMENTS, THUMBNAIL, XMP, IPTC, MAKER_NOTES,
          SOFTWARE, MPF, EXTRA_IMAGES, TRAILER, TEXT_CHUNKS, ICC_TEXT, ICC_DROPPED, TIFF_TAGS, APP_SEGMENTS,
          OTHER_EXIF, STRAY, FACES_BLURRED, TEXT_BLURRED]
_RANK = {label: i for i, label in enumerate(_ORDER)}


def ordered(labels: list[str]) -> list[str]:
    """Unique labels, most sensitive first."""
    return sorted(dict.fromkeys(labels), key=lambda s: _RANK.get(s, len(_ORDER)))
