"""The sanitizer's worker processes: time limit, memory cap, a fresh worker after a kill,
and the in-process path for a JPEG that needs no check (issue 9, finding 7)."""
from __future__ import annotations

import io

import pytest
from PIL import Image

from bot.sanitize_pool import SanitizerPool
from handlers.sanitizer import ImageRefused, sanitize
from tests.sanitizer import evalset
from tests.sanitizer import imagegen as g


@pytest.fixture(scope="module")
def pool():
    p = SanitizerPool().start()
    yield p
    p.close()


async def test_worker_gives_the_same_result_as_the_library(pool):
    data = g.face_photo()
    got = await pool(data, detect_faces=True, detect_text=True)
    want = sanitize(data, detect_faces=True, detect_text=True)
    assert got.data == want.data and got.faces == want.faces == 1 and got.face_boxes == want.face_boxes
    assert got.text_checked and got.text_boxes == want.text_boxes
    blurred = await pool(data, blur_faces=True)
    assert blurred.faces_blurred and not blurred.lossless


async def test_refusals_come_back_as_refusals(pool):
    with pytest.raises(ImageRefused) as exc:
        await pool(b"%PDF-1.7 not an image", detect_faces=True)
    assert exc.value.reason == "not_image" and "PDF" in str(exc.value)


async def test_a_jpeg_needing_no_check_is_cleaned_without_a_worker():
    p = SanitizerPool()  # never started
    try:
        result = await p(g.face_photo(), detect_faces=False)
        assert result.media_type == "image/jpeg" and not result.faces_checked
        assert p.spawned == 0
        png = io.BytesIO()
        Image.new("RGB", (32, 24)).save(png, "PNG")
        await p(png.getvalue(), detect_faces=False)  # decoding a PNG is a decoder's job: a worker
        assert p.spawned == 1
    finally:
        p.close()


async def test_an_image_over_the_time_limit_is_refused_and_the_worker_replaced():
    p = SanitizerPool(timeout_s=0.05).start()
    try:
        slow = evalset._jpeg(evalset.skin(4032, 3024, 3))  # a 12 MP check takes far more than 50 ms
        with pytest.raises(ImageRefused) as exc:
            await p(slow, detect_faces=True, detect_text=True)
        assert exc.value.reason == "too_slow" and "\n" not in str(exc.value)
        assert p.kills == 1
        p.timeout_s = 30
        assert (await p(g.face_photo(), detect_faces=True)).faces == 1  # a fresh worker took over
        assert p.spawned == 2
    finally:
        p.close()


def _fresh_worker_vmsize_mb() -> int:
    """A warm worker's address space before its first photo (a used one has grown: glibc
    keeps the arenas of earlier pictures, so its size depends on which tests ran first)."""
    probe = SanitizerPool(memory_mb=0).start()
    try:
        status = open(f"/proc/{probe._idle[0].proc.pid}/status").read().splitlines()
        return next(int(line.split()[1]) // 1024 for line in status if line.startswith("VmSize:"))
    finally:
        probe.close()


async def test_an_image_over_the_memory_cap_is_refused_and_the_pool_goes_on(pool):
    size_mb = _fresh_worker_vmsize_mb()
    p = SanitizerPool(memory_mb=size_mb + 150).start()  # room for the code, not for a 40 MP picture
    try:
        big = io.BytesIO()
        Image.new("RGB", (7300, 5500), (200, 150, 120)).save(big, "PNG")
        with pytest.raises(ImageRefused) as exc:
            await p(big.getvalue(), detect_faces=True)
        assert exc.value.reason == "too_many_pixels"  # the sanitizer's MemoryError sentence
        assert (await p(g.face_photo(), detect_faces=True)).faces == 1
        # within its limits (40 MP < 60 MP) the same picture is fine under the default cap
        assert (await pool(big.getvalue(), detect_faces=True)).width == 7300
    finally:
        p.close()
