"""Short, typeable ids: ``C-7K3QX9`` (consent), ``R-M4T2PA`` (referral), ``I-…`` (image).

Ids are derived from the transport event id that created the object (plus a
counter to step past a collision), so handling is deterministic and needs no
clock or random source. The alphabet is Crockford base32 (no I, L, O, U), and
user input is normalised forgivingly: case-insensitive, ``O`` read as ``0``,
``I``/``L`` as ``1``, the dash optional (``r7k3qx9`` == ``R-7K3QX9``).

Forgiving is not the same as loose: an id is recognised only in its real shape, the
prefix letter plus exactly six characters of the alphabet. A looser reading turned
words into ids: "cardiology" is ``c`` + ``ardiology``, which the old 4-12 character
rule read as ``C-ARD1010GY``, so ``!refer cardiology C-1N4TQG ...`` lost its real
consent id. Free text (photo captions) only counts an id written with its dash
(``find_ids``), so a word like "reddish" is never read as ``R-EDD1SH``.
"""
from __future__ import annotations

import hashlib
import re

__all__ = ["make_id", "normalise_id", "looks_like_id", "find_ids"]

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_BODY_LEN = 6
_FIX = str.maketrans({"O": "0", "I": "1", "L": "1"})
_ID_RE = re.compile(r"^([A-Za-z])-?([0-9A-Za-z]{%d})$" % _BODY_LEN)
_DASHED_RE = re.compile(r"(?<![0-9A-Za-z-])([A-Za-z])-([0-9A-Za-z]{%d})(?![0-9A-Za-z-])" % _BODY_LEN)


def make_id(prefix: str, seed: str, attempt: int = 0) -> str:
    """Deterministic id ``<prefix>-XXXXXX`` from *seed* (e.g. the event id)."""
    digest = hashlib.sha256(f"{prefix}|{seed}|{attempt}".encode("utf-8")).digest()
    n = int.from_bytes(digest[:8], "big")
    chars = []
    for _ in range(_BODY_LEN):
        chars.append(_ALPHABET[n & 31])
        n >>= 5
    return f"{prefix}-{''.join(chars)}"


def normalise_id(text: str, prefix: str) -> str | None:
    """Canonical id for user input *text* with the expected *prefix*, or None if it is
    not an id of that kind."""
    m = _ID_RE.match(text.strip().strip(".,;:()[]<>\"'"))
    if not m or m.group(1).upper() != prefix.upper():
        return None
    body = m.group(2).upper().translate(_FIX)
    if any(ch not in _ALPHABET for ch in body):
        return None
    return f"{prefix.upper()}-{body}"


def looks_like_id(text: str, prefix: str) -> bool:
    return normalise_id(text, prefix) is not None


def find_ids(text: str, prefix: str) -> list[str]:
    """Canonical ids of kind *prefix* written WITH their dash anywhere in free text
    (e.g. a photo caption "R-7K3QX9 close-up"), in order, without repeats."""
    out: list[str] = []
    for m in _DASHED_RE.finditer(text):
        ident = normalise_id(m.group(0), prefix)
        if ident is not None and ident not in out:
            out.append(ident)
    return out
