"""What could identify the patient on a photo: faces and text, found on a small upright copy.

* Faces: Google's BlazeFace models (Apache-2.0, vendored in ``models/``, converted to ONNX by
  scripts/blazeface_to_onnx.py) through ONNX Runtime: the short-range model on the whole
  picture (close-ups) and the full-range model on the whole picture at 512 px (faces down
  to ~4% of the frame height). When that finds nothing, the full-range model looks at the
  picture turned 90, 180 and 270 degrees (a phone that did not record how it was held):
  always, not "when the clock allows", so the answer never depends on how busy the machine
  is (the cost is measured in docs/sanitizer.md).
* Text: the PP-OCRv4 text *detector* (DB, Apache-2.0, vendored; its affine steps folded
  into its convolutions by scripts/fold_text_detector.py) through ONNX Runtime: where text
  is, never what it says.

Both look at one small copy (512 px on its long side: what the models take anyway), made by
area averaging from one DCT-scaled decode (1/4 of a 12 MP photo). Imported only when a check is asked
for, so the plain sanitize path never pays for numpy, OpenCV or ONNX Runtime. Boxes are
(x, y, w, h) fractions of the upright picture so callers can map them onto any resolution.
Every model file's SHA-256 is checked before it is loaded.
"""
from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import cv2
import numpy as np

from ._types import DetectorUnavailable

Box = tuple[float, float, float, float]

MODELS = Path(__file__).with_name("models")
_SHA256 = {
    "face_detection_full_range.onnx": "72eae2625f6aa03e2c252386660d324a8489c3d9596b92bc23413f4a74abd0b7",
    "face_detection_short_range.onnx": "0c56aadced89f5dcc90b01aa84bbe737443092016f7d98b661acf44e25a0ba43",
    "text_detection_ppocrv4_det.onnx": "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
    "text_detection_ppocrv4_det_folded.onnx": "d8aef2261e6478cfb69c1fdb07cdf2c444e750fbae3e7b9dcea3fe06c5de6b36",
}

# JPEG draft request (libjpeg picks the smallest 1/2, 1/4 or 1/8 scale at least this big): a
# 4032-px photo is decoded at 1/4 (1008 px), then scaled to WORK_SIDE by area averaging. Asking
# for ~500 px directly (1/8 for 12 MP, but 1/4 for 3 MP) saved ~6 ms of a ~65 ms decode and made
# the scores depend on the photo's size: the same faces scored differently at 3 and 12 MP
# (recall 33/42 against 47/52). The 1008-px copy also gives the thumbnail its pixels.
DETECT_SIDE = 1000
WORK_SIDE = 512  # longest side of the copy the detectors share (other formats are scaled to it)
FULL_SIDE = 512  # full-range model, whole picture: a face 4% of the frame is ~15 px there
# full-range model, picture turned: faces from ~9% of the frame. 224 px found the same faces
# as 256 px on both evaluation sets (sideways and upside-down faces 12-15% of the frame) with
# three fewer false alarms (a coffee cup, a rocket, a street scene), in ~3/4 of the time;
# 192 px was quicker still but fired on the coffee cup of tests/sanitizer/data.
TURNED_SIDE = 224
SHORT_SIDE = 128  # short-range model (its native input): close-ups
# Scores, chosen on the evaluation set (docs/sanitizer.md; a second, held-out set checks
# them). Highest score on any skin photo is in the docs.
FACE_SCORE = 0.7  # short-range, upright whole picture (MediaPipe's default 0.5 fired on lesions)
# full-range, upright whole picture at 512 px: small faces score low, and so do face-like
# blobs of texture (0.38-0.49 on street scenes and generated scenes, against 0.39-0.60 for real
# faces 4-9% of the frame). So a score from FULL_CANDIDATE up to FULL_FACE_SCORE is only a
# candidate: it counts when the short-range model, shown that spot from the sharper decode
# (1008 px), cropped to 3x the box and scaled to its 128 px, scores it >= VERIFY_SCORE (faces
# 0.74-0.97 on both sets; blobs 0.07-0.63; docs/sanitizer.md).
FULL_FACE_SCORE = 0.6
FULL_CANDIDATE = 0.35
VERIFY_SCORE = 0.7
VERIFY_GROW = 3.0
VERIFY_MAX = 8  # candidates looked at again, best first (each look is ~2 ms)
TURNED_FACE_SCORE = 0.7  # full-range, whole picture turned: 0.6 fired on skin
NMS_IOU = 0.3
TURNED_PASSES = True  # look at the picture turned 90/180/270 degrees when nothing is found upright
TEXT_SIDE = 512  # longest side of the text detector's input (416 lost ruler numbers and small labels)
TEXT_PIXEL = 0.3  # DB probability threshold for a text pixel
TEXT_BOX_SCORE = 0.6  # mean probability inside a region to call it text
TEXT_MIN_SIDE = 4  # px in the detector's input: smaller specks are not text anyone can read
# Text is made of strokes: its box is full of strong edges. The detector also fires on a
# smooth dark lesion (a "word-shaped" blob), which must never be blurred as text. Edges are
# found per colour channel (ink on skin can have little grey-level contrast: blue ballpoint
# on dark skin, an orange date stamp) after a 3x3 blur (sensor noise is not an edge). Measured
# on the evaluation set plus the demo's and the benchmark's photos: text boxes 0.10-0.43 of
# their pixels are edges, lesion boxes 0.000.
TEXT_EDGE_DENSITY = 0.05
TEXT_BLUR_CELLS = 2  # blocks across a text line's height when it is blurred


