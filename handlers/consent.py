"""Consent rules (DESIGN.md "Consent rules"), pure.

Two entry points:

* ``record_consent(cmd, ...)`` turns a parsed ``!consent`` into a ``ConsentRecord``
  or raises ``ConsentRefused`` naming the first unmet rule and how to fix it.
* ``check_cover(consent, ...)`` says whether a recorded consent covers sharing an
  image now (for ``!refer`` and again before each image is posted): returns None
  or a ``Refusal``.

Rule codes (stable; used in tests, audit details and docs/commands.md):

=================  ==========================================================
``practice``       the clinician is listed with a practice; a consent is used only
                   by clinicians of the practice that recorded it
``patient``        a patient reference is given (stored only as a keyed hash)
``who``            who consented is stated
``who.child``      a child under the age-out age consents themself only if Gillick competent
``who.parent``     a parent consents only for a child under the age-out age who is not
                   Gillick competent; the date of birth is needed to know when it stops
``who.adult``      an LPA attorney (18+) / court deputy (16+) acts for an adult
``purposes``       at least one purpose, each named explicitly (no "all")
``identifiable``   whether identifiable images are covered is stated yes or no
``notes``          the consent is recorded in the patient's notes (notes=yes)
``best-interests`` consent given on the patient's behalf needs a best-interests
                   statement when the image is not needed for the patient's own care
                   (i.e. for any purpose other than care)
``retention``      retention is positive and within the operator's maximum
``expires``        an end date, when given, is in the future
``dob``            a date of birth is not in the future
``withdrawn``      a withdrawn consent covers nothing
``expired``        a consent past its end date covers nothing
``purpose``        the consent covers the purpose of the sharing (care for a referral)
``age-out``        a parent's consent stops covering NEW sharing once the patient
                   reaches the age-out age (16 by default)
=================  ==========================================================
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timezone

from handlers.commands import ConsentCmd
from handlers.model import Actor, ConsentBasis, ConsentRecord, Purpose
from handlers.patientref import PatientRefHasher, normalise_patient_ref
from handlers.policy import Policy

__all__ = ["Refusal", "ConsentRefused", "record_consent", "check_cover", "age_on", "birthday"]


@dataclass(frozen=True)
class Refusal:
    """An unmet rule: ``rule`` is the code above, ``message`` one plain sentence with the fix."""

    rule: str
    message: str


class ConsentRefused(ValueError):
    def __init__(self, refusal: Refusal):
        super().__init__(refusal.message)
        self.refusal = refusal

    @property
    def rule(self) -> str:
        return self.refusal.rule


def _refuse(rule: str, message: str) -> ConsentRefused:
    return ConsentRefused(Refusal(rule, message))


def birthday(dob: date, years: int) -> date:
    """The date the person born on *dob* turns *years* (29 Feb -> 1 Mar in common years)."""
    try:
        return dob.replace(year=dob.year + years)
    except ValueError:  # 29 February
        return date(dob.year + years, 3, 1)


def age_on(dob: date, day: date) -> int:
    years = day.year - dob.year
    if birthday(dob, years) > day:
        years -= 1
    return years


def _midnight_utc(d: date) -> datetime:
    return datetime.combine(d, time(0, 0), tzinfo=timezone.utc)


def record_consent(
    cmd: ConsentCmd,
    *,
    consent_id: str,
    actor: Actor,
    at: datetime,
    hasher: PatientRefHasher,
    policy: Policy,
) -> ConsentRecord:
    """Validate a ``!consent`` against every rule; return the record or raise ``ConsentRefused``.

    The date of birth is used only to compute ``age_out_at`` (parent consent) and
    to check who may consent; it is not stored. The patient reference is hashed.
    """
    practice = actor.practice or policy.practices.get(actor.user_id)
    if not practice:
        raise _refuse(
            "practice",
            "You are not listed with a practice in the clinician directory, so I cannot record consent for you; ask your administrator to add you.",
        )
    if not cmd.patient or not normalise_patient_ref(cmd.patient):
        raise _refuse("patient", "Add patient=<reference> (your practice's patient reference; I store only a keyed hash of it).")
    if cmd.basis is None:
        raise _refuse(
            "who",
            "Say who consented with by=patient, parent, attorney, deputy, best-interests, deceased-wishes, executor or family.",
        )
    if not cmd.purposes:
        raise _refuse(
            "purposes", "Name each purpose the consent covers, e.g. purposes=care or purposes=care,teaching."
        )
    if cmd.identifiable is None:
        raise _refuse(
            "identifiable",
            "Say whether identifiable images (e.g. showing the face) are covered: identifiable=yes or identifiable=no.",
        )
    if cmd.notes is not True:
        raise _refuse(
            "notes", "Record the consent in the patient's notes first, then add notes=yes."
        )
    today = at.astimezone(timezone.utc).date()
    age_years = policy.age_out_years
    age = None
    if cmd.dob is not None:
        if cmd.dob > today:
            raise _refuse("dob", "The date of birth is in the future; check dob=YYYY-MM-DD.")
        age = age_on(cmd.dob, today)

    basis = cmd.basis
    age_out_at = None
    if basis is ConsentBasis.PATIENT:
        if age is not None and age < age_years and cmd.gillick is not True:
            raise _refuse(
                "who.child",
                f"The patient is under {age_years}: they can consent themself only if Gillick competent (add gillick=yes), otherwise record a parent's consent with by=parent.",
            )
    elif basis is ConsentBasis.PARENT:
        if cmd.dob is None:
            raise _refuse(
                "who.parent",
                f"A parent's consent needs the child's date of birth (dob=YYYY-MM-DD) so I know when it stops at {age_years}; the date itself is not stored.",
            )
        assert age is not None
        if age >= age_years:
            raise _refuse(
                "who.parent",
                f"The patient is {age_years} or older, so a parent cannot consent for them: record the patient's own consent (by=patient).",
            )
        if cmd.gillick is True:
            raise _refuse(
                "who.parent",
                "A Gillick-competent child decides for themself: record their own consent with by=patient gillick=yes.",
            )
        age_out_at = _midnight_utc(birthday(cmd.dob, age_years))
    elif basis in (ConsentBasis.ATTORNEY, ConsentBasis.DEPUTY):
        minimum = 18 if basis is ConsentBasis.ATTORNEY else 16
        if age is not None and age < minimum:
            raise _refuse(
                "who.adult",
                f"{'An LPA attorney' if basis is ConsentBasis.ATTORNEY else 'A court deputy'} acts only for a patient aged {minimum} or over; for a child record by=parent.",
            )

    if basis.on_behalf and (cmd.purposes - {Purpose.CARE}):
        if not cmd.statement or len(cmd.statement.strip()) < 10:
            others = ", ".join(sorted(p.value for p in cmd.purposes - {Purpose.CARE}))
            raise _refuse(
                "best-interests",
                f"Consent given on the patient's behalf for {others} (not their own care) needs a best-interests statement: add statement=\"...\" (at least a sentence), or limit purposes=care.",
            )
    if cmd.statement and len(cmd.statement) > 2000:
        raise _refuse("best-interests", "The statement is too long (over 2000 characters); give a shorter statement=\"...\" (a short paragraph).")
    retention = cmd.retention if cmd.retention is not None else policy.default_retention
    if retention.total_seconds() <= 0:
        raise _refuse("retention", "Retention must be at least 1 day, e.g. retention=90d.")
    if retention > policy.max_retention:
        raise _refuse(
            "retention",
            f"Retention may be at most {policy.max_retention.days} days here; give a shorter retention=.",
        )
    expires_at = None
    if cmd.expires is not None:
        expires_at = _midnight_utc(cmd.expires)
        if expires_at <= at:
            raise _refuse("expires", "The consent end date has already passed; give a future expires=YYYY-MM-DD or leave it out.")

    statement = cmd.statement.strip() if cmd.statement else None
    return ConsentRecord(
        consent_id=consent_id,
        patient_ref=hasher.hash(cmd.patient),
        practice=practice,
        recorded_by=actor.user_id,
        recorded_at=at,
        basis=basis,
        purposes=frozenset(cmd.purposes),
        identifiable=cmd.identifiable,
        recorded_in_notes=True,
        retention=retention,
        age_out_at=age_out_at,
        gillick_competent=cmd.gillick,
        best_interests_statement=statement,
        expires_at=expires_at,
    )


def check_cover(
    consent: ConsentRecord,
    *,
    actor: Actor | None,
    at: datetime,
    purpose: Purpose = Purpose.CARE,
    policy: Policy | None = None,
) -> Refusal | None:
    """None if *consent* covers NEW sharing for *purpose* by *actor* at *at*, else the
    first unmet rule. ``actor=None`` skips the practice check (used for re-checks of a
    referral whose referrer was checked when it opened)."""
    cid = consent.consent_id
    if consent.withdrawn:
        return Refusal("withdrawn", f"Consent {cid} has been withdrawn; record a new consent with !consent.")
    if consent.expires_at is not None and consent.expires_at <= at:
        return Refusal("expired", f"Consent {cid} has expired; record a new consent with !consent.")
    if actor is not None:
        practice = actor.practice or (policy.practices.get(actor.user_id) if policy else None)
        if practice != consent.practice:
            return Refusal(
                "practice",
                f"Consent {cid} was recorded by another practice; record consent at your own practice with !consent.",
            )
    if purpose not in consent.purposes:
        return Refusal(
            "purpose",
            f"Consent {cid} does not cover {purpose.value}; record a consent with purposes={purpose.value}.",
        )
    if not consent.recorded_in_notes:
        return Refusal("notes", f"Consent {cid} is not recorded in the notes; record it there and give a new !consent with notes=yes.")
    if consent.basis is ConsentBasis.PARENT and consent.age_out_at is not None and at >= consent.age_out_at:
        years = policy.age_out_years if policy else 16
        return Refusal(
            "age-out",
            f"Consent {cid} was given by a parent and the patient has now reached {years}: ask the patient for their own consent (!consent ... by=patient).",
        )
    return None
