"""Consent rules, table-driven: each row is a !consent line and the rule it must trip
(or None when it must be accepted), then coverage checks (withdrawn, expired,
practice, purpose, age-out)."""
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from handlers.commands import parse_command
from handlers.consent import ConsentRefused, age_on, birthday, check_cover, record_consent
from handlers.model import ConsentBasis, Purpose
from handlers.patientref import PatientRefHasher

from .helpers import GP, NO_PRACTICE, OTHER_GP, SECRET, T0, policy

HASHER = PatientRefHasher(SECRET)
POLICY = policy()
BASE = "!consent patient=9434765919 notes=yes identifiable=no"
ON_BEHALF = ["parent", "attorney", "deputy", "best-interests", "executor", "family"]
STATEMENT = 'statement="Images help train GPs; no identifying features; in patient\'s interests."'
# T0 is 2026-03-02: a child born 2014-05-01 is 11; born 2010-03-02 is exactly 16 today.
CHILD = "dob=2014-05-01"
ADULT = "dob=1980-01-01"

CASES = [
    # --- who may consent
    (f"{BASE} by=patient purposes=care", None),
    (f"{BASE} by=patient purposes=care {ADULT}", None),
    (f"{BASE} by=patient purposes=care {CHILD}", "who.child"),
    (f"{BASE} by=patient purposes=care {CHILD} gillick=no", "who.child"),
    (f"{BASE} by=patient purposes=care {CHILD} gillick=yes", None),
    (f"{BASE} by=parent purposes=care {CHILD}", None),
    (f"{BASE} by=parent purposes=care", "who.parent"),  # no dob: cannot know the age-out
    (f"{BASE} by=parent purposes=care {ADULT}", "who.parent"),
    (f"{BASE} by=parent purposes=care dob=2010-03-02", "who.parent"),  # 16 today
    (f"{BASE} by=parent purposes=care dob=2010-03-03", None),  # 16 tomorrow
    (f"{BASE} by=parent purposes=care {CHILD} gillick=yes", "who.parent"),
    (f"{BASE} by=attorney purposes=care {ADULT}", None),
    (f"{BASE} by=attorney purposes=care {CHILD}", "who.adult"),
    (f"{BASE} by=deputy purposes=care dob=2009-01-01", None),  # 17: a deputy may act
    (f"{BASE} by=deputy purposes=care {CHILD}", "who.adult"),
    (f"{BASE} by=best-interests purposes=care", None),
    (f"{BASE} by=deceased-wishes purposes=care,teaching", None),  # the patient's own wishes
    (f"{BASE} by=executor purposes=care", None),
    (f"{BASE} by=family purposes=care", None),
    # --- required fields
    ("!consent by=patient purposes=care identifiable=no notes=yes", "patient"),
    ('!consent patient="- -" by=patient purposes=care identifiable=no notes=yes', "patient"),
    (f'{BASE} by=parent purposes=teaching {CHILD} statement="{"x" * 2001}"', "best-interests"),
    (f"{BASE} purposes=care", "who"),
    (f"{BASE} by=patient", "purposes"),
    ("!consent patient=X by=patient purposes=care notes=yes", "identifiable"),
    ("!consent patient=X by=patient purposes=care identifiable=no", "notes"),
    ("!consent patient=X by=patient purposes=care identifiable=no notes=no", "notes"),
    # --- explicit consent for every purpose: the patient names each one
    (f"{BASE} by=patient purposes=care,teaching,research,publication", None),
    (f"{BASE} by=patient purposes=research", None),
    # --- best-interests statement when on the patient's behalf and not for their own care
    *[(f"{BASE} by={b} purposes=care {CHILD if b == 'parent' else ADULT}", None) for b in ON_BEHALF],
    *[(f"{BASE} by={b} purposes=care,teaching {CHILD if b == 'parent' else ADULT}", "best-interests") for b in ON_BEHALF],
    *[(f"{BASE} by={b} purposes=research {CHILD if b == 'parent' else ADULT}", "best-interests") for b in ON_BEHALF],
    *[(f"{BASE} by={b} purposes=care,publication {CHILD if b == 'parent' else ADULT} {STATEMENT}", None) for b in ON_BEHALF],
    (f'{BASE} by=parent purposes=teaching {CHILD} statement="ok"', "best-interests"),  # not a statement
    (f"{BASE} by=patient purposes=teaching", None),  # the patient's own consent needs none
    # --- retention / dates
    (f"{BASE} by=patient purposes=care retention=30d", None),
    (f"{BASE} by=patient purposes=care retention=0d", "retention"),
    (f"{BASE} by=patient purposes=care retention=20y", "retention"),
    (f"{BASE} by=patient purposes=care expires=2026-01-01", "expires"),
    (f"{BASE} by=patient purposes=care expires=2027-01-01", None),
    (f"{BASE} by=patient purposes=care dob=2030-01-01", "dob"),
]


