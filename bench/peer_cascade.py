"""The peer the benchmark compares our face check with: the OpenCV Haar cascade the product
used before BlazeFace (issue 11), exactly as it ran then: frontal-face cascade on a grayscale,
histogram-equalised copy at most 800 px long, scale step 1.1, minNeighbors 10, smallest face
1/20 of the short side, on libjpeg's draft decode shown upright. Benchmark only: the product
no longer ships it."""
from __future__ import annotations

import io
import threading

import cv2
import numpy as np
from PIL import Image

DETECT_MAX_SIDE = 800
SCALE_FACTOR = 1.1
MIN_NEIGHBORS = 10
MIN_FACE_DIVISOR = 20
_local = threading.local()


def _cascade():
    c = getattr(_local, "cascade", None)
    if c is None:
        c = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
        _local.cascade = c
    return c


def detect_bytes(data: bytes) -> list[tuple[float, float, float, float]]:
    """Face boxes (fractions of the upright picture) in an image file, as the old check found them."""
    im = Image.open(io.BytesIO(data))
    orientation = im.getexif().get(0x0112, 1) if im.format != "HEIF" else 1
    if im.format == "JPEG":
        s = min(1.0, DETECT_MAX_SIDE / max(im.size))
        im.draft("L", (max(1, int(im.width * s)), max(1, int(im.height * s))))
    gray = im.convert("L")
    if orientation in range(2, 9):
        gray = _upright(gray, orientation)
    return detect(gray)


def _upright(im, orientation):
    method = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}.get(orientation)
    return im.transpose(method) if method is not None else im


def detect(gray) -> list[tuple[float, float, float, float]]:
    w, h = gray.size
    scale = DETECT_MAX_SIDE / max(w, h)
    if scale < 1:
        gray = gray.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
    sw, sh = gray.size
    if min(sw, sh) < 24:
        return []
    arr = cv2.equalizeHist(np.asarray(gray, dtype=np.uint8))
    min_side = max(24, min(sw, sh) // MIN_FACE_DIVISOR)
    found = _cascade().detectMultiScale(arr, scaleFactor=SCALE_FACTOR, minNeighbors=MIN_NEIGHBORS,
                                        minSize=(min_side, min_side))
    return [(float(x) / sw, float(y) / sh, float(bw) / sw, float(bh) / sh) for (x, y, bw, bh) in found]
