"""The face-and-text evaluation set: one list of cases for the tests and the benchmark.

Everything is built at run time, nothing is committed: real photos come from images that
ship inside installed packages (scikit-image and matplotlib, both in the test extras) and
from the shared public corpus when it is present (``../shared/corpus``); the rest is
generated here with the cases that matter for a clinical photo: faces 4-25% of the frame
height, stored sideways with EXIF orientation 6/8, turned with no EXIF at all, masked,
tilted 30 degrees, close-ups; labels, wristbands, handwriting on skin, rulers and scale bars.
Each case records where its pixels come from and under which licence (``Case.source`` and
``Case.licence``; the table is in docs/sanitizer.md).

    from tests.sanitizer.evalset import cases, score
    result = score(lambda data: (face_boxes, text_boxes), cases(long_side=4032))

Boxes are (x, y, w, h) fractions of the picture as displayed (after EXIF orientation).
"""
from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"
if not CORPUS.exists():
    CORPUS = Path("/work/shared/corpus")

Box = tuple[float, float, float, float]


@dataclass
class Case:
    name: str
    group: str  # real-face | gen-face | skin | real-no-face | text | no-text-skin
    faces: bool | None  # a face is in the picture (None: not labelled, left out of the face score)
    text: bool | None  # text is in the picture (None: not labelled, left out of the text score)
    source: str
    licence: str
    make: Callable[[], bytes]
    face_box: Box | None = None  # where the face is, when we placed it (a hit must land on it)
    notes: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)


# ------------------------------------------------------------------ sources in packages

_SKIMAGE = "scikit-image (BSD-3-Clause), skimage/data/"


def _skimage(name: str) -> Image.Image:
    import skimage.data

    arr = getattr(skimage.data, name)()
    im = Image.fromarray(arr)
    return im.convert("RGB")


def _hopper() -> Image.Image:
    import matplotlib.cbook

    return Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")


@dataclass(frozen=True)
class FaceSource:
    load: Callable[[], Image.Image]
    crop: tuple[int, int, int, int]  # the head, with some hair and neck, in the source's pixels
    face_height: int  # brow to chin, in the source's pixels: what "a face 4% of the frame" measures
    source: str
    licence: str


FACE_SOURCES = {
    "astronaut": FaceSource(lambda: _skimage("astronaut"), (150, 40, 300, 210), 106,
                            _SKIMAGE + "astronaut.png: NASA portrait of astronaut Eileen Collins",
                            "public domain (NASA)"),
    "hopper": FaceSource(_hopper, (150, 90, 410, 390), 215,
                         "matplotlib (PSF-based licence), mpl-data/sample_data/grace_hopper.jpg: "
                         "US Navy portrait of Rear Admiral Grace Hopper", "public domain (US Navy)"),
    "cameraman": FaceSource(lambda: _skimage("camera"), (180, 90, 290, 215), 70,
                            _SKIMAGE + "camera.png: a man looking into a camera, face half turned",
                            "CC0 (photographer Lav Varshney, as scikit-image states)"),
}

# Real photos without faces that ship in scikit-image (all CC0 or public domain, per its docs).
NO_FACE_PACKAGE = {
    "coffee": "a cup of coffee (Rachel Michetti, CC0)",
    "chelsea": "a cat (Stefan van der Walt, CC0)",
    "rocket": "a rocket launch (SpaceX, CC0)",
    "hubble_deep_field": "Hubble deep field (NASA, public domain)",
    "retina": "a human retina photograph (Häggström, CC0)",
    "immunohistochemistry": "immunohistochemistry slide (CC0)",
    "brick": "a brick wall (CC0)",
    "grass": "grass (CC0)",
    "gravel": "gravel (CC0)",
    "coins": "Greek coins (Brooklyn Museum, no known copyright)",
    "moon": "the surface of the moon (public domain)",
}


# ------------------------------------------------------------------ generated backgrounds

