"""Read back the (already sanitised) ICC profile from our own clean JPEG output."""
from __future__ import annotations


def icc_profile_of(clean: bytes) -> bytes | None:
    parts: dict[int, bytes] = {}
    pos = 2
    while pos + 4 <= len(clean) and clean[pos] == 0xFF and 0xE0 <= clean[pos + 1] <= 0xEF:
        ln = (clean[pos + 2] << 8) | clean[pos + 3]
        seg = clean[pos + 4:pos + 2 + ln]
        if clean[pos + 1] == 0xE2 and seg[:12] == b"ICC_PROFILE\x00":
            parts[seg[12]] = seg[14:]
        pos += 2 + ln
    return b"".join(parts[k] for k in sorted(parts)) or None