@pytest.mark.parametrize("text, rule", CASES)
def test_record_consent_rules(text, rule):
    cmd = parse_command(text)
    if rule is None:
        rec = record_consent(cmd, consent_id="C-TEST01", actor=GP, at=T0, hasher=HASHER, policy=POLICY)
        assert rec.practice == GP.practice and rec.recorded_by == GP.user_id and rec.recorded_in_notes
        assert rec.patient_ref.startswith("hmac-sha256:") and "9434765919" not in str(rec.to_dict())
        assert check_cover(rec, actor=GP, at=T0, policy=POLICY, purpose=next(iter(rec.purposes))) is None
    else:
        with pytest.raises(ConsentRefused) as exc:
            record_consent(cmd, consent_id="C-TEST01", actor=GP, at=T0, hasher=HASHER, policy=POLICY)
        assert exc.value.rule == rule, str(exc.value)
        msg = str(exc.value)
        assert "\n" not in msg and len(msg) < 260
        # every refusal says what to do: it names a key to add/change or a command
        assert any(k in msg for k in ("=", "!", "ask your administrator", "add ", "give ")), msg


def test_clinician_without_practice_cannot_record_consent():
    cmd = parse_command(f"{BASE} by=patient purposes=care")
    with pytest.raises(ConsentRefused) as exc:
        record_consent(cmd, consent_id="C-X", actor=NO_PRACTICE, at=T0, hasher=HASHER, policy=POLICY)
    assert exc.value.rule == "practice"
    # ...unless the directory (policy.practices) names the practice
    pol = policy(practices={NO_PRACTICE.user_id: "Riverside Surgery"})
    rec = record_consent(cmd, consent_id="C-X", actor=NO_PRACTICE, at=T0, hasher=HASHER, policy=pol)
    assert rec.practice == "Riverside Surgery"


def test_parent_consent_stores_age_out_date_not_dob():
    cmd = parse_command(f"{BASE} by=parent purposes=care {CHILD}")
    rec = record_consent(cmd, consent_id="C-X", actor=GP, at=T0, hasher=HASHER, policy=POLICY)
    assert rec.age_out_at == datetime(2030, 5, 1, tzinfo=timezone.utc)
    assert "2014" not in str(rec.to_dict())  # the date of birth itself is not kept
    # configurable age
    rec18 = record_consent(cmd, consent_id="C-X", actor=GP, at=T0, hasher=HASHER, policy=policy(age_out_years=18))
    assert rec18.age_out_at == datetime(2032, 5, 1, tzinfo=timezone.utc)


def test_leap_day_birthdays():
    from datetime import date

    assert birthday(date(2012, 2, 29), 16) == date(2028, 2, 29)
    assert birthday(date(2012, 2, 29), 15) == date(2027, 3, 1)
    assert age_on(date(2012, 2, 29), date(2027, 2, 28)) == 14
    assert age_on(date(2012, 2, 29), date(2027, 3, 1)) == 15


