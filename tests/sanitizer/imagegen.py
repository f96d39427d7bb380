"""Build realistic test images with planted, unique marker strings.

Every planted string starts with ``PLNT`` and carries a random token, so a
byte scan of the sanitizer's output can prove none of it survived. Metadata is
written with the real exiftool wherever exiftool can write it, with Pillow for
what it writes natively (PNG chunks, WebP/HEIC EXIF), and by hand for what
neither tool writes (stray APPn segments, JFIF thumbnails, trailers).
"""
from __future__ import annotations

import io
import json
import secrets
import shutil
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

EXIFTOOL = shutil.which("exiftool")


@dataclass
class Planted:
    """Marker strings planted in an image, by field."""

    token: str = field(default_factory=lambda: secrets.token_hex(4).upper())
    markers: dict[str, str] = field(default_factory=dict)

    def add(self, name: str) -> str:
        value = f"PLNT{name}{self.token}"
        self.markers[name] = value
        return value

    def needles(self) -> list[tuple[str, bytes]]:
        out = []
        for name, value in self.markers.items():
            out.append((name, value.encode("ascii")))
            out.append((name + "/utf16le", value.encode("utf-16-le")))
            out.append((name + "/utf16be", value.encode("utf-16-be")))
        return out

    def found_in(self, data: bytes) -> list[str]:
        return [name for name, needle in self.needles() if needle in data]


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A phone-photo-like RGB image: smooth shading, shapes and fine noise."""
    base = Image.linear_gradient("L").resize((width, height))
    radial = Image.radial_gradient("L").resize((width, height))
    noise = Image.effect_noise((width, height), 18 + seed % 5)
    r = Image.blend(base, noise, 0.35)
    g = Image.blend(radial, noise, 0.25)
    b = Image.blend(base.transpose(Image.Transpose.ROTATE_180), radial, 0.5)
    im = Image.merge("RGB", (r, g, b))
    d = ImageDraw.Draw(im)
    step = max(8, width // 12)
    for i in range(0, width, step):
        d.ellipse([i, (i * 7 + seed * 31) % height, i + step // 2, (i * 7 + seed * 31) % height + step // 2],
                  fill=((i * 3) % 255, (i * 5 + seed) % 255, (i * 11) % 255))
    return im


def jpeg_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=kw.pop("quality", 90), **kw)
    return buf.getvalue()


def tiny_jpeg_with_marker(marker: str) -> bytes:
    """A small JPEG (used as an EXIF thumbnail) whose COM segment carries a marker."""
    buf = io.BytesIO()
    photo(160, 120).save(buf, "JPEG", quality=70)
    data = buf.getvalue()
    com = marker.encode() + b" thumbnail"
    return data[:2] + b"\xff\xfe" + struct.pack(">H", len(com) + 2) + com + data[2:]


def exiftool_write(path: Path, *args: str) -> None:
    if EXIFTOOL is None:  # pragma: no cover - the suite installs exiftool
        raise RuntimeError("exiftool is not installed")
    subprocess.run([EXIFTOOL, "-q", "-q", "-m", "-overwrite_original", *args, str(path)], check=True,
                   capture_output=True)


def exiftool_json(path: Path) -> dict:
    out = subprocess.run([EXIFTOOL, "-a", "-G1", "-j", "-b", "-m", str(path)], check=True,
                         capture_output=True).stdout
    return json.loads(out)[0]


def plant_common_tags(path: Path, p: Planted, *, exif: bool = True, iptc: bool = True, xmp: bool = True,
                      gps: bool = True) -> None:
    args: list[str] = []
    if exif:
        args += [
            f"-EXIF:Make={p.add('Make')}", f"-EXIF:Model={p.add('Model')}",
            f"-EXIF:SerialNumber={p.add('Serial')}", f"-EXIF:LensSerialNumber={p.add('LensSerial')}",
            f"-EXIF:OwnerName={p.add('Owner')}", f"-EXIF:Artist={p.add('Artist')}",
            f"-EXIF:Copyright={p.add('Copyright')}", f"-EXIF:ImageDescription={p.add('Descr')}",
            f"-EXIF:UserComment={p.add('UserComment')}", f"-EXIF:Software={p.add('Software')}",
            f"-EXIF:XPComment={p.add('XPComment')}", f"-EXIF:XPAuthor={p.add('XPAuthor')}",
            f"-EXIF:XPTitle={p.add('XPTitle')}", f"-EXIF:ImageUniqueID={p.add('UniqueID')}",
            "-EXIF:DateTimeOriginal=2019:03:14 15:09:26", "-EXIF:CreateDate=2019:03:14 15:09:26",
            "-EXIF:OffsetTimeOriginal=+01:00",
        ]
    if gps:
        args += ["-GPSLatitude=51.501364", "-GPSLatitudeRef=N", "-GPSLongitude=0.141890", "-GPSLongitudeRef=W",
                 "-GPSAltitude=23", f"-GPSProcessingMethod={p.add('GPSMethod')}", "-GPSDateStamp=2019:03:14"]
    if xmp:
        args += [f"-XMP-dc:Creator={p.add('XmpCreator')}", f"-XMP-dc:Description={p.add('XmpDescr')}",
                 f"-XMP-photoshop:City={p.add('XmpCity')}"]
    if iptc:
        args += [f"-IPTC:By-line={p.add('IptcByline')}", f"-IPTC:Caption-Abstract={p.add('IptcCaption')}",
                 f"-IPTC:City={p.add('IptcCity')}"]
    exiftool_write(path, *args)


def _insert_after_soi(data: bytes, *segments: bytes) -> bytes:
    return data[:2] + b"".join(segments) + data[2:]


def segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def planted_jpeg(tmp: Path, p: Planted, *, width: int = 640, height: int = 480, progressive: bool = False,
                 orientation: int | None = None, icc: bool = True, mode: str = "RGB") -> Path:
    """A JPEG carrying everything a phone or editor might leave in it."""
    im = photo(width, height)
    if mode != "RGB":
        im = im.convert(mode)
    kw: dict = {"progressive": progressive}
    if icc and mode == "RGB":
        kw["icc_profile"] = planted_icc(p)
    data = jpeg_bytes(im, **kw)
    # Hand-made segments no tool writes for us: a JFIF thumbnail, a vendor APP segment,
    # an MPF-like APP2, a comment between scans' tables.
    thumb_px = (p.add("JfifThumb") + "xx").encode()[:24].ljust(24, b"x")
    jfif = b"JFIF\x00\x01\x02\x01\x00\x48\x00\x48" + bytes((8, 1)) + thumb_px
    data = _insert_after_soi(
        data,
        segment(0xE0, jfif),
        segment(0xE3, b"META\x00" + p.add("App3").encode()),
        segment(0xE2, b"MPF\x00" + p.add("Mpf").encode()),
        segment(0xEA, p.add("App10").encode()),
    )
    # strip Pillow's own JFIF so ours (with the thumbnail) is the one seen
    path = tmp / f"{p.token}.jpg"
    path.write_bytes(data)
    plant_common_tags(path, p)
    thumb = tmp / f"{p.token}-thumb.jpg"
    thumb.write_bytes(tiny_jpeg_with_marker(p.add("ExifThumb")))
    args = [f"-Comment={p.add('Com')}", f"-ThumbnailImage<={thumb}"]
    if orientation is not None:
        args.append(f"-Orientation#={orientation}")
    exiftool_write(path, *args)
    # Maker note and trailing data (motion-photo style) go in by hand.
    data = path.read_bytes()
    data = _insert_after_soi(data, segment(0xEC, b"Ducky" + p.add("Ducky").encode()))
    data += b"\x00\x00\x00\x18ftypmp42" + p.add("Trailer").encode() + b"\xff\xd9"
    path.write_bytes(data)
    return path


def planted_icc(p: Planted) -> bytes:
    """littlecms's sRGB profile with its description replaced by a marker (same length)."""
    from PIL import ImageCms

    prof = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    desc = "sRGB built-in"
    marker = p.add("IccDesc")[: len(desc)]
    p.markers["IccDesc"] = marker
    for enc in ("utf-16-be", "ascii"):
        if desc.encode(enc) in prof:
            prof = prof.replace(desc.encode(enc), marker.encode(enc))
    prof = bytearray(prof)
    prof[48:52] = b"PLNT"  # device manufacturer
    prof[52:56] = b"MODL"  # device model
    return bytes(prof)


