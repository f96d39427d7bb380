"""`referral-bot sanitize` as a user runs it: a real child process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from . import imagegen as g
from .checks import assert_clean

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bot.cli", "sanitize", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_single_file_with_report(tmp_path):
    p = g.Planted()
    src = g.planted_jpeg(tmp_path, p)
    out = tmp_path / "clean.jpg"
    r = cli(str(src), "-o", str(out), "--report")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    rep = json.loads(r.stdout)
    assert rep["output"] == str(out) and rep["media_type"] == "image/jpeg"
    assert "GPS location" in rep["removed"] and "camera serial number" in rep["removed"]
    assert rep["faces_checked"] is False
    assert_clean(out, p)
    assert [f.name for f in tmp_path.iterdir() if f.name.startswith(".sanitize-")] == []


def test_batch_out_dir_names_never_carry_input_names(tmp_path):
    srcs = []
    for name in ("Mrs Jane Smith 1943-02-01.jpg", "rash.png", "bad.pdf"):
        path = tmp_path / name
        if name.endswith(".jpg"):
            path.write_bytes(g.jpeg_bytes(g.photo(60, 40)))
        elif name.endswith(".png"):
            g.photo(30, 20).save(path)
        else:
            path.write_bytes(b"%PDF-1.4\n%%EOF\n")
        srcs.append(str(path))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    r = cli(*srcs, "--out-dir", str(out_dir), "--report")
    assert r.returncode == 1  # one refusal
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.pdf" in lines[0] and "PDF" in lines[0]
    written = sorted(p.name for p in out_dir.iterdir())
    assert len(written) == 2
    assert written[0].endswith(".jpg") and written[1].endswith(".png")
    for name in written:
        assert "Smith" not in name and "Jane" not in name and "rash" not in name and "1943" not in name
    reps = json.loads(r.stdout)
    assert [x.get("refused") for x in reps] == [None, None, "not_image"]


@pytest.mark.parametrize(
    "content,extra,reason_word",
    [
        (b"", [], "empty"),
        (b"%PDF-1.7\n", [], "PDF"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", [], "SVG"),
        (b"<!doctype html><p>hi", [], "HTML"),
        (None, ["--max-bytes", "500"], "too big"),
        (None, ["--max-pixels", "100"], "too large"),
        ("truncated", [], "incomplete"),
    ],
)
def test_refusal_is_one_line_and_leaves_nothing(tmp_path, content, extra, reason_word):
    src = tmp_path / "input.bin"
    if content is None:
        src.write_bytes(g.jpeg_bytes(g.photo(64, 48)))
    elif content == "truncated":
        src.write_bytes(g.jpeg_bytes(g.photo(64, 48))[:-300])
    else:
        src.write_bytes(content)
    out = tmp_path / "out.jpg"
    r = cli(str(src), "-o", str(out), *extra)
    assert r.returncode != 0
    assert r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert reason_word in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.bin"]


def test_missing_input_is_a_plain_message(tmp_path):
    r = cli(str(tmp_path / "nope.jpg"), "-o", str(tmp_path / "o.jpg"))
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_blur_faces_flag(tmp_path):
    src = tmp_path / "face.jpg"
    src.write_bytes(g.face_photo())
    r = cli(str(src), "-o", str(tmp_path / "o.jpg"), "--blur-faces", "--report")
    rep = json.loads(r.stdout)
    assert r.returncode == 0 and rep["faces"] == 1 and rep["faces_blurred"] is True


def test_text_flags(tmp_path):
    from . import evalset

    src = tmp_path / "label.jpg"
    src.write_bytes(evalset._jpeg(evalset._label(evalset.skin(1600, 1200, 4), 0.03, 2)))
    r = cli(str(src), "-o", str(tmp_path / "o.jpg"), "--detect-text", "--report")
    rep = json.loads(r.stdout)
    assert r.returncode == 0 and rep["text_checked"] is True and rep["text_regions"] >= 1
    assert rep["text_blurred"] is False and len(rep["text_boxes"]) == rep["text_regions"]
    r = cli(str(src), "-o", str(tmp_path / "o.jpg"), "--blur-text", "--report")
    rep = json.loads(r.stdout)
    assert r.returncode == 0 and rep["text_blurred"] is True and "text on the photo (blurred)" in rep["removed"]


def test_start_up_imports_stay_lean(tmp_path):
    """The JPEG path of the command must not import Pillow, numpy or OpenCV."""
    src = tmp_path / "a.jpg"
    src.write_bytes(g.jpeg_bytes(g.photo(64, 48)))
    code = (
        "import sys; from bot.cli import main; "
        f"rc = main(['sanitize', {str(src)!r}, '-o', {str(tmp_path / 'b.jpg')!r}]); "
        "heavy = [m for m in ('PIL', 'numpy', 'cv2', 'nio', 'aiosqlite', 'dataclasses') if m in sys.modules]; "
        "print(rc, heavy)"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env={**os.environ})
    assert r.stdout.strip() == "0 []", r.stdout + r.stderr


def test_native_decoder_noise_does_not_reach_stderr(tmp_path):
    """libtiff prints its own errors on fd 2; the user must still see exactly one line."""
    src = g.planted_tiff(tmp_path, g.Planted())
    from PIL import Image

    strip = Image.open(src).tag_v2[273][0]  # StripOffsets
    data = bytearray(src.read_bytes())
    data[strip + 4:strip + 204] = b"\x00" * 200  # damage the deflate-compressed strip
    bad = tmp_path / "bad.tif"
    bad.write_bytes(bytes(data))
    r = cli(str(bad), "-o", str(tmp_path / "o.png"))
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "o.png").exists()
