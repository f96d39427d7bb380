"""Hypothesis mutates real, metadata-laden images.

Whatever the damage, the sanitizer either returns an image with none of the
planted strings in it, or refuses with ImageRefused. Nothing else.
"""
from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handlers.sanitizer import ImageRefused, Limits, sanitize

from . import imagegen as g


@lru_cache(maxsize=None)
def seeds() -> dict[str, tuple[bytes, g.Planted]]:
    tmp = Path(tempfile.mkdtemp(prefix="sanitizer-seeds-"))
    out = {}
    for name, make, kw in (
        ("jpeg", g.planted_jpeg, {"width": 96, "height": 64}),
        ("jpeg-progressive", g.planted_jpeg, {"width": 96, "height": 64, "progressive": True, "orientation": 6}),
        ("png", g.planted_png, {}),
        ("webp", g.planted_webp, {}),
        ("gif", g.planted_gif, {}),
        ("tiff", g.planted_tiff, {}),
        ("heic", g.planted_heic, {}),
    ):
        p = g.Planted()
        out[name] = (make(tmp, p, **kw).read_bytes(), p)
    return out


# Half the mutations land in the first 2 KiB, where the segment/chunk structure lives.
pos = st.one_of(st.integers(0, 2048), st.integers(0, 10**9))
mutation = st.one_of(
    st.tuples(st.just("flip"), pos, st.integers(1, 255)),
    st.tuples(st.just("set"), pos, st.sampled_from([0x00, 0xFF, 0xD9, 0xDA, 0xC0, 0xE1, 0x01])),
    st.tuples(st.just("cut"), pos, st.just(0)),
    st.tuples(st.just("insert"), pos, st.integers(0, 255)),
    st.tuples(st.just("delete"), pos, st.integers(1, 64)),
)


def mutate(data: bytes, ops) -> bytes:
    buf = bytearray(data)
    for op, where, value in ops:
        if not buf:
            break
        i = where % len(buf)
        if op == "flip":
            buf[i] ^= value
        elif op == "set":
            buf[i] = value
        elif op == "cut":
            del buf[i:]
        elif op == "insert":
            buf[i:i] = bytes((value,))
        elif op == "delete":
            del buf[i:i + value]
    return bytes(buf)


def check(data: bytes, planted: g.Planted) -> None:
    try:
        result = sanitize(data, limits=Limits(max_pixels=4_000_000), detect_faces=False)
    except ImageRefused as exc:
        assert exc.reason in {"not_image", "truncated", "too_large", "too_many_pixels", "corrupt", "empty",
                              "unsupported_format"}
        assert "\n" not in str(exc)
        return
    leaked = planted.found_in(result.data)
    assert not leaked, f"planted strings survived: {leaked}"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["jpeg", "jpeg-progressive"]), ops=st.lists(mutation, min_size=1, max_size=4))
def test_mutated_jpegs(name, ops):
    data, planted = seeds()[name]
    check(mutate(data, ops), planted)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["png", "webp", "gif", "tiff", "heic"]), ops=st.lists(mutation, min_size=1, max_size=3))
def test_mutated_other_formats(name, ops):
    data, planted = seeds()[name]
    check(mutate(data, ops), planted)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=2048))
def test_random_bytes_never_crash(blob):
    for prefix in (b"", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x01\x00\x00WEBP", b"II*\x00"):
        try:
            sanitize(prefix + blob, detect_faces=False)
        except ImageRefused:
            pass