def maker_note_exif(p: Planted, orientation: int = 1) -> bytes:
    """EXIF bytes (Pillow) with a maker note, GPS and UTF-16 XP tags."""
    ex = Image.Exif()
    ex[0x010F] = p.add("PilMake")
    ex[0x0112] = orientation
    ex[0x9C9C] = p.add("PilXPComment").encode("utf-16-le") + b"\x00\x00"
    ex.get_ifd(0x8769)[0x927C] = b"Nikon\x00\x02\x00" + p.add("MakerNote").encode() + b"\x00" * 8
    ex.get_ifd(0x8769)[0x9003] = "2020:01:02 03:04:05"
    ex.get_ifd(0x8825)[0x0001] = "N"
    ex.get_ifd(0x8825)[0x0002] = (51.0, 30.0, 0.0)
    return ex.tobytes()


def planted_png(tmp: Path, p: Planted, *, orientation: int = 1, mode: str = "RGB") -> Path:
    from PIL import PngImagePlugin

    im = photo(320, 240)
    if mode != "RGB":
        im = im.convert(mode)
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", p.add("PngText"))
    info.add_text("Comment", p.add("PngZtxt"), zip=True)
    info.add_itxt("Description", p.add("PngItxt"), lang="en", tkey="Description")
    info.add_itxt("XML:com.adobe.xmp", f"<x:xmpmeta><dc:creator>{p.add('PngXmp')}</dc:creator></x:xmpmeta>")
    info.add(b"tIME", struct.pack(">HBBBBB", 2019, 3, 14, 15, 9, 26))
    info.add(b"prVt", p.add("PngPrivate").encode())
    path = tmp / f"{p.token}.png"
    im.save(path, "PNG", pnginfo=info, exif=maker_note_exif(p, orientation),
            icc_profile=planted_icc(p) if mode == "RGB" else None)
    path.write_bytes(path.read_bytes() + p.add("PngTrailer").encode())
    return path


