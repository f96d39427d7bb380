"""A generated clinical-looking photo (skin with a pigmented lesion) carrying the
metadata a phone camera writes: GPS position, make/model, serial numbers, capture
time, software. Used by the demo, the tests and the benchmark; no real patient.
"""
from __future__ import annotations

import io
import random
from datetime import datetime

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# EXIF tag numbers (Pillow's ExifTags.Base / GPS)
_MAKE, _MODEL, _SOFTWARE, _DATETIME, _ARTIST = 0x010F, 0x0110, 0x0131, 0x0132, 0x013B
_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_DT_ORIGINAL, _BODY_SERIAL, _LENS_SERIAL, _OWNER, _UNIQUE_ID = 0x9003, 0xA431, 0xA435, 0xA430, 0xA420

# a made-up spot in Leeds, UK: what the sanitizer must take out
GPS_LAT = (53, 48, 5.12)
GPS_LON = (1, 32, 57.6)


def _skin(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.array([224, 172, 140], np.float32)  # light-medium skin tone
    shade = 1.0 - 0.12 * ((xx / width - 0.3) ** 2 + (yy / height - 0.4) ** 2)
    img = base[None, None, :] * shade[..., None]
    # pores / texture: coarse + fine noise
    coarse = rng.normal(0, 6, (height // 8 + 1, width // 8 + 1, 1)).astype(np.float32)
    coarse = np.kron(coarse, np.ones((8, 8, 1), np.float32))[:height, :width]
    fine = rng.normal(0, 4, (height, width, 1)).astype(np.float32)
    img = img + coarse + fine
    return np.clip(img, 0, 255).astype(np.uint8)


def make_photo(width: int = 1600, height: int = 1200, seed: int = 7, quality: int = 92,
               gps: bool = True, when: datetime | None = None, label: str | None = None) -> bytes:
    """JPEG bytes of a skin photo with a lesion, with phone-style EXIF incl. GPS.
    ``label``: a white patient label with this text, held beside the lesion (the kind of
    thing the identifiability check looks for)."""
    rnd = random.Random(seed)
    img = Image.fromarray(_skin(width, height, seed), "RGB")
    lesion = Image.new("L", (width, height), 0)
    d = ImageDraw.Draw(lesion)
    cx, cy = width * (0.45 + rnd.random() * 0.1), height * (0.45 + rnd.random() * 0.1)
    r = min(width, height) * 0.11
    pts = []
    for i in range(48):  # irregular border (an "ABCD" worry)
        a = i / 48 * 2 * np.pi
        rr = r * (0.8 + 0.35 * rnd.random())
        pts.append((cx + rr * np.cos(a) * 1.2, cy + rr * np.sin(a)))
    d.polygon(pts, fill=255)
    lesion = lesion.filter(ImageFilter.GaussianBlur(max(2, r * 0.08)))
    brown = Image.new("RGB", (width, height), (112, 66, 44))
    img = Image.composite(brown, img, lesion)
    core = Image.new("L", (width, height), 0)
    ImageDraw.Draw(core).ellipse((cx - r * 0.35, cy - r * 0.3, cx + r * 0.4, cy + r * 0.25), fill=170)
    core = core.filter(ImageFilter.GaussianBlur(max(2, r * 0.15)))
    img = Image.composite(Image.new("RGB", (width, height), (60, 34, 26)), img, core)
    if label:
        from PIL import ImageFont

        font = ImageFont.load_default(size=max(12, height // 24))
        d = ImageDraw.Draw(img)
        x0, y0 = int(width * 0.06), int(height * 0.72)
        box = d.textbbox((x0, y0), label, font=font)
        pad = height // 60
        d.rectangle((box[0] - pad, box[1] - pad, box[2] + pad, box[3] + pad), fill=(246, 246, 240))
        d.text((x0, y0), label, font=font, fill=(25, 25, 35))

    when = when or datetime(2026, 3, 14, 10, 42, 7)
    exif = Image.Exif()
    exif[_MAKE] = "Apple"
    exif[_MODEL] = "iPhone 15 Pro"
    exif[_SOFTWARE] = "17.4.1"
    exif[_DATETIME] = when.strftime("%Y:%m:%d %H:%M:%S")
    exif[_ARTIST] = "Dr Example GP"
    sub = exif.get_ifd(_EXIF_IFD)
    sub[_DT_ORIGINAL] = when.strftime("%Y:%m:%d %H:%M:%S")
    sub[_BODY_SERIAL] = "F2LXK9QZ0D4N"
    sub[_LENS_SERIAL] = "DN8K2-4411"
    sub[_OWNER] = "Riverside Surgery"
    sub[_UNIQUE_ID] = "A1B2C3D4E5F60718293A4B5C6D7E8F90"
    if gps:
        g = exif.get_ifd(_GPS_IFD)
        g[1] = "N"
        g[2] = GPS_LAT
        g[3] = "W"
        g[4] = GPS_LON
        g[5] = b"\x00"
        g[6] = 68.5
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, exif=exif.tobytes())
    return buf.getvalue()


def make_phone_photo(target_bytes: int = 5_000_000, seed: int = 11, *, restart_markers: bool = False) -> bytes:
    """A ~5 MB 12-megapixel phone-style photo (for the benchmark). ``restart_markers``: with
    a restart marker at the start of every row of 16x16 blocks, as the iPhone writes its
    JPEGs (the one in the shared corpus does); Pillow writes none by default."""
    data = make_photo(4032, 3024, seed=seed, quality=97)
    img = Image.open(io.BytesIO(data))
    exif = img.info.get("exif")
    if len(data) < target_bytes * 0.8:
        # more sensor noise -> bigger file, like a real phone photo
        arr = np.asarray(img).astype(np.int16)
        arr += np.random.default_rng(seed).integers(-9, 10, arr.shape, dtype=np.int16)
        img, quality = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), 95
    elif not restart_markers:
        return data
    else:
        quality = 97
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, exif=exif, **({"restart_marker_rows": 1} if restart_markers else {}))
    return buf.getvalue()


def make_pdf() -> bytes:
    """A small but real PDF (the wrong file type a GP might send as an image)."""
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>"]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, o in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + o + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return bytes(out)


def make_corrupt_jpeg() -> bytes:
    """A JPEG cut off half way (a failed phone transfer)."""
    data = make_photo(640, 480, seed=3)
    return data[: len(data) // 2]
