"""The identifiability check (faces and text) on the shared evaluation set (evalset.py).

The benchmark (`make bench`) runs the same set at 12 MP with the shared corpus and prints
the numbers side by side with the old Haar cascade; here the set runs at 3 MP (the detector
sees the same ~1000-px copy either way) and each case the check is built for is asserted.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from handlers.sanitizer import DetectorUnavailable, sanitize
from handlers.sanitizer import _detect

from . import evalset
from .checks import displayed

LONG_SIDE = 2016


@pytest.fixture(scope="module")
def cases() -> dict[str, evalset.Case]:
    return {c.name: c for c in evalset.cases(LONG_SIDE, corpus=False)}


@pytest.fixture(scope="module")
def results(cases) -> dict[str, object]:
    return {name: sanitize(c.make(), detect_faces=True, detect_text=True) for name, c in cases.items()}


def _found(case: evalset.Case, result) -> bool:
    if case.face_box is None:
        return result.faces > 0
    return evalset._hits(case.face_box, result.face_boxes)


@pytest.mark.parametrize("name", [
    "astronaut-6pct", "hopper-6pct", "astronaut-9pct", "hopper-25pct",  # small and large
    "astronaut-exif6", "hopper-exif8",  # stored sideways, EXIF orientation applied first
    "hopper-masked",  # surgical mask
    "astronaut-tilt30", "hopper-tilt30",  # head tilted 30 degrees
    "astronaut-sideways-no-exif", "astronaut-upside-down-no-exif",  # only the turned passes see these
    "astronaut-closeup", "hopper-closeup", "cameraman-closeup",  # the short-range model
    "pkg-astronaut", "pkg-hopper", "pkg-cameraman",
])
def test_face_found(cases, results, name):
    assert _found(cases[name], results[name]), f"{name}: {results[name].face_boxes}"


def test_no_face_on_skin_photos_or_package_photos(cases, results):
    """0 false alarms on skin (with lesions, hairs, labels, rulers, writing) is the target."""
    fired = [n for n, c in cases.items() if c.faces is False and results[n].faces]
    skin = [n for n in fired if cases[n].group in ("skin", "text")]
    assert skin == []
    # today at 3 MP: the coffee cup (turned sideways, in the last-resort pass) and the rocket
    # (the full-range pass at 512 px, 0.57); at 12 MP the benchmark counts all face-free pictures
    assert set(fired) <= {"pkg-coffee", "pkg-rocket"}, fired


def test_face_recall_on_the_set(cases, results):
    labelled = [n for n, c in cases.items() if c.faces]
    found = [n for n in labelled if _found(cases[n], results[n])]
    assert len(found) / len(labelled) >= 0.85, sorted(set(labelled) - set(found))


@pytest.mark.parametrize("name", [
    "text-label-small", "text-label", "text-label-large-tilted", "text-wristband", "text-handwriting",
    "text-handwriting-small", "text-ruler-numbers", "text-scale-bar", "text-date-stamp", "pkg-page",
])
def test_text_found(results, name):
    assert results[name].text_checked and results[name].text_regions >= 1


def test_no_text_on_plain_skin(cases, results):
    """The text detector also fires on a smooth dark lesion; the edge-density filter stops it."""
    assert [n for n, c in cases.items() if c.group == "skin" and results[n].text_regions] == []


def test_ruler_ticks_without_numbers_are_not_text(results):
    assert results["text-ruler-ticks-only"].text_regions == 0


def test_text_not_looked_for_unless_asked(cases):
    result = sanitize(cases["text-label"].make())
    assert result.faces_checked and not result.text_checked and result.text_regions == 0


def test_blur_text_and_faces_together(cases):
    """One call blurs both; afterwards neither detector finds anything where they were."""
    label = cases["text-wristband"].make()
    result = sanitize(label, blur_faces=True, blur_text=True)
    assert result.text_blurred and not result.faces_blurred and not result.lossless
    assert "text on the photo (blurred)" in result.removed
    assert _detect.text(np.asarray(displayed(result.data).convert("RGB"))) == []
    both = _with_label(cases["hopper-18pct"].make())
    result = sanitize(both, blur_faces=True, blur_text=True)
    assert result.faces_blurred and result.text_blurred
    after = np.asarray(displayed(result.data).convert("RGB"))
    assert _detect.faces(after) == [] and _detect.text(after) == []


def _with_label(jpeg: bytes) -> bytes:
    im = Image.open(io.BytesIO(jpeg)).convert("RGB")
    im = evalset._label(im, 0.03, 11)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_report_carries_the_boxes(cases):
    rep = sanitize(cases["text-label"].make(), detect_text=True).report()
    assert rep["text_checked"] is True and rep["text_regions"] == len(rep["text_boxes"]) >= 1
    for box in rep["text_boxes"] + rep["face_boxes"]:
        assert len(box) == 4 and all(0 <= v <= 1 for v in box)


def test_a_model_file_that_is_not_the_vetted_one_is_never_loaded(tmp_path, monkeypatch):
    for name in _detect._SHA256:
        (tmp_path / name).write_bytes((_detect.MODELS / name).read_bytes())
    damaged = tmp_path / "face_detection_full_range.onnx"
    raw = bytearray(damaged.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte
    damaged.write_bytes(bytes(raw))
    monkeypatch.setattr(_detect, "MODELS", tmp_path)
    monkeypatch.setattr(_detect, "_verified", {})
    monkeypatch.setattr(_detect, "_sessions", {})
    with pytest.raises(DetectorUnavailable):
        sanitize(evalset._jpeg(evalset.skin(640, 480, 1)))
    # without the check asked for, the sanitizer does not need the models at all
    assert sanitize(evalset._jpeg(evalset.skin(640, 480, 1)), detect_faces=False).width == 640


def test_models_and_their_licence_ship_with_the_package():
    names = {p.name for p in _detect.MODELS.iterdir()}
    assert set(_detect._SHA256) <= names and {"LICENSE-Apache-2.0.txt", "NOTICE.md"} <= names
    notice = (_detect.MODELS / "NOTICE.md").read_text()
    for name, digest in _detect._SHA256.items():
        assert name in notice and digest in notice


def test_the_demo_and_benchmark_skin_photos_are_not_flagged():
    """The product's own generated skin photos (demo, Matrix benchmark) carry nothing to find."""
    from bot.matrix.photo import make_phone_photo, make_photo

    for data in (make_photo(seed=3), make_phone_photo(seed=21)):
        result = sanitize(data, detect_faces=True, detect_text=True)
        assert (result.faces, result.text_regions) == (0, 0)