def planted_webp(tmp: Path, p: Planted, *, lossless: bool = False, orientation: int = 1) -> Path:
    im = photo(320, 240)
    path = tmp / f"{p.token}.webp"
    xmp = f"<x:xmpmeta><dc:creator>{p.add('WebpXmp')}</dc:creator></x:xmpmeta>".encode()
    im.save(path, "WEBP", lossless=lossless, quality=85, exif=maker_note_exif(p, orientation), xmp=xmp,
            icc_profile=planted_icc(p))
    return path


def planted_tiff(tmp: Path, p: Planted, *, orientation: int = 1) -> Path:
    im = photo(320, 240)
    path = tmp / f"{p.token}.tif"
    im.save(path, "TIFF", compression="tiff_deflate", icc_profile=planted_icc(p))
    plant_common_tags(path, p)
    exiftool_write(path, f"-Orientation#={orientation}", f"-EXIF:HostComputer={p.add('Host')}",
                   f"-EXIF:DocumentName={p.add('DocName')}")
    return path


def planted_gif(tmp: Path, p: Planted, *, frames: int = 1) -> Path:
    path = tmp / f"{p.token}.gif"
    ims = [photo(160, 120, seed=i).convert("P", palette=Image.Palette.ADAPTIVE) for i in range(frames)]
    ims[0].save(path, "GIF", comment=p.add("GifComment").encode(), save_all=frames > 1,
                append_images=ims[1:], duration=100)
    exiftool_write(path, f"-XMP-dc:Creator={p.add('GifXmp')}")
    return path


def planted_heic(tmp: Path, p: Planted, *, orientation: int = 1) -> Path:
    import pillow_heif

    pillow_heif.register_heif_opener()
    im = photo(320, 240)
    path = tmp / f"{p.token}.heic"
    xmp = f"<x:xmpmeta><dc:creator>{p.add('HeicXmp')}</dc:creator></x:xmpmeta>".encode()
    im.save(path, "HEIF", quality=80, exif=maker_note_exif(p, orientation), xmp=xmp, icc_profile=planted_icc(p))
    exiftool_write(path, f"-EXIF:Artist={p.add('HeicArtist')}", "-GPSLatitude=51.5", "-GPSLatitudeRef=N")
    return path


def face_photo() -> bytes:
    return (Path(__file__).parent / "data" / "astronaut.jpg").read_bytes()


def blurred_face_test_image() -> Image.Image:  # pragma: no cover - helper for manual checks
    return Image.open(io.BytesIO(face_photo())).filter(ImageFilter.GaussianBlur(1))


# --- hostile files from the security review (issue 9, finding 7) ---------------------------

def _jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each JPEG segment; a scan's end includes its entropy data."""
    import re

    scan_end = re.compile(rb"\xff[^\x00\xd0-\xd7]")
    out, pos = [], 2
    while pos < len(data):
        marker = data[pos + 1]
        if marker == 0xD9:
            out.append((marker, pos, pos + 2))
            break
        end = pos + 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if marker == 0xDA:
            end = scan_end.search(data, end).start()
        out.append((marker, pos, end))
        pos = end
    return out


def progressive_scan_bomb(scans: int = 4000, size: tuple[int, int] = (4000, 4000)) -> bytes:
    """A valid-looking progressive JPEG with thousands of scans (the reviewer's file had 4,000
    in 708 KB; it took 14 s and 393 MB to decode and was forwarded as is). Made by repeating
    the first AC scan of a flat 16 MP picture: libjpeg only warns about the repeats and walks
    every block of the picture again for each one."""
    buf = io.BytesIO()
    Image.new("L", size, 128).save(buf, "JPEG", quality=90, progressive=True)
    data = buf.getvalue()
    segments = _jpeg_segments(data)
    sos = [s for s in segments if s[0] == 0xDA]
    first_ac = sos[1]
    eoi = segments[-1][1]
    return data[:eoi] + data[first_ac[1]:first_ac[2]] * (scans - len(sos)) + data[eoi:]


def webp_declaring(width: int, height: int, chunk: str = "VP8X") -> bytes:
    """A WebP that is little more than a header declaring a huge picture (the reviewer's
    34-byte file took 2.7 s and 1.2 GB)."""
    if chunk == "VP8X":
        body = b"VP8X" + struct.pack("<I", 10) + b"\0\0\0\0" + (width - 1).to_bytes(3, "little") \
            + (height - 1).to_bytes(3, "little") + b"ALPH"  # 34 bytes in all
    elif chunk == "VP8L":
        header = b"\x2f" + ((width - 1) | ((height - 1) << 14)).to_bytes(4, "little")
        body = b"VP8L" + struct.pack("<I", len(header)) + header + b"\0"
    else:
        frame = b"\x10\x02\x00\x9d\x01\x2a" + struct.pack("<HH", width, height)
        body = b"VP8 " + struct.pack("<I", len(frame)) + frame
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body