def skin(width: int, height: int, seed: int, tone: int = 1) -> Image.Image:
    """Skin with a lesion: light (0), medium (1) or dark (2) tone, pores, shading, a few hairs."""
    rng = np.random.default_rng(seed)
    base = np.array([(232, 190, 160), (205, 150, 115), (120, 80, 58)][tone], np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    shade = 1.0 - 0.18 * ((xx / width - 0.3 - 0.1 * (seed % 3)) ** 2 + (yy / height - 0.4) ** 2)
    img = base[None, None, :] * shade[..., None]
    coarse = rng.normal(0, 5, (height // 16 + 1, width // 16 + 1, 1)).astype(np.float32)
    img = img + np.kron(coarse, np.ones((16, 16, 1), np.float32))[:height, :width]
    img = img + rng.normal(0, 4, (height, width, 1)).astype(np.float32)
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(im)
    rnd = random.Random(seed)
    cx, cy, r = width * rnd.uniform(0.35, 0.65), height * rnd.uniform(0.35, 0.65), min(width, height) * rnd.uniform(0.05, 0.12)
    pts = [(cx + r * (0.8 + 0.4 * rnd.random()) * math.cos(a) * 1.2, cy + r * (0.8 + 0.4 * rnd.random()) * math.sin(a))
           for a in np.linspace(0, 2 * math.pi, 40, endpoint=False)]
    lesion = Image.new("L", im.size, 0)
    ImageDraw.Draw(lesion).polygon(pts, fill=255)
    lesion = lesion.filter(ImageFilter.GaussianBlur(max(2, r * 0.1)))
    im = Image.composite(Image.new("RGB", im.size, tuple(int(c * 0.5) for c in base)), im, lesion)
    d = ImageDraw.Draw(im)
    for _ in range(rnd.randint(5, 25)):  # hairs
        x, y = rnd.uniform(0, width), rnd.uniform(0, height)
        a = rnd.uniform(0, math.pi)
        ln = rnd.uniform(0.02, 0.06) * height
        d.line([(x, y), (x + ln * math.cos(a), y + ln * math.sin(a))], fill=(60, 40, 30), width=max(1, width // 1500))
    return im


def _font(px: int) -> ImageFont.FreeTypeFont:
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"
    return ImageFont.truetype(str(path), max(6, px))


def _jpeg(im: Image.Image, orientation: int = 1) -> bytes:
    buf = io.BytesIO()
    kw = {}
    if orientation != 1:
        ex = Image.Exif()
        ex[0x0112] = orientation
        kw["exif"] = ex.tobytes()
    im.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


# ------------------------------------------------------------------ faces

def _face_crop(src: FaceSource) -> Image.Image:
    return _cached_source(src.source).crop(src.crop)


@lru_cache(maxsize=None)
def _cached_source(key: str) -> Image.Image:
    for s in FACE_SOURCES.values():
        if s.source == key:
            return s.load()
    raise KeyError(key)


def _mask(face: Image.Image) -> Image.Image:
    """A light-blue surgical mask over nose, mouth and chin."""
    face = face.copy()
    w, h = face.size
    d = ImageDraw.Draw(face)
    d.polygon([(w * 0.2, h * 0.55), (w * 0.8, h * 0.55), (w * 0.78, h * 0.82), (w * 0.5, h * 0.92), (w * 0.22, h * 0.82)],
              fill=(150, 190, 215))
    for y in (0.62, 0.7, 0.78):
        d.line([(w * 0.24, h * y), (w * 0.76, h * y)], fill=(120, 160, 190), width=max(1, w // 80))
    return face


def _place(face: Image.Image, long_side: int, frac: float, seed: int, *, tone: int = 1, angle: float = 0,
           background: str = "skin", face_ratio: float = 1.0) -> tuple[Image.Image, Box]:
    """Paste a head crop so that the face in it (``face_ratio`` of the crop's height) is
    ``frac`` of the picture's height; returns the picture and the crop's box."""
    w, h = long_side, long_side * 3 // 4
    bg = skin(w, h, seed, tone) if background == "skin" else _scene(w, h, seed)
    fh = max(8, int(h * frac / face_ratio))
    fw = max(8, int(face.width * fh / face.height))
    f = face.resize((fw, fh), Image.Resampling.BICUBIC)
    maskim = Image.new("L", f.size, 255)
    if angle:
        f = f.rotate(angle, expand=True, resample=Image.Resampling.BICUBIC)
        maskim = maskim.rotate(angle, expand=True)
    rnd = random.Random(seed)
    x = int(rnd.uniform(0.05, 0.95) * (w - f.width))
    y = int(rnd.uniform(0.05, 0.95) * (h - f.height))
    bg.paste(f, (x, y), maskim)
    return bg, (x / w, y / h, f.width / w, f.height / h)


def _scene(w: int, h: int, seed: int) -> Image.Image:
    from . import imagegen

    return imagegen.photo(w, h, seed)


def _rotated_box(box: Box, k: int) -> Box:
    """The box after rotating the picture by k*90 degrees anticlockwise (PIL's rotate)."""
    x, y, bw, bh = box
    for _ in range(k % 4):
        x, y, bw, bh = y, 1 - x - bw, bh, bw
    return (x, y, bw, bh)


def _face_case(out: list[Case], key: str, src: FaceSource, long_side: int, name: str, frac: float, seed: int, *,
               mask=False, angle=0, orientation=1, turn=0, tags=(), tone=1, background="skin") -> None:
    lic = src.licence + "; background generated here"

    def make() -> bytes:
        face = _face_crop(src)
        if mask:
            face = _mask(face)
        im, _ = _place(face, long_side, frac, seed, angle=angle, tone=tone, face_ratio=_ratio(src), background=background)
        return _store(im, orientation, turn)

    # the box is known without building the picture: same seed, same geometry
    box = _placed_box(_face_crop_size(src), long_side, frac / _ratio(src), seed, angle, orientation, turn)
    out.append(Case(f"{key}-{name}", "gen-face", True, None, src.source, lic, make, box, tags=tags))


def _face_cases(long_side: int) -> list[Case]:
    out: list[Case] = []
    seed = 100
    for key, src in FACE_SOURCES.items():
        lic = src.licence + "; background generated here"

        def add(name, frac, *, mask=False, angle=0, orientation=1, turn=0, tags=(), tone=1, src=src, key=key):
            nonlocal seed
            seed += 1
            s = seed

            def make() -> bytes:
                face = _face_crop(src)
                if mask:
                    face = _mask(face)
                im, _ = _place(face, long_side, frac, s, angle=angle, tone=tone, face_ratio=_ratio(src))
                return _store(im, orientation, turn)

            # the box is known without building the picture: same seed, same geometry
            box = _placed_box(_face_crop_size(src), long_side, frac / _ratio(src), s, angle, orientation, turn)
            out.append(Case(f"{key}-{name}", "gen-face", True, None, src.source, lic, make, box, tags=tags))

        for frac in (0.04, 0.06, 0.09, 0.13, 0.18, 0.25):
            add(f"{round(frac * 100)}pct", frac, tags=("size",), tone=seed % 3)
        add("exif6", 0.12, orientation=6, tags=("exif",))
        add("exif8", 0.12, orientation=8, tags=("exif",))
        add("masked", 0.15, mask=True, tags=("masked",))
        add("tilt30", 0.15, angle=30 if key != "hopper" else -30, tags=("tilt",))
        add("sideways-no-exif", 0.15, turn=1, tags=("rotation",))
        add("upside-down-no-exif", 0.15, turn=2, tags=("rotation",))

        def closeup(src=src, key=key) -> bytes:
            face = _face_crop(src)
            w, h = long_side, long_side * 3 // 4
            # the face fills the frame and runs off it: a close-up of a lesion on the cheek
            fh = int(h * 1.1)
            fw = int(face.width * fh / face.height)
            big = face.resize((fw, fh), Image.Resampling.BICUBIC)
            canvas = skin(w, h, 7)
            canvas.paste(big, ((w - fw) // 2, (h - fh) // 2))
            return _jpeg(canvas)

        out.append(Case(f"{key}-closeup", "gen-face", True, None, src.source, lic, closeup, None, tags=("closeup",)))
    return out


def _ratio(src: FaceSource) -> float:
    return src.face_height / (src.crop[3] - src.crop[1])


def _face_crop_size(src: FaceSource) -> tuple[int, int]:
    x0, y0, x1, y1 = src.crop
    return x1 - x0, y1 - y0


def _placed_box(size: tuple[int, int], long_side: int, frac: float, seed: int, angle: float, orientation: int,
                turn: int) -> Box:
    w, h = long_side, long_side * 3 // 4
    fh = max(8, int(h * frac))
    fw = max(8, int(size[0] * fh / size[1]))
    if angle:
        a = math.radians(abs(angle))
        fw, fh = int(fw * math.cos(a) + fh * math.sin(a)) + 1, int(fw * math.sin(a) + fh * math.cos(a)) + 1
    rnd = random.Random(seed)
    x = int(rnd.uniform(0.05, 0.95) * (w - fw))
    y = int(rnd.uniform(0.05, 0.95) * (h - fh))
    box = (x / w, y / h, fw / w, fh / h)
    return _rotated_box(box, turn)  # EXIF orientation displays it upright again; a turn does not


def _store(im: Image.Image, orientation: int, turn: int) -> bytes:
    """Store the picture sideways with an EXIF tag that turns it upright (6/8), or turned
    with no tag at all (a phone that did not record how it was held)."""
    if orientation == 6:
        return _jpeg(im.transpose(Image.Transpose.ROTATE_90), 6)
    if orientation == 8:
        return _jpeg(im.transpose(Image.Transpose.ROTATE_270), 8)
    if orientation == 3:
        return _jpeg(im.transpose(Image.Transpose.ROTATE_180), 3)
    if turn:
        return _jpeg(im.rotate(90 * turn, expand=True))
    return _jpeg(im)


# ------------------------------------------------------------------ text

NAME_LINES = ("J SMITH  DOB 01/02/1960", "MRN 4471 9023", "Ward 7B  12/03/26")


def _label(im: Image.Image, frac: float, seed: int, *, angle: float = 0, band: bool = False) -> Image.Image:
    w, h = im.size
    line = max(8, int(h * frac))
    font = _font(line)
    lines = NAME_LINES[:2] if band else NAME_LINES
    tw = max(font.getbbox(s)[2] for s in lines)
    pad = line // 2
    lab = Image.new("RGBA", (tw + 2 * pad, len(lines) * int(line * 1.3) + 2 * pad),
                    (245, 245, 240, 255) if not band else (235, 240, 250, 255))
    d = ImageDraw.Draw(lab)
    for i, s in enumerate(lines):
        d.text((pad, pad + i * int(line * 1.3)), s, font=font, fill=(20, 20, 30, 255))
    if band:  # a wristband runs across the picture
        full = Image.new("RGBA", (int(w * 1.3), lab.height), (235, 240, 250, 255))
        full.paste(lab, (int(w * 0.35), 0))
        lab = full
    if angle:
        lab = lab.rotate(angle, expand=True, resample=Image.Resampling.BICUBIC)
    rnd = random.Random(seed)
    x = int(rnd.uniform(0.05, 0.6) * w) if not band else -int(w * 0.15)
    y = int(rnd.uniform(0.05, 0.7) * h)
    im.paste(lab, (x, y), lab)
    return im


def _handwriting(im: Image.Image, frac: float, seed: int) -> Image.Image:
    """Ballpoint writing on the skin (initials and a date), slightly smudged."""
    import cv2

    arr = np.asarray(im).copy()
    h, w = arr.shape[:2]
    scale = h * frac / 22
    rnd = random.Random(seed)
    x, y = int(w * rnd.uniform(0.1, 0.5)), int(h * rnd.uniform(0.3, 0.8))
    for i, s in enumerate(("J Smith", "12/3/26")):
        cv2.putText(arr, s, (x, y + int(i * h * frac * 1.6)), cv2.FONT_HERSHEY_SCRIPT_SIMPLEX, scale, (40, 50, 120),
                    max(1, int(scale * 2)), cv2.LINE_AA)
    return Image.fromarray(arr).filter(ImageFilter.GaussianBlur(max(0.5, scale * 0.3)))


def _ruler(im: Image.Image, seed: int, *, numbers: bool) -> Image.Image:
    """A paper ruler in centimetres along the bottom of the picture (common in dermatology)."""
    w, h = im.size
    rh = int(h * 0.07)
    ruler = Image.new("RGB", (int(w * 0.7), rh), (240, 230, 170))
    d = ImageDraw.Draw(ruler)
    mm = ruler.width / 120
    font = _font(int(rh * 0.35))
    for i in range(121):
        x = int(i * mm)
        ln = rh * (0.55 if i % 10 == 0 else 0.35 if i % 5 == 0 else 0.2)
        d.line([(x, 0), (x, ln)], fill=(20, 20, 20), width=max(1, w // 2000))
        if numbers and i % 10 == 0 and i:
            d.text((x - rh * 0.1, rh * 0.58), str(i // 10), font=font, fill=(20, 20, 20))
    im.paste(ruler, (int(w * 0.15), int(h * 0.88)))
    return im


def _scale_bar(im: Image.Image) -> Image.Image:
    w, h = im.size
    d = ImageDraw.Draw(im)
    x0, y0 = int(w * 0.75), int(h * 0.9)
    d.rectangle([x0, y0, x0 + int(w * 0.15), y0 + int(h * 0.012)], fill=(0, 0, 0))
    d.text((x0, y0 - int(h * 0.045)), "10 mm", font=_font(int(h * 0.035)), fill=(0, 0, 0))
    return im


def _date_stamp(im: Image.Image) -> Image.Image:
    w, h = im.size
    ImageDraw.Draw(im).text((int(w * 0.7), int(h * 0.9)), "12 03 '26", font=_font(int(h * 0.04)), fill=(255, 140, 20))
    return im


def _text_cases(long_side: int) -> list[Case]:
    w, h = long_side, long_side * 3 // 4
    gen = "generated here (DejaVu Sans Bold from matplotlib's fonts, OpenCV's Hershey script font)"
    lic = "generated; DejaVu fonts: Bitstream Vera licence (free)"
    spec: list[tuple[str, Callable[[Image.Image], Image.Image], bool, str]] = [
        ("label-small", lambda im: _label(im, 0.018, 1), True, "a printed patient label, letters 1.8% of the height"),
        ("label", lambda im: _label(im, 0.03, 2), True, "a printed patient label held next to the lesion"),
        ("label-large-tilted", lambda im: _label(im, 0.05, 3, angle=12), True, "a label, tilted"),
        ("wristband", lambda im: _label(im, 0.025, 4, angle=-8, band=True), True, "a hospital wristband"),
        ("handwriting", lambda im: _handwriting(im, 0.04, 5), True, "initials and a date in ballpoint on the skin"),
        ("handwriting-small", lambda im: _handwriting(im, 0.025, 6), True, "smaller writing on the skin"),
        ("ruler-numbers", lambda im: _ruler(im, 7, numbers=True), True, "a centimetre ruler with numbers"),
        ("ruler-ticks-only", lambda im: _ruler(im, 8, numbers=False), None, "a ruler with ticks and no numbers"),
        ("scale-bar", _scale_bar, True, "a scale bar labelled 10 mm"),
        ("date-stamp", _date_stamp, True, "a camera date stamp burned into the corner"),
    ]
    out = []
    for n, (name, draw, has_text, note) in enumerate(spec):
        def make(draw=draw, n=n) -> bytes:
            return _jpeg(draw(skin(w, h, 300 + n, tone=n % 3)))

        out.append(Case(f"text-{name}", "text", False, has_text, gen, lic, make, notes=note,
                        tags=("ruler",) if "ruler" in name or "scale" in name else ()))
    for name, what in (("text", "a photo of text on a board"), ("page", "a scanned printed page")):
        out.append(Case(f"pkg-{name}", "text", False, True, _SKIMAGE + f"{name}.png: {what}", "CC0 / public domain",
                        lambda name=name: _jpeg(_skimage(name)), notes=what))
    return out


# ------------------------------------------------------------------ face-free

def _no_face_cases(long_side: int) -> list[Case]:
    w, h = long_side, long_side * 3 // 4
    out = []
    for i in range(12):
        out.append(Case(f"skin-{i:02d}", "skin", False, False, "generated here: skin with a lesion and hairs",
                        "generated", lambda i=i: _jpeg(skin(w, h, 200 + i, tone=i % 3))))
    for name, what in NO_FACE_PACKAGE.items():
        out.append(Case(f"pkg-{name}", "real-no-face", False, None, _SKIMAGE + f"{name}: {what}", what.split("(")[-1].rstrip(")"),
                        lambda name=name: _jpeg(_skimage(name))))
    return out


# The shared corpus (exif-samples, CC BY-SA 4.0 for contributed images): which photos show a
# person's face, looked at one by one. Left out (None): cartoons, crowds too far away to be
# identifiable, and files that do not decode.
CORPUS_FACES = {
    "jpg/Konica_Minolta_DiMAGE_Z3.jpg", "jpg/exif-org/canon-ixus.jpg", "jpg/exif-org/kodak-dc210.jpg",
    "jpg/exif-org/sony-cybershot.jpg", "jpg/exif-org/sony-d700.jpg", "jpg/invalid/image00971.jpg",
    "jpg/invalid/image01137.jpg", "jpg/xmp/no_exif.jpg", "tiff/BSG1.tiff", "tiff/DudleyLeavittUtah.tiff",
}
CORPUS_UNLABELLED = {
    "jpg/PaintTool_sample.jpg",  # a cartoon character
    "jpg/gps/DSCN0025.jpg",  # people far down a street
    "jpg/long_description.jpg",  # soldiers, tiny
    "jpg/tests/28-hex_value.jpg",  # one person at the foot of a lighthouse, tiny
}
_CORPUS_EXT = (".jpg", ".jpeg", ".heic", ".heif", ".tiff")


def _corpus_cases() -> list[Case]:
    root = CORPUS / "exif-samples"
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.rglob("*")):
        if not p.is_file() or not p.name.lower().endswith(_CORPUS_EXT):
            continue
        rel = p.relative_to(root).as_posix()
        if rel in CORPUS_UNLABELLED:
            continue
        has_face = rel in CORPUS_FACES
        out.append(Case(f"corpus:{rel}", "real-face" if has_face else "real-no-face", has_face, None,
                        f"shared corpus exif-samples/{rel}", "exif-samples (CC BY-SA 4.0 for contributed images)",
                        lambda p=p: p.read_bytes(), tags=("corpus",)))
    return out


def holdout_cases(long_side: int = 4032) -> list[Case]:
    """A second set built like the first but with other sizes, positions, seeds, tones and
    backgrounds, for checking that thresholds chosen on ``cases()`` are not fitted to it.
    Same three people (no other freely licensed face ships in the installed packages), so it
    tests the placement and the picture, not new faces. Nothing here was used to choose a
    threshold (docs/sanitizer.md)."""
    out: list[Case] = []
    seed = 5000
    for key, src in FACE_SOURCES.items():
        spec = [("h5pct", 0.05, {}), ("h7pct", 0.075, {}), ("h11pct", 0.11, {}), ("h16pct", 0.16, {}),
                ("h22pct", 0.22, {}), ("h8pct-scene", 0.08, {"background": "scene"}),
                ("h14pct-scene", 0.14, {"background": "scene"}), ("h-exif3", 0.12, {"orientation": 3}),
                ("h-exif6", 0.2, {"orientation": 6}), ("h-exif8", 0.07, {"orientation": 8}),
                ("h-masked", 0.1, {"mask": True}), ("h-tilt20", 0.12, {"angle": -20 if key != "hopper" else 20}),
                ("h-sideways-no-exif", 0.12, {"turn": 3})]
        for name, frac, kw in spec:
            seed += 1
            _face_case(out, key, src, long_side, name, frac, seed, tone=seed % 3, tags=("holdout",), **kw)
    w, h = long_side, long_side * 3 // 4
    for i in range(12):
        out.append(Case(f"h-skin-{i:02d}", "skin", False, False, "generated here: skin with a lesion and hairs",
                        "generated", lambda i=i: _jpeg(skin(w, h, 7000 + i, tone=(i + 1) % 3)), tags=("holdout",)))
    gen = "generated here (DejaVu Sans Bold from matplotlib's fonts, OpenCV's Hershey script font)"
    lic = "generated; DejaVu fonts: Bitstream Vera licence (free)"
    spec_t = [("h-label-2pct", lambda im: _label(im, 0.022, 71)), ("h-label-4pct-tilted", lambda im: _label(im, 0.04, 72, angle=-10)),
              ("h-wristband", lambda im: _label(im, 0.03, 73, angle=5, band=True)),
              ("h-handwriting", lambda im: _handwriting(im, 0.03, 74)), ("h-ruler-numbers", lambda im: _ruler(im, 75, numbers=True)),
              ("h-date-stamp", _date_stamp)]
    for n, (name, draw) in enumerate(spec_t):
        out.append(Case(f"text-{name}", "text", False, True, gen, lic,
                        lambda draw=draw, n=n: _jpeg(draw(skin(w, h, 7100 + n, tone=(n + 2) % 3))), tags=("holdout",)))
    return out


def cases(long_side: int = 4032, *, corpus: bool = True) -> list[Case]:
    """Every case; pictures are built lazily by ``case.make()`` (a 12 MP one takes ~0.3 s)."""
    out = _face_cases(long_side) + _text_cases(long_side) + _no_face_cases(long_side)
    for key, src in FACE_SOURCES.items():  # the portraits themselves, as shipped
        out.append(Case(f"pkg-{key}", "real-face", True, None, src.source, src.licence,
                        lambda src=src: _jpeg(_cached_source(src.source))))
    if corpus:
        out += _corpus_cases()
    return out


# ------------------------------------------------------------------ scoring

def _hits(box: Box, found: list[Box], grow: float = 0.3) -> bool:
    x, y, w, h = box
    x0, y0, x1, y1 = x - w * grow, y - h * grow, x + w * (1 + grow), y + h * (1 + grow)
    return any(x0 <= fx + fw / 2 <= x1 and y0 <= fy + fh / 2 <= y1 for fx, fy, fw, fh in found)


@dataclass
class Score:
    face_found: int = 0
    face_total: int = 0
    face_false_alarms: list[str] = field(default_factory=list)  # face-free pictures where a face was reported
    face_free_total: int = 0
    skin_false_alarms: list[str] = field(default_factory=list)
    skin_total: int = 0
    text_found: int = 0
    text_total: int = 0
    text_false_alarms: list[str] = field(default_factory=list)
    text_free_total: int = 0
    missed_faces: list[str] = field(default_factory=list)
    missed_text: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)  # unlabelled cases: what was reported

    @property
    def face_recall(self) -> float:
        return self.face_found / self.face_total if self.face_total else float("nan")

    @property
    def text_recall(self) -> float:
        return self.text_found / self.text_total if self.text_total else float("nan")


def score(detect: Callable[[bytes], tuple[list[Box], list[Box] | None]], all_cases: list[Case]) -> Score:
    """Run ``detect`` (bytes -> (face boxes, text boxes or None)) on every case and count."""
    s = Score()
    for c in all_cases:
        faces, texts = detect(c.make())
        if c.faces:
            s.face_total += 1
            ok = _hits(c.face_box, faces) if c.face_box is not None else bool(faces)
            s.face_found += ok
            if not ok:
                s.missed_faces.append(c.name)
        elif c.faces is False:
            s.face_free_total += 1
            if faces:
                s.face_false_alarms.append(c.name)
            if c.group in ("skin", "text"):
                s.skin_total += 1
                if faces:
                    s.skin_false_alarms.append(c.name)
        if texts is None:
            continue
        if c.text:
            s.text_total += 1
            s.text_found += bool(texts)
            if not texts:
                s.missed_text.append(c.name)
        elif c.text is False:
            s.text_free_total += 1
            if texts:
                s.text_false_alarms.append(c.name)
        elif c.group == "text":
            s.notes[c.name] = f"{len(texts)} text region(s)"
    return s