_verified: dict[str, str] = {}
_verify_lock = threading.Lock()


def model_path(name: str) -> str:
    """The path of a vendored model, after checking its SHA-256 (once per process)."""
    with _verify_lock:
        if name not in _verified:
            path = MODELS / name
            try:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                raise DetectorUnavailable(f"model file {name} is missing") from None
            if digest != _SHA256[name]:
                raise DetectorUnavailable(f"model file {name} is not the vetted one (sha256 {digest[:12]}...)")
            _verified[name] = str(path)
        return _verified[name]


_sessions: dict[str, object] = {}
_sessions_lock = threading.Lock()


def _session(name: str):
    """One ONNX Runtime session per model, shared by threads (run() is thread-safe). One
    thread each: the face passes and the text detector run side by side on the 2 cores
    (check()); more intra-op threads only fight each other there."""
    with _sessions_lock:
        if name not in _sessions:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            _sessions[name] = ort.InferenceSession(model_path(name), opts, providers=["CPUExecutionProvider"])
        return _sessions[name]


def _fit32(rgb: np.ndarray, side: int) -> tuple[np.ndarray, float, float]:
    """Scale so the long side is about ``side``, then pad (bottom/right, black) to multiples of
    32, as the models need. Returns the padded picture and padded/content size per axis."""
    h, w = rgb.shape[:2]
    s = side / max(h, w)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    if (nw, nh) != (w, h):
        rgb = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    pw, ph = -(-nw // 32) * 32, -(-nh // 32) * 32
    if (pw, ph) != (nw, nh):
        rgb = cv2.copyMakeBorder(rgb, 0, ph - nh, 0, pw - nw, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    return rgb, pw / nw, ph / nh


# ------------------------------------------------------------------ faces (BlazeFace)

_FULL = ("face_detection_full_range.onnx", ((4, 1),))  # anchors: (stride, anchors per cell) per layer
_SHORT = ("face_detection_short_range.onnx", ((8, 2), (16, 6)))


def _blazeface(model, img: np.ndarray, threshold: float) -> np.ndarray:
    """One BlazeFace model on a picture whose sides are multiples of 32 (any size: the models
    are fully convolutional; the regression is in input pixels, the anchors in cells).
    Rows of (x, y, w, h, score) as fractions of ``img``."""
    name, layers = model
    h, w = img.shape[:2]
    blob = cv2.dnn.blobFromImage(img, 1 / 127.5, (w, h), (127.5, 127.5, 127.5), swapRB=False)
    reg, cls = _session(name).run(None, {"input": blob})
    score = 1 / (1 + np.exp(-np.clip(cls[0, :, 0], -80, 80)))
    keep = score >= threshold
    if not keep.any():
        return np.zeros((0, 5), np.float32)
    anchors = []
    for stride, per_cell in layers:
        gh, gw = h // stride, w // stride
        ys, xs = np.mgrid[0:gh, 0:gw]
        centres = np.stack([(xs.ravel() + 0.5) / gw, (ys.ravel() + 0.5) / gh], axis=1)
        anchors.append(np.repeat(centres, per_cell, axis=0))
    a = np.concatenate(anchors)[keep]
    r = reg[0][keep]
    bw, bh = r[:, 2] / w, r[:, 3] / h
    cx, cy = r[:, 0] / w + a[:, 0], r[:, 1] / h + a[:, 1]
    return np.stack([cx - bw / 2, cy - bh / 2, bw, bh, score[keep]], axis=1).astype(np.float32)


def _whole(rgb: np.ndarray, model, side: int, threshold: float) -> np.ndarray:
    """One model on the whole picture; rows (x, y, w, h, score) as fractions of the picture."""
    img, fx, fy = _fit32(rgb, side)
    rows = _blazeface(model, img, threshold)
    rows[:, [0, 2]] *= fx
    rows[:, [1, 3]] *= fy
    return rows


def _short(rgb: np.ndarray) -> np.ndarray:
    """The short-range model on the picture padded to a square (it was trained on 128x128)."""
    h, w = rgb.shape[:2]
    side = max(h, w)
    square = cv2.copyMakeBorder(rgb, 0, side - h, 0, side - w, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    rows = _blazeface(_SHORT, cv2.resize(square, (SHORT_SIDE, SHORT_SIDE), interpolation=cv2.INTER_AREA), FACE_SCORE)
    rows[:, [0, 2]] *= side / w
    rows[:, [1, 3]] *= side / h
    return rows


def _nms(rows: np.ndarray) -> list[Box]:
    if not len(rows):
        return []
    order = np.argsort(-rows[:, 4])
    kept: list[np.ndarray] = []
    for i in order:
        b = rows[i]
        if all(_iou(b, k) < NMS_IOU for k in kept):
            kept.append(b)
    return [(float(b[0]), float(b[1]), float(b[2]), float(b[3])) for b in kept]


def _iou(a, b) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _unturn(rows: np.ndarray, k: int) -> np.ndarray:
    """Boxes found on the picture turned k*90 degrees anticlockwise (np.rot90), back in the upright frame."""
    rows = rows.copy()
    for _ in range(k % 4):  # undo one anticlockwise quarter turn: (x, y) -> (1 - y - h, x)
        x, y, w, h = rows[:, 0].copy(), rows[:, 1].copy(), rows[:, 2].copy(), rows[:, 3].copy()
        rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3] = 1 - y - h, x, h, w
    return rows


def _confirmed(rows: np.ndarray, big: np.ndarray) -> np.ndarray:
    """The candidate rows the short-range model confirms on a sharper crop of ``big``."""
    H, W = big.shape[:2]
    keep = []
    for row in rows[np.argsort(-rows[:, 4])][:VERIFY_MAX]:
        x, y, w, h = (float(v) for v in row[:4])
        side = int(max(w * W, h * H) * VERIFY_GROW)
        if side < 8:
            continue
        x0, y0 = int((x + w / 2) * W - side / 2), int((y + h / 2) * H - side / 2)
        crop = big[max(0, y0):max(0, y0 + side), max(0, x0):max(0, x0 + side)]
        pad = (max(0, -y0), max(0, y0 + side - H), max(0, -x0), max(0, x0 + side - W))
        if any(pad):
            crop = cv2.copyMakeBorder(crop, *pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        small = cv2.resize(crop, (SHORT_SIDE, SHORT_SIDE),
                           interpolation=cv2.INTER_AREA if side > SHORT_SIDE else cv2.INTER_LINEAR)
        found = _blazeface(_SHORT, np.ascontiguousarray(small), VERIFY_SCORE)
        centred = (np.abs(found[:, 0] + found[:, 2] / 2 - 0.5) < 0.2) & (np.abs(found[:, 1] + found[:, 3] / 2 - 0.5) < 0.2)
        if centred.any():
            keep.append(row)
    return np.array(keep, np.float32).reshape(-1, 5)


def faces(rgb: np.ndarray, *, rotations: bool | None = None, big: np.ndarray | None = None) -> list[Box]:
    """Faces in an upright RGB picture (uint8 HxWx3, at most ~WORK_SIDE on its long side).

    Upright: the short-range model on the whole picture (faces from ~15% of the frame height
    up to close-ups) and the full-range model on the whole picture at 512 px (down to ~4%);
    its low scores are confirmed on ``big`` (the same picture, sharper; default ``rgb``).
    When they find nothing, the full-range model on the picture turned 90, 180 and 270
    degrees (it is the model that finds a face lying on its side).
    """
    rgb = fit(rgb)
    found = _upright_faces(rgb, rgb if big is None else big)
    if not len(found) and (TURNED_PASSES if rotations is None else rotations):
        found = np.concatenate([_turned(_turned_copy(rgb), k) for k in (1, 2, 3)])
    return _clip(_nms(found))


def _upright_faces(rgb: np.ndarray, big: np.ndarray) -> np.ndarray:
    full = _whole(rgb, _FULL, FULL_SIDE, FULL_CANDIDATE)
    sure = full[full[:, 4] >= FULL_FACE_SCORE]
    maybe = full[full[:, 4] < FULL_FACE_SCORE]
    if len(maybe):
        maybe = _confirmed(maybe, np.ascontiguousarray(big))
    return np.concatenate([_short(rgb), sure, maybe])


def _turned_copy(rgb: np.ndarray) -> np.ndarray:
    """The picture at TURNED_SIDE, made once for the three turns (turning the 512 px copy
    first cost a slow strided copy per turn)."""
    h, w = rgb.shape[:2]
    s = TURNED_SIDE / max(h, w)
    return cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def _turned(small: np.ndarray, k: int) -> np.ndarray:
    """The full-range model on ``small`` turned k*90 degrees; boxes in the upright frame."""
    return _unturn(_whole(np.ascontiguousarray(np.rot90(small, k)), _FULL, TURNED_SIDE, TURNED_FACE_SCORE), k)


def _clip(boxes: list[Box]) -> list[Box]:
    out = []
    for x, y, w, h in boxes:
        x0, y0, x1, y1 = max(0.0, x), max(0.0, y), min(1.0, x + w), min(1.0, y + h)
        if x1 > x0 and y1 > y0:
            out.append((x0, y0, x1 - x0, y1 - y0))
    return out


def fit(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    if max(h, w) <= WORK_SIDE:
        return rgb
    s = WORK_SIDE / max(h, w)
    return cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


# ------------------------------------------------------------------ text (PP-OCRv4 DB detector)

# the PP-OCRv4 detector with its per-layer affine steps folded into the convolutions (exact
# algebra, ~20% quicker: scripts/fold_text_detector.py); the upstream file stays beside it for
# the test that both compute the same
_TEXT = "text_detection_ppocrv4_det_folded.onnx"
_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


def _stroke_edges(rgb: np.ndarray) -> np.ndarray:
    smooth = cv2.GaussianBlur(rgb, (3, 3), 0)
    return np.maximum.reduce([cv2.Canny(np.ascontiguousarray(smooth[:, :, i]), 80, 200) for i in range(3)])


def text(rgb: np.ndarray) -> list[Box]:
    """Regions of an upright RGB picture that look like text (printed or handwritten)."""
    h, w = rgb.shape[:2]
    s = min(1.0, TEXT_SIDE / max(h, w))
    nw, nh = max(32, round(w * s / 32) * 32), max(32, round(h * s / 32) * 32)
    small = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA)
    x = ((small.astype(np.float32) - _MEAN) / _STD).transpose(2, 0, 1)[None]
    prob = _session(_TEXT).run(None, {"x": x})[0][0, 0]
    mask = (prob > TEXT_PIXEL).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    boxes: list[Box] = []
    edges = None
    for c in contours:
        bx, by, bw, bh = cv2.boundingRect(c)
        if min(bw, bh) < TEXT_MIN_SIDE:
            continue
        region = np.zeros_like(mask)
        cv2.drawContours(region[by:by + bh, bx:bx + bw], [c - (bx, by)], -1, 1, -1)
        if float(prob[by:by + bh, bx:bx + bw][region[by:by + bh, bx:bx + bw] > 0].mean()) < TEXT_BOX_SCORE:
            continue
        # DB finds the shrunken core of a text line: grow it back (DB's "unclip", ratio 1.5)
        grow = cv2.contourArea(c) * 1.5 / max(1.0, cv2.arcLength(c, True))
        x0, y0 = max(0.0, bx - grow), max(0.0, by - grow)
        x1, y1 = min(nw, bx + bw + grow), min(nh, by + bh + grow)
        if edges is None:
            edges = _stroke_edges(small)
        if edges[int(y0):int(y1) + 1, int(x0):int(x1) + 1].mean() / 255 < TEXT_EDGE_DENSITY:
            continue
        boxes.append((x0 / nw, y0 / nh, (x1 - x0) / nw, (y1 - y0) / nh))
    return boxes


# ------------------------------------------------------------------ blurring

def blur(im, boxes, *, cells: int = 8):
    """Pixelate then blur each box (padded) in a PIL RGB/L image, in place; returns it.
    ``cells``: pixel blocks across the box's short side (8 for a face; 2 for a line of
    text, so each letter melts into the block beside it and the text detector no longer
    sees a line of text)."""
    from PIL import ImageFilter

    W, H = im.size
    for fx, fy, fw, fh in boxes:
        pad_w, pad_h = fw * 0.25, fh * 0.35
        x0 = max(0, int((fx - pad_w) * W))
        y0 = max(0, int((fy - pad_h) * H))
        x1 = min(W, int((fx + fw + pad_w) * W) + 1)
        y1 = min(H, int((fy + fh + pad_h) * H) + 1)
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        region = im.crop((x0, y0, x1, y1))
        # coarse enough that the face detector no longer finds the blurred face (it still
        # found one with cells of 1/12 and a blur of 1/15 of the box)
        cell = max(2, min(x1 - x0, y1 - y0) // cells)
        small = region.resize((max(1, (x1 - x0) // cell), max(1, (y1 - y0) // cell)), resample=0)
        region = small.resize(region.size, resample=0)
        region = region.filter(ImageFilter.GaussianBlur(max(2, cell * 8 // 10)))
        im.paste(region, (x0, y0))
    return im


_pool = None
_pool_lock = threading.Lock()


def beside(fn, *args):
    """Run ``fn(*args)`` on the check's second thread (the machine's other core); a future.
    The bottom half of a two-piece decode runs there, then the second worker of check()."""
    global _pool
    with _pool_lock:
        if _pool is None:
            from concurrent.futures import ThreadPoolExecutor

            _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="identifiability-check")
    return _pool.submit(fn, *args)


class _TwoThreads:
    """A short list of tasks run in order by two threads (this one and ``beside``'s), each
    taking the next task when it is free, so neither core waits while work is left. The
    first error stops the rest and is raised by ``run``."""

    def __init__(self, tasks) -> None:
        self._tasks, self._next, self._lock, self.error = list(tasks), 0, threading.Lock(), None

    def _work(self) -> None:
        while True:
            with self._lock:
                if self.error is not None or self._next >= len(self._tasks):
                    return
                task = self._tasks[self._next]
                self._next += 1
            try:
                task()
            except BaseException as exc:  # noqa: BLE001 - handed to run(), which raises it
                with self._lock:
                    self.error = self.error or exc

    def run(self) -> None:
        other = beside(self._work)
        self._work()
        other.result()
        if self.error is not None:
            raise self.error


def check(rgb: np.ndarray, *, want_faces: bool, want_text: bool, then=None) -> tuple[list[Box], list[Box]]:
    """The identifiability check on one upright RGB picture (the decode, ~1000 px): (face
    boxes, text boxes). Both detectors look at a WORK_SIDE copy; the face check confirms its
    doubtful finds on the decode itself. The model runs release the GIL, so the work is
    shared by two threads, one per core, in this order: the full-range face pass and the
    text detector, the short-range pass, the confirmation of doubtful finds, the three
    turned passes, then ``then`` (no arguments: the thumbnail). A turned pass is skipped
    once an upright pass has found a face; otherwise it runs without waiting for them (most
    photos have no face, and waiting would leave a core idle) and its finds count only if
    the upright passes found none: the answer is the one-thread answer of faces()."""
    big = np.ascontiguousarray(rgb)
    small = fit(big)
    found: dict[str, np.ndarray] = {}
    full_done = threading.Event()
    texts: list[list[Box]] = []
    turned_small: list[np.ndarray] = []
    turned_lock = threading.Lock()

    def full_pass() -> None:
        try:
            rows = _whole(small, _FULL, FULL_SIDE, FULL_CANDIDATE)
            found["sure"] = rows[rows[:, 4] >= FULL_FACE_SCORE]
            found["maybe"] = rows[rows[:, 4] < FULL_FACE_SCORE]
        finally:
            full_done.set()

    def confirm_pass() -> None:
        full_done.wait()
        maybe = found.get("maybe")
        if maybe is not None and len(maybe):
            found["confirmed"] = _confirmed(maybe, big)

    def upright_found() -> bool:
        return any(len(found[k]) for k in ("sure", "short", "confirmed") if k in found)

    def turned_pass(k: int) -> None:
        if upright_found():
            return
        with turned_lock:
            if not turned_small:
                turned_small.append(_turned_copy(small))
        found[f"turned{k}"] = _turned(turned_small[0], k)

    tasks = []
    if want_faces:
        tasks.append(full_pass)
    if want_text:
        tasks.append(lambda: texts.append(text(small)))
    if want_faces:
        tasks += [lambda: found.__setitem__("short", _short(small)), confirm_pass]
        if TURNED_PASSES:
            tasks += [lambda k=k: turned_pass(k) for k in (1, 2, 3)]
    if then is not None:
        tasks.append(then)
    _TwoThreads(tasks).run()
    if not want_faces:
        return [], texts[0] if texts else []
    rows = np.concatenate([found[k] for k in ("short", "sure", "confirmed") if k in found])
    if not len(rows):
        turned = [found[f"turned{k}"] for k in (1, 2, 3) if f"turned{k}" in found]
        rows = np.concatenate(turned) if turned else rows
    return _clip(_nms(rows)), (texts[0] if texts else [])
