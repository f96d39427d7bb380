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

__all__ = ["PatientRefHasher", "normalise_patient_ref", "patient_ref_vault_id", "PATIENT_REF_MEDIA_TYPE",
           "is_nhs_number"]

#: the vault keeps the reference itself (for filing only) under this media type
PATIENT_REF_MEDIA_TYPE = "application/x-referral-bot-patient-ref"


def patient_ref_vault_id(consent_id: str) -> str:
    """The vault id of a consent's patient reference: encrypted under its own data key,
    beside the consent, shredded with it (withdrawal, end of the record's retention)."""
    return f"{consent_id}.patient-ref"


def is_nhs_number(ref: str) -> bool:
    """A 10-digit NHS number whose modulus-11 check digit holds (NHS Data Dictionary)."""
    digits = normalise_patient_ref(ref)
    if len(digits) != 10 or not digits.isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(digits[:9], range(10, 1, -1)))
    check = 11 - total % 11
    check = 0 if check == 11 else check
    return check != 10 and check == int(digits[9])

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