@pytest.mark.parametrize("name,size", [("face_detection_full_range", 192), ("face_detection_short_range", 128)])
def test_the_onnx_face_models_compute_what_googles_tflite_models_compute(name, size):
    """The .onnx files are translated from Google's .tflite ones (scripts/blazeface_to_onnx.py);
    on the same picture both give the same boxes and scores (the .tflite run by OpenCV)."""
    import cv2

    from .imagegen import face_photo

    portrait = np.asarray(Image.open(io.BytesIO(face_photo())).convert("RGB").resize((size, size)))
    blob = cv2.dnn.blobFromImage(portrait, 1 / 127.5, (size, size), (127.5, 127.5, 127.5), swapRB=False)
    net = cv2.dnn.readNetFromTFLite(str(_detect.MODELS / f"{name}.tflite"))
    net.setInput(blob)
    outs = net.forward(net.getUnconnectedOutLayersNames())
    ref_reg = next(o for o in outs if o.shape[-1] == 16).reshape(-1, 16)
    ref_cls = next(o for o in outs if o.shape[-1] == 1).reshape(-1)
    reg, cls = _detect._session(f"{name}.onnx").run(None, {"input": blob})
    assert reg.reshape(-1, 16).shape == ref_reg.shape
    np.testing.assert_allclose(cls.reshape(-1), ref_cls, atol=2e-3, rtol=1e-3)
    np.testing.assert_allclose(reg.reshape(-1, 16), ref_reg, atol=2e-2, rtol=1e-3)
    assert ref_cls.max() > 0  # the portrait is found, so the comparison covers a real detection


def test_the_folded_text_model_computes_what_the_upstream_one_computes(cases):
    """The text detector that runs is PP-OCRv4's with its affine steps folded into the
    convolutions (scripts/fold_text_detector.py): on real pictures its probability map
    equals the upstream file's to float rounding, and the boxes found are the same."""
    upstream = "text_detection_ppocrv4_det.onnx"
    assert _detect._TEXT != upstream
    for name in ("text-label", "text-wristband", "text-handwriting-small", "text-ruler-numbers", "skin-00"):
        picture = _detect.fit(np.asarray(displayed(cases[name].make()).convert("RGB")))
        x = ((picture.astype(np.float32) - _detect._MEAN) / _detect._STD).transpose(2, 0, 1)[None]
        h, w = x.shape[2:]
        x = x[:, :, : h // 32 * 32, : w // 32 * 32]
        folded = _detect._session(_detect._TEXT).run(None, {"x": x})[0]
        original = _detect._session(upstream).run(None, {"x": x})[0]
        np.testing.assert_allclose(folded, original, atol=1e-4)  # measured: at most 3e-5 (thresholds are 0.3, 0.6)
    for name in ("text-label", "text-wristband"):
        assert _detect.text(_detect.fit(np.asarray(displayed(cases[name].make()).convert("RGB"))))


def test_the_check_shares_its_work_between_two_threads_and_gives_what_one_thread_gives(cases):
    """check() runs the passes on two threads; its answer is the one-thread answer (faces()
    then text()), turned passes included, and an error in any pass is raised, not lost."""
    for name in ("hopper-6pct", "astronaut-sideways-no-exif", "text-wristband", "skin-00"):
        rgb = np.asarray(displayed(cases[name].make()).convert("RGB"))
        big = np.ascontiguousarray(rgb)
        small = _detect.fit(big)
        assert _detect.check(rgb, want_faces=True, want_text=True) == (_detect.faces(small, big=big), _detect.text(small))


def test_an_error_in_a_pass_on_the_other_thread_reaches_the_caller(cases, monkeypatch):
    rgb = np.asarray(displayed(cases["skin-00"].make()).convert("RGB"))

    def broken(_picture):
        raise DetectorUnavailable("model file text_detection is missing")

    monkeypatch.setattr(_detect, "text", broken)
    with pytest.raises(DetectorUnavailable):
        _detect.check(rgb, want_faces=True, want_text=True)
    assert _detect.check(rgb, want_faces=True, want_text=False) == ([], [])  # the pool still works
