"""Assertions shared by the sanitizer tests: exiftool's view and byte scans."""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageOps

from .imagegen import Planted, exiftool_json

# What exiftool may still report on a clean file: how to decode it, nothing about who/where/when.
ALLOWED = {
    "SourceFile": None,
    "ExifTool": {"ExifToolVersion"},
    "System": None,  # our own temp file's name, size and dates
    "File": {"FileType", "FileTypeExtension", "MIMEType", "ImageWidth", "ImageHeight", "EncodingProcess",
             "BitsPerSample", "ColorComponents", "YCbCrSubSampling", "ExifByteOrder"},
    "JFIF": {"JFIFVersion", "ResolutionUnit", "XResolution", "YResolution"},
    "IFD0": {"Orientation"},
    "PNG": {"ImageWidth", "ImageHeight", "BitDepth", "ColorType", "Compression", "Filter", "Interlace",
            "ProfileName", "Palette", "Transparency"},
    "RIFF": {"WebP_Flags", "ImageWidth", "ImageHeight", "VP8Version", "HorizontalScale", "VerticalScale",
             "AlphaPreprocessing", "AlphaFiltering", "AlphaCompression"},
    "Adobe": {"DCTEncodeVersion", "APP14Flags0", "APP14Flags1", "ColorTransform"},
    "Composite": {"ImageSize", "Megapixels"},
}
ICC_GROUPS = ("ICC-header", "ICC_Profile", "ICC-chrm", "ICC-meas", "ICC-view")


def leftovers(tags: dict) -> list[str]:
    """exiftool tags that should not be there."""
    bad = []
    for key, value in tags.items():
        group, _, name = key.partition(":")
        if group in ICC_GROUPS:
            if name == "ProfileDescription" and value != "Colour profile (sanitised)":
                bad.append(f"{key}={value!r}")
            elif name in ("DeviceManufacturer", "DeviceModel", "ProfileCreator", "ProfileCMMType") and value not in ("", 0, "0"):
                bad.append(f"{key}={value!r}")
            elif name in ("DeviceMfgDesc", "DeviceModelDesc", "Metadata", "ProfileDescriptionML"):
                bad.append(key)
            continue
        if group == "SourceFile" or group == "System":
            continue
        allowed = ALLOWED.get(group, set())
        if allowed is not None and name not in allowed:
            bad.append(f"{key}={str(value)[:60]!r}")
    return bad


def assert_clean(out: Path, planted: Planted) -> dict:
    data = out.read_bytes()
    found = planted.found_in(data)
    assert not found, f"planted strings survived: {found}"
    tags = exiftool_json(out)
    bad = leftovers(tags)
    assert not bad, f"exiftool still sees: {bad}"
    return tags


def decoded(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def displayed(data: bytes) -> Image.Image:
    """The image as a viewer shows it (EXIF orientation applied)."""
    return ImageOps.exif_transpose(decoded(data))
