"""Pseudonymous patient references: HMAC-SHA256 with the deployment secret.

Pure (no I/O). The bot never stores a patient reference (name, NHS number,
hospital number) in clear: ``PatientRefHasher(secret).hash(text)`` is what goes
into ``ConsentRecord.patient_ref``. The same reference typed differently
(spaces, dashes, case) hashes the same: whitespace, ``-`` and ``.`` are dropped
and letters upper-cased before hashing.

The secret comes from the deployment (bot config); it must be at least 16 bytes.
Changing it makes earlier hashes unmatchable, which is intended when rotating.

``check_patient_ref(text, schemes)`` decides whether a typed reference is one the
deployment accepts (issue 12, part 3), before anything is hashed:

* 10 digits (spaces, dashes, dots ignored) must pass the NHS modulus-11 check, or
  the GP is told it is not a valid NHS number. CHI (Scotland) and H&C (Northern
  Ireland) numbers use the same check digit, so a deployment there names its
  10-digit scheme ``CHI no.`` and the same check applies.
* Anything else must fully match one of the deployment's own schemes (hospital
  numbers...: ``PatientRefScheme(name, pattern)`` from ``[[policy.patient_references]]``);
  by default there is none, so only NHS numbers are accepted and a name typed as
  the reference is refused.
* The reply echoes only the scheme and the last 3 characters ("NHS no. ending
  919"), so the GP can catch a typo without the reference appearing in the chat.
"""
from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Iterable

from handlers.identifiers import nhs_check_digit_ok

__all__ = [
    "PatientRefHasher",
    "normalise_patient_ref",
    "patient_ref_vault_id",
    "PATIENT_REF_MEDIA_TYPE",
    "is_nhs_number",
    "PatientRefScheme",
    "CheckedPatientRef",
    "PatientRefInvalid",
    "check_patient_ref",
    "NHS_NUMBER_LABEL",
]

NHS_NUMBER_LABEL = "NHS no."

#: the vault keeps the reference itself (for filing only) under this media type
PATIENT_REF_MEDIA_TYPE = "application/x-referral-bot-patient-ref"


def patient_ref_vault_id(consent_id: str) -> str:
    """The vault id of a consent's patient reference: encrypted under its own data key,
    beside the consent, shredded with it (withdrawal, end of the record's retention)."""
    return f"{consent_id}.patient-ref"


def is_nhs_number(ref: str) -> bool:
    """A 10-digit NHS number whose modulus-11 check digit holds (NHS Data Dictionary)."""
    return nhs_check_digit_ok(normalise_patient_ref(ref))

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


@dataclass(frozen=True)
class PatientRefScheme:
    """A deployment's own patient-reference scheme.

    ``name`` is how replies call it ("hospital no.", "CHI no."); ``pattern`` is a
    regular expression the whole normalised reference (upper case, no spaces, dashes
    or dots) must match, e.g. ``RX[0-9]{7}``. A 10-digit reference is always held to
    the modulus-11 check, whatever scheme matches it."""

    name: str
    pattern: str

    def matches(self, canonical: str) -> bool:
        return re.fullmatch(self.pattern, canonical) is not None

    def compiled(self) -> "re.Pattern[str]":
        return re.compile(self.pattern)


@dataclass(frozen=True)
class CheckedPatientRef:
    """An accepted reference: the scheme it belongs to and its last 3 characters."""

    canonical: str
    scheme: str  # "NHS no.", "hospital no."
    ending: str  # last 3 characters: all a reply may show

    @property
    def hint(self) -> str:
        """"NHS no. ending 919": what a reply may echo so the GP can catch a typo."""
        return f"{self.scheme} ending {self.ending}"

    def __repr__(self) -> str:  # never the reference itself
        return f"CheckedPatientRef({self.hint!r})"


class PatientRefInvalid(ValueError):
    """The typed reference is not one the deployment accepts; ``str()`` says why
    without repeating it."""


def check_patient_ref(text: str, schemes: Iterable[PatientRefScheme] = ()) -> CheckedPatientRef:
    """Accept *text* as a patient reference or raise ``PatientRefInvalid``."""
    canonical = normalise_patient_ref(text or "")
    schemes = tuple(schemes)
    if not canonical:
        raise PatientRefInvalid("patient= is empty; give the patient's NHS number.")
    own = next((s for s in schemes if s.matches(canonical)), None)
    if canonical.isdigit() and len(canonical) == 10:
        label = own.name if own is not None else NHS_NUMBER_LABEL
        if not nhs_check_digit_ok(canonical):
            what = "NHS number" if own is None else label.rstrip(".").replace(" no", " number")
            raise PatientRefInvalid(
                f"patient= has 10 digits but is not a valid {what} (the check digit does not match); check it and send it again."
            )
        return CheckedPatientRef(canonical, label, canonical[-3:])
    if own is not None:
        return CheckedPatientRef(canonical, own.name, canonical[-3:])
    if canonical.isdigit():
        raise PatientRefInvalid(
            f"patient= has {len(canonical)} digits; an NHS number has 10. Check it and send it again."
        )
    accepted = ["an NHS number (10 digits)"] + [f"a {s.name}" for s in schemes]
    listing = accepted[0] if len(accepted) == 1 else ", ".join(accepted[:-1]) + " or " + accepted[-1]
    raise PatientRefInvalid(
        f"patient= must be {listing}, never a name; check it and send it again."
    )
