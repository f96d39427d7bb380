"""Pseudonymous patient references: HMAC-SHA256 with the deployment secret.

Pure (no I/O). The bot never stores a patient reference (name, NHS number,
hospital number) in clear: ``PatientRefHasher(secret).hash(text)`` is what goes
into ``ConsentRecord.patient_ref``. The same reference typed differently
(spaces, dashes, case) hashes the same: whitespace, ``-`` and ``.`` are dropped
and letters upper-cased before hashing.

The secret comes from the deployment (bot config); it must be at least 16 bytes.
Changing it makes earlier hashes unmatchable, which is intended when rotating.
"""
from __future__ import annotations

import hashlib
import hmac
import re

__all__ = ["PatientRefHasher", "normalise_patient_ref"]

_DROP = re.compile(r"[\s\-.]+")


def normalise_patient_ref(text: str) -> str:
    """Canonical form of a patient reference: no spaces/dashes/dots, upper case."""
    return _DROP.sub("", text).upper()


class PatientRefHasher:
    """Keyed hash of patient references. ``hash()`` returns ``"hmac-sha256:<hex>"``."""

    PREFIX = "hmac-sha256:"

    def __init__(self, secret: bytes):
        if isinstance(secret, str):  # tolerate str secrets from config files
            secret = secret.encode("utf-8")
        if len(secret) < 16:
            raise ValueError("the patient-reference secret must be at least 16 bytes")
        self._secret = bytes(secret)

    def hash(self, patient_ref: str) -> str:
        canonical = normalise_patient_ref(patient_ref)
        if not canonical:
            raise ValueError("empty patient reference")
        digest = hmac.new(self._secret, canonical.encode("utf-8"), hashlib.sha256).hexdigest()
        return self.PREFIX + digest

    def __repr__(self) -> str:  # never show the secret
        return "PatientRefHasher(<secret>)"