def _rec(text=f"{BASE} by=patient purposes=care,teaching", at=T0):
    return record_consent(parse_command(text), consent_id="C-COVER1", actor=GP, at=at, hasher=HASHER, policy=POLICY)


COVER_CASES = [
    # (description, consent transform, actor, at offset, purpose, expected rule)
    ("valid", lambda c: c, GP, timedelta(0), Purpose.CARE, None),
    ("same practice, other GP", lambda c: c, replace(GP, user_id="@gp2:example.org"), timedelta(0), Purpose.CARE, None),
    ("other practice", lambda c: c, OTHER_GP, timedelta(0), Purpose.CARE, "practice"),
    ("no practice", lambda c: c, NO_PRACTICE, timedelta(0), Purpose.CARE, "practice"),
    ("purpose not covered", lambda c: c, GP, timedelta(0), Purpose.RESEARCH, "purpose"),
    ("withdrawn", lambda c: replace(c, withdrawn_at=T0, withdrawn_by=GP.user_id), GP, timedelta(hours=1), Purpose.CARE, "withdrawn"),
    ("expired", lambda c: replace(c, expires_at=T0 + timedelta(days=1)), GP, timedelta(days=1), Purpose.CARE, "expired"),
    ("not yet expired", lambda c: replace(c, expires_at=T0 + timedelta(days=1)), GP, timedelta(hours=23), Purpose.CARE, None),
    ("not in notes", lambda c: replace(c, recorded_in_notes=False), GP, timedelta(0), Purpose.CARE, "notes"),
]


@pytest.mark.parametrize("desc, change, actor, offset, purpose, rule", COVER_CASES, ids=[c[0] for c in COVER_CASES])
def test_check_cover(desc, change, actor, offset, purpose, rule):
    refusal = check_cover(change(_rec()), actor=actor, at=T0 + offset, purpose=purpose, policy=POLICY)
    assert (refusal.rule if refusal else None) == rule
    if refusal:
        assert "C-COVER1" in refusal.message


@pytest.mark.parametrize(
    "dob, offset_days, covered",
    [
        ("2010-03-10", 0, True),  # 15, turns 16 in 8 days
        ("2010-03-10", 7, True),  # the day before the 16th birthday
        ("2010-03-10", 8, False),  # the 16th birthday: stops covering new sharing
        ("2010-03-10", 400, False),
    ],
)
def test_age_out(dob, offset_days, covered):
    rec = _rec(f"{BASE} by=parent purposes=care dob={dob}")
    at = T0 + timedelta(days=offset_days)
    refusal = check_cover(rec, actor=GP, at=at, policy=POLICY)
    if covered:
        assert refusal is None
    else:
        assert refusal is not None and refusal.rule == "age-out"
        assert "by=patient" in refusal.message


def test_age_out_applies_only_to_parent_consent():
    # the patient's own consent (Gillick-competent child) does not age out
    rec = _rec(f"{BASE} by=patient purposes=care dob=2010-03-10 gillick=yes")
    assert rec.age_out_at is None
    assert check_cover(rec, actor=GP, at=T0 + timedelta(days=4000), policy=POLICY) is None


def test_consent_record_round_trips():
    rec = _rec(f"{BASE} by=parent purposes=care,teaching {CHILD} {STATEMENT} retention=30d expires=2027-02-01")
    from handlers.model import ConsentRecord

    assert ConsentRecord.from_dict(rec.to_dict()) == rec
    assert rec.basis is ConsentBasis.PARENT and rec.retention == timedelta(days=30)


def test_patient_ref_hash_is_keyed_and_normalised():
    h = PatientRefHasher(SECRET)
    assert h.hash("943 476 5919") == h.hash("9434765919") == h.hash("943-476-5919")
    assert h.hash("943 476 5919") != PatientRefHasher(b"another-secret-0123456789").hash("9434765919")
    with pytest.raises(ValueError):
        PatientRefHasher(b"short")
    assert "test-deployment" not in repr(h)
