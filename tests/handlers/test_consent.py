"""Consent rules: one case per row of ``handlers.consent.RULES`` (and a check that no row
is without one), the docs table against the code, then the finer points: who may
consent at which age, meaningful statements, deceased patients, the episode window,
what is stored, read-back, and records stored before issue 12."""
import re
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from handlers.commands import parse_command
from handlers.consent import (
    MIN_STATEMENT_WORDS,
    RULES,
    ConsentRefused,
    age_band,
    age_on,
    birthday,
    check_cover,
    consent_summary,
    describe_consent,
    record_consent,
    statement_substance,
)
from handlers.model import ConsentBasis, ConsentRecord, Purpose, Sex
from handlers.patientref import PatientRefHasher, PatientRefScheme
from handlers.policy import Policy

from .helpers import GP, NO_PRACTICE, OTHER_GP, SECRET, T0, policy

HASHER = PatientRefHasher(SECRET)
POLICY = policy()
DOCS = Path(__file__).resolve().parents[2] / "docs" / "commands.md"
BASE = "!consent patient=9434765919 notes=yes identifiable=no specialties=dermatology"
FOR_PATIENT = ["parent", "attorney", "deputy", "best-interests"]
DECEASED = ["deceased-wishes", "executor", "family"]
STATEMENT_TEXT = "Images help train GPs; no identifying features shown; the family were asked and agree."
STATEMENT = f'statement="{STATEMENT_TEXT}"'
WISHES = 'statement="He told us he wanted his rare rash used to teach students; his wife supports this."'
# T0 is 2026-03-02: a child born 2014-05-01 is 11; born 2010-03-02 is exactly 16 today.
CHILD = "dob=2014-05-01"
ADULT = "dob=1980-01-01"
AGE17 = "dob=2009-01-01"


def _age_for(basis: str) -> str:
    return {"parent": CHILD, "patient": "adult=yes"}.get(basis, ADULT if basis not in DECEASED else "")


def record(text: str, pol: Policy = POLICY, actor=GP, at: datetime = T0) -> ConsentRecord:
    return record_consent(parse_command(text), consent_id="C-TEST01", actor=actor, at=at, hasher=HASHER, policy=pol)


def refused(text: str, pol: Policy = POLICY, actor=GP) -> ConsentRefused:
    with pytest.raises(ConsentRefused) as exc:
        record(text, pol, actor)
    return exc.value


# ------------------------------------------------------------------------------ one case per row
# (stage, code) -> a command that trips exactly that rule, and the same command fixed.
RECORD_CASES: dict[str, tuple[str, str]] = {
    "practice": ("@no-practice " + f"{BASE} by=patient adult=yes purposes=care", f"{BASE} by=patient adult=yes purposes=care"),
    "patient": ("!consent by=patient adult=yes purposes=care identifiable=no notes=yes specialties=derm",
                f"{BASE} by=patient adult=yes purposes=care"),
    "patient.format": ("!consent patient=9434765918 by=patient adult=yes purposes=care identifiable=no notes=yes specialties=derm",
                       f"{BASE} by=patient adult=yes purposes=care"),
    "who": (f"{BASE} adult=yes purposes=care", f"{BASE} by=patient adult=yes purposes=care"),
    "purposes": (f"{BASE} by=patient adult=yes", f"{BASE} by=patient adult=yes purposes=care"),
    "identifiable": ("!consent patient=9434765919 by=patient adult=yes purposes=care notes=yes specialties=derm",
                     f"{BASE} by=patient adult=yes purposes=care"),
    "notes": ("!consent patient=9434765919 by=patient adult=yes purposes=care identifiable=no notes=no specialties=derm",
              f"{BASE} by=patient adult=yes purposes=care"),
    "specialties": ("!consent patient=9434765919 by=patient adult=yes purposes=care identifiable=no notes=yes",
                    "!consent patient=9434765919 by=patient adult=yes purposes=care identifiable=no notes=yes specialties=any"),
    "valid-for": (f"{BASE} by=patient adult=yes purposes=care valid-for=2y", f"{BASE} by=patient adult=yes purposes=care valid-for=6m"),
    "dob": (f"{BASE} by=patient purposes=care dob=2030-01-01", f"{BASE} by=patient purposes=care dob=1990-01-01"),
    "adult": (f"{BASE} by=patient purposes=care adult=yes {AGE17}", f"{BASE} by=patient purposes=care {AGE17}"),
    "age": (f"{BASE} by=patient purposes=care", f"{BASE} by=patient purposes=care {ADULT}"),
    "who.child": (f"{BASE} by=patient purposes=care {CHILD}", f"{BASE} by=patient purposes=care {CHILD} gillick=yes"),
    "who.parent": (f"{BASE} by=parent purposes=care {STATEMENT}", f"{BASE} by=parent purposes=care {CHILD} {STATEMENT}"),
    "who.young-person": (f"{BASE} by=parent purposes=care {AGE17} {STATEMENT}", f"{BASE} by=deputy purposes=care {AGE17} {STATEMENT}"),
    "who.adult": (f"{BASE} by=attorney purposes=care {AGE17} {STATEMENT}", f"{BASE} by=attorney purposes=care {ADULT} {STATEMENT}"),
    "statement": (f'{BASE} by=best-interests adult=yes purposes=care statement="ok for BI."',
                  f"{BASE} by=best-interests adult=yes purposes=care {STATEMENT}"),
    "wishes": (f"{BASE} by=deceased-wishes purposes=teaching", f"{BASE} by=deceased-wishes purposes=teaching {WISHES}"),
    "deceased.purposes": (f"{BASE} by=deceased-wishes purposes=research {WISHES}", f"{BASE} by=deceased-wishes purposes=audit {WISHES}"),
    "statement.identifiers": (
        f'{BASE} by=attorney adult=yes purposes=care statement="Mrs Jane Doe holds the LPA and wants the leg ulcer treated quickly"',
        f'{BASE} by=attorney adult=yes purposes=care statement="Her daughter holds the LPA and wants the leg ulcer treated quickly"'),
    "statement.length": (f'{BASE} by=parent purposes=care {CHILD} statement="{(STATEMENT_TEXT + " ") * 25}"',
                         f"{BASE} by=parent purposes=care {CHILD} {STATEMENT}"),
    "retention": (f"{BASE} by=patient adult=yes purposes=care retention=20y", f"{BASE} by=patient adult=yes purposes=care retention=1y"),
    "expires": (f"{BASE} by=patient adult=yes purposes=care expires=2026-01-01", f"{BASE} by=patient adult=yes purposes=care expires=2027-01-01"),
    # issue 11 part 3: intimate images
    "intimate.age": (f"{BASE} by=deceased-wishes purposes=care intimate=yes {WISHES}",
                     f"{BASE} by=deceased-wishes purposes=care intimate=yes {ADULT} {WISHES}"),
    "intimate.child": (f"{BASE} by=patient purposes=care {AGE17} intimate=yes",
                       f"{BASE} by=patient purposes=care {AGE17}"),
    "chaperone": (f'{BASE} by=patient adult=yes purposes=care intimate=yes chaperone="Nurse A Khan, 9434765919"',
                  f'{BASE} by=patient adult=yes purposes=care intimate=yes chaperone="Nurse A Khan, practice nurse"'),
}


def _cover_rec(text=f"{BASE} by=patient adult=yes purposes=care,teaching"):
    return record_consent(parse_command(text), consent_id="C-COVER1", actor=GP, at=T0, hasher=HASHER, policy=POLICY)


# (consent transform, actor, at offset, purpose, specialty[, why the referral is intimate]) that trips the rule;
# then the passing twin.
_GENITAL_SITE = "site= names an intimate area"
_UNKNOWN_AGE = lambda c: replace(c, adult_asserted=None, birth_month=None)  # noqa: E731
USE_CASES = {
    "withdrawn": ((lambda c: replace(c, withdrawn_at=T0, withdrawn_by=GP.user_id), GP, timedelta(hours=1), Purpose.CARE, None),
                  (lambda c: c, GP, timedelta(hours=1), Purpose.CARE, None)),
    "expired": ((lambda c: replace(c, expires_at=T0 + timedelta(days=1)), GP, timedelta(days=1), Purpose.CARE, None),
                (lambda c: replace(c, expires_at=T0 + timedelta(days=1)), GP, timedelta(hours=23), Purpose.CARE, None)),
    "practice": ((lambda c: c, OTHER_GP, timedelta(0), Purpose.CARE, None),
                 (lambda c: c, replace(GP, user_id="@gp2:example.org"), timedelta(0), Purpose.CARE, None)),
    "purpose": ((lambda c: c, GP, timedelta(0), Purpose.RESEARCH, None), (lambda c: c, GP, timedelta(0), Purpose.TEACHING, None)),
    "notes": ((lambda c: replace(c, recorded_in_notes=False), GP, timedelta(0), Purpose.CARE, None),
              (lambda c: c, GP, timedelta(0), Purpose.CARE, None)),
    "age-out": ((lambda c: replace(c, basis=ConsentBasis.PARENT, age_out_at=T0 + timedelta(days=2)), GP, timedelta(days=2), Purpose.CARE, None),
                (lambda c: replace(c, basis=ConsentBasis.PARENT, age_out_at=T0 + timedelta(days=2)), GP, timedelta(days=1), Purpose.CARE, None)),
    "episode": ((lambda c: c, GP, timedelta(days=30), Purpose.CARE, "dermatology"),
                (lambda c: c, GP, timedelta(days=29, hours=23), Purpose.CARE, "dermatology")),
    "specialty": ((lambda c: c, GP, timedelta(0), Purpose.CARE, "plastics"),
                  (lambda c: c, GP, timedelta(0), Purpose.CARE, "dermatology")),
    # issue 11 part 3: an intimate referral (the consent below is an adult's with adult=yes)
    "intimate.age": ((lambda c: replace(_UNKNOWN_AGE(c), intimate=True), GP, timedelta(0), Purpose.CARE, "dermatology",
                      _GENITAL_SITE),
                     (lambda c: replace(c, intimate=True), GP, timedelta(0), Purpose.CARE, "dermatology", _GENITAL_SITE)),
    "intimate.child": ((lambda c: replace(_UNKNOWN_AGE(c), birth_month="2009-01", intimate=True), GP, timedelta(0),
                        Purpose.CARE, "dermatology", _GENITAL_SITE),
                       (lambda c: replace(_UNKNOWN_AGE(c), birth_month="2008-01", intimate=True), GP, timedelta(0),
                        Purpose.CARE, "dermatology", _GENITAL_SITE)),
    "intimate.consent": ((lambda c: c, GP, timedelta(0), Purpose.CARE, "dermatology", _GENITAL_SITE),
                         (lambda c: replace(c, intimate=True), GP, timedelta(0), Purpose.CARE, "dermatology",
                          _GENITAL_SITE)),
}


def test_every_rule_row_has_a_case_and_a_source():
    rows = [(r.stage, r.code) for r in RULES]
    assert len(rows) == len(set(rows)), "a rule appears twice in one stage"
    assert {code for stage, code in rows if stage == "record"} == set(RECORD_CASES)
    assert {code for stage, code in rows if stage in ("use", "open")} == set(USE_CASES)
    for rule in RULES:
        assert rule.source and rule.refuses and callable(rule.check), rule.code


@pytest.mark.parametrize("code", list(RECORD_CASES))
def test_record_rule(code):
    bad, fixed = RECORD_CASES[code]
    actor = GP
    if bad.startswith("@no-practice "):
        bad, actor = bad.removeprefix("@no-practice "), NO_PRACTICE
    exc = refused(bad, actor=actor)
    assert exc.rule == code, str(exc)
    msg = str(exc)
    assert "\n" not in msg and len(msg) < 260, msg
    # every refusal says what to do: a key to add or change, a command, or who to ask
    assert any(k in msg for k in ("=", "!", "ask your administrator")), msg
    assert "9434765918" not in msg and "Jane" not in msg  # never echoes what was typed
    rec = record(fixed)  # the same command with the rule met is recorded
    assert rec.practice == GP.practice and rec.recorded_in_notes


@pytest.mark.parametrize("code", list(USE_CASES))
def test_use_rule(code):
    (change, actor, offset, purpose, specialty, *why), (ok_change, ok_actor, ok_offset, ok_purpose, ok_spec, *ok_why) = \
        USE_CASES[code]
    refusal = check_cover(change(_cover_rec()), actor=actor, at=T0 + offset, purpose=purpose, policy=POLICY,
                          specialty=specialty, intimate=why[0] if why else None)
    assert refusal is not None and refusal.rule == code
    assert "C-COVER1" in refusal.message and "\n" not in refusal.message
    assert check_cover(ok_change(_cover_rec()), actor=ok_actor, at=T0 + ok_offset, purpose=ok_purpose, policy=POLICY,
                       specialty=ok_spec, intimate=ok_why[0] if ok_why else None) is None


def test_docs_table_matches_the_rules():
    """docs/commands.md carries one row per rule with the same code, stage and source."""
    text = DOCS.read_text()
    for rule in RULES:
        row = next((line for line in text.splitlines()
                    if line.startswith(f"| `{rule.code}` | {rule.stage} |")), None)
        assert row is not None, f"docs/commands.md has no row for {rule.stage} {rule.code}"
        assert rule.source in row, f"docs source for {rule.code} differs from handlers/consent.py"


# ------------------------------------------------------------------------------ who may consent, by age
CASES = [
    (f"{BASE} by=patient purposes=care adult=yes", None),
    (f"{BASE} by=patient purposes=care {ADULT}", None),
    (f"{BASE} by=patient purposes=care {AGE17}", None),  # presumed capable at 16
    (f"{BASE} by=patient purposes=care", "age"),  # could be a child
    (f"{BASE} by=patient purposes=care adult=no", "age"),
    (f"{BASE} by=patient purposes=care {CHILD}", "who.child"),
    (f"{BASE} by=patient purposes=care {CHILD} gillick=no", "who.child"),
    (f"{BASE} by=patient purposes=care {CHILD} gillick=yes", None),
    (f"{BASE} by=parent purposes=care {CHILD} {STATEMENT}", None),
    (f"{BASE} by=parent purposes=care {STATEMENT}", "who.parent"),  # no dob
    (f"{BASE} by=parent purposes=care {ADULT} {STATEMENT}", "who.parent"),
    (f"{BASE} by=parent purposes=care dob=2010-03-02 {STATEMENT}", "who.young-person"),  # 16 today
    (f"{BASE} by=parent purposes=care dob=2010-03-03 {STATEMENT}", None),  # 16 tomorrow
    (f"{BASE} by=parent purposes=care {CHILD} gillick=yes {STATEMENT}", "who.parent"),
    (f"{BASE} by=attorney purposes=care {ADULT} {STATEMENT}", None),
    (f"{BASE} by=attorney purposes=care adult=yes {STATEMENT}", None),
    (f"{BASE} by=attorney purposes=care {STATEMENT}", "age"),
    (f"{BASE} by=attorney purposes=care {CHILD} {STATEMENT}", "who.adult"),
    (f"{BASE} by=attorney purposes=care {AGE17} {STATEMENT}", "who.adult"),
    (f"{BASE} by=deputy purposes=care {AGE17} {STATEMENT}", None),  # 17: a deputy may act
    (f"{BASE} by=deputy purposes=care {CHILD} {STATEMENT}", "who.adult"),
    (f"{BASE} by=best-interests purposes=care {AGE17} {STATEMENT}", None),
    (f"{BASE} by=best-interests purposes=care {CHILD} {STATEMENT}", "who.adult"),
    (f"{BASE} by=best-interests purposes=care {STATEMENT}", "age"),
    *[(f"{BASE} by={b} purposes=care {WISHES}", None) for b in DECEASED],  # age does not decide for the dead
    # explicit consent for every purpose: the patient names each one, and needs no statement
    (f"{BASE} by=patient adult=yes purposes=care,teaching,audit,research,publication", None),
    (f"{BASE} by=patient adult=yes purposes=teaching", None),
    # a statement for every decision made on the patient's behalf, whatever the purpose (issue 12)
    *[(f"{BASE} by={b} purposes=care {_age_for(b)}", "statement") for b in FOR_PATIENT],
    *[(f"{BASE} by={b} purposes=care,teaching {_age_for(b)}", "statement") for b in FOR_PATIENT],
    *[(f"{BASE} by={b} purposes=care,publication {_age_for(b)} {STATEMENT}", None) for b in FOR_PATIENT],
    *[(f'{BASE} by={b} purposes=teaching {_age_for(b)} statement="ok for BI."', "statement") for b in FOR_PATIENT],
    # deceased: wishes/views needed, purposes limited
    *[(f"{BASE} by={b} purposes=care", "wishes") for b in DECEASED],
    *[(f"{BASE} by={b} purposes=care,teaching,audit {WISHES}", None) for b in DECEASED],
    *[(f"{BASE} by={b} purposes=publication {WISHES}", "deceased.purposes") for b in DECEASED],
    *[(f"{BASE} by={b} purposes=care,research {WISHES}", "deceased.purposes") for b in DECEASED],
]


@pytest.mark.parametrize("text, rule", CASES)
def test_record_consent_rules(text, rule):
    if rule is None:
        rec = record(text)
        assert rec.patient_ref.startswith("hmac-sha256:") and "9434765919" not in str(rec.to_dict())
        assert check_cover(rec, actor=GP, at=T0, policy=POLICY, purpose=next(iter(rec.purposes)),
                           specialty="dermatology") is None
    else:
        exc = refused(text)
        assert exc.rule == rule, str(exc)


def test_a_young_person_without_capacity_follows_the_mental_capacity_act():
    msg = str(refused(f"{BASE} by=parent purposes=care {AGE17} {STATEMENT}"))
    assert "Mental Capacity Act" in msg and "by=deputy" in msg and "by=best-interests" in msg and "18" in msg
    assert "record the patient's own consent" not in msg  # the old, wrong advice
    msg = str(refused(f"{BASE} by=attorney purposes=care {AGE17} {STATEMENT}"))
    assert "18" in msg and "by=deputy" in msg


def test_configured_age_out_below_16_refuses_the_parent_with_advice():
    pol = policy(age_out_years=14)
    exc = refused(f"{BASE} by=parent purposes=care dob=2011-01-01 {STATEMENT}", pol)  # 15
    assert exc.rule == "who.parent" and "gillick=yes" in str(exc)


def test_clinician_without_practice_cannot_record_consent_unless_listed():
    cmd = f"{BASE} by=patient adult=yes purposes=care"
    assert refused(cmd, actor=NO_PRACTICE).rule == "practice"
    pol = policy(practices={NO_PRACTICE.user_id: "Riverside Surgery"})
    assert record(cmd, pol, actor=NO_PRACTICE).practice == "Riverside Surgery"


# ------------------------------------------------------------------------------ statements
@pytest.mark.parametrize(
    "text, meaningful",
    [
        ("ok for BI.", False),  # the issue's 10 characters
        ("In the patient's best interests as discussed with family", False),
        ("Best interests. Agreed. See notes. Documented. Consent given verbally.", False),
        ("ulcer ulcer ulcer ulcer ulcer ulcer ulcer ulcer", False),  # one word repeated
        ("Lacks capacity from advanced dementia; daughter holds health and welfare LPA and wants the ulcer treated", True),
        ("Parent agrees; images help train GPs and do not show the face.", True),
        ("He told us he wanted his rare rash used to teach students; his wife supports this.", True),
    ],
)
def test_what_counts_as_a_meaningful_statement(text, meaningful):
    assert (statement_substance(text) >= MIN_STATEMENT_WORDS) is meaningful


def test_statement_is_required_for_care_too():
    """Issue 12: an attorney for care, and a best-interests decision for care, were accepted without one."""
    for basis in ("attorney", "best-interests"):
        assert refused(f"{BASE} by={basis} adult=yes purposes=care").rule == "statement"


# ------------------------------------------------------------------------------ deceased patients
def test_the_words_best_interests_never_appear_for_a_deceased_patient():
    texts = []
    for basis in DECEASED:
        for tail in ("purposes=care", "purposes=research " + WISHES, 'purposes=care statement="ok"',
                     'purposes=teaching statement="Mrs Jane Doe agreed with the family about teaching"'):
            texts.append(str(refused(f"{BASE} by={basis} {tail}")))
        rec = record(f"{BASE} by={basis} purposes=care,teaching {WISHES}")
        texts += [consent_summary(rec, POLICY), describe_consent(rec, at=T0, policy=POLICY)]
    for text in texts:
        assert not re.search(r"best[\s-]*interests?", text, re.IGNORECASE), text
    assert any("known wishes" in t for t in texts) and any("second opinion for the family" in t for t in texts)


# ------------------------------------------------------------------------------ episode and specialties
def test_one_consent_does_not_cover_a_referral_800_days_later_or_another_specialty():
    rec = record(f"{BASE} by=patient adult=yes purposes=care")
    assert rec.refer_until == T0 + timedelta(days=30) and rec.specialties == frozenset({"dermatology"})
    later = check_cover(rec, actor=GP, at=T0 + timedelta(days=800), policy=POLICY, specialty="dermatology")
    assert later is not None and later.rule == "episode"
    other = check_cover(rec, actor=GP, at=T0, policy=POLICY, specialty="plastics")
    assert other is not None and other.rule == "specialty" and "specialties=plastics" in other.message
    # photos for a referral already open are not cut off by the window
    assert check_cover(rec, actor=GP, at=T0 + timedelta(days=40), policy=POLICY) is None


def test_window_and_specialties_are_configurable():
    rec = record(f"{BASE.replace('specialties=dermatology', 'specialties=derm,plastics')} by=patient adult=yes "
                 "purposes=care valid-for=90d")
    assert rec.specialties == frozenset({"dermatology", "plastics"}) and rec.refer_until == T0 + timedelta(days=90)
    assert check_cover(rec, actor=GP, at=T0 + timedelta(days=89), policy=POLICY, specialty="plastics") is None
    anywhere = record(f"{BASE.replace('specialties=dermatology', 'specialties=any')} by=patient adult=yes purposes=care")
    assert anywhere.specialties is None
    assert check_cover(anywhere, actor=GP, at=T0, policy=POLICY, specialty="plastics") is None
    short = record(f"{BASE} by=patient adult=yes purposes=care", policy(consent_window=timedelta(days=7)))
    assert short.refer_until == T0 + timedelta(days=7)
    assert refused(f"{BASE} by=patient adult=yes purposes=care valid-for=100d",
                   policy(max_consent_window=timedelta(days=60))).rule == "valid-for"


# ------------------------------------------------------------------------------ what is kept
def test_what_is_stored_and_what_is_not():
    rec = record(f"{BASE} by=parent purposes=care dob=2014-05-17 sex=f {STATEMENT}")
    data = rec.to_dict()
    assert data["birth_month"] == "2014-05" and "2014-05-17" not in str(data)
    assert rec.age_out_at == datetime(2030, 5, 17, tzinfo=timezone.utc)  # ends on the 16th birthday
    assert rec.patient_ref_scheme == "NHS no." and rec.patient_ref_ending == "919"
    assert "9434765919" not in str(data) and rec.sex is Sex.FEMALE
    assert ConsentRecord.from_dict(data) == rec
    adult = record(f"{BASE} by=patient adult=yes purposes=care")
    assert adult.adult_asserted is True and adult.birth_month is None and adult.sex is None
    # configurable age-out
    rec18 = record(f"{BASE} by=parent purposes=care {CHILD} {STATEMENT}", policy(age_out_years=18))
    assert rec18.age_out_at == datetime(2032, 5, 1, tzinfo=timezone.utc)


def test_records_stored_before_issue_12_still_load_and_get_the_default_window():
    legacy = {
        "consent_id": "C-OLD001", "patient_ref": "hmac-sha256:" + "0" * 64, "practice": "Riverside Surgery",
        "recorded_by": GP.user_id, "recorded_at": T0.isoformat(), "basis": "best-interests",
        "purposes": ["care"], "identifiable": False, "recorded_in_notes": True, "retention": 7776000.0,
        "age_out_at": None, "gillick_competent": None, "best_interests_statement": None,
        "expires_at": None, "withdrawn_at": None, "withdrawn_by": None,
    }
    rec = ConsentRecord.from_dict(legacy)
    assert rec.specialties is None and rec.refer_until is None and rec.birth_month is None
    assert check_cover(rec, actor=GP, at=T0 + timedelta(days=29), policy=POLICY, specialty="plastics") is None
    late = check_cover(rec, actor=GP, at=T0 + timedelta(days=31), policy=POLICY, specialty="dermatology")
    assert late is not None and late.rule == "episode"
    text = describe_consent(rec, at=T0, policy=POLICY)
    assert "C-OLD001" in text and "not shown" in text and "Specialties: any" in text


# ------------------------------------------------------------------------------ read-back and age band
def test_read_back_names_everything_but_the_reference():
    rec = record(f"{BASE} by=parent purposes=care,teaching {CHILD} sex=male {STATEMENT} retention=30d")
    text = describe_consent(rec, at=T0, policy=POLICY)
    for expected in ("C-TEST01", "NHS no. ending 919", "Given by a parent", "age child 10–12", "sex male",
                     "care, teaching", "NOT covered", "dermatology", "2026-04-01", "30 days", "2030-05-01",
                     "Images help train GPs"):
        assert expected in text, expected
    assert "9434765919" not in text and "2014-05-01" not in text and "hmac" not in text


@pytest.mark.parametrize(
    "birth, on, band",
    [
        ("2025-11", date(2026, 3, 2), "infant <1"),
        ("2025-03", date(2026, 3, 2), "infant <1"),  # the birthday month: never older than the patient
        ("2024-01", date(2026, 3, 2), "child 1–4"),
        ("2019-01", date(2026, 3, 2), "child 5–9"),
        ("2014-05", date(2026, 3, 2), "child 10–12"),
        ("2012-01", date(2026, 3, 2), "young person 13–15"),
        ("2009-01", date(2026, 3, 2), "young person 16–17"),
        ("2000-01", date(2026, 3, 2), "18–29"),
        ("1980-01", date(2026, 3, 2), "40–49"),
        ("1930-01", date(2026, 3, 2), "90+"),
    ],
)
def test_age_band(birth, on, band):
    rec = replace(record(f"{BASE} by=patient adult=yes purposes=care"), adult_asserted=None, birth_month=birth)
    assert age_band(rec, on) == band


def test_age_band_without_a_date_of_birth():
    rec = record(f"{BASE} by=patient adult=yes purposes=care")
    assert age_band(rec, T0.date()) == "adult"
    assert age_band(replace(rec, adult_asserted=None), T0.date()) is None


# ------------------------------------------------------------------------------ patient references
def test_patient_reference_schemes_are_configurable():
    pol = policy(patient_ref_schemes=(PatientRefScheme("hospital no.", "RX[0-9]{7}"),))
    text = BASE.replace("patient=9434765919", "patient=rx-1234567") + " by=patient adult=yes purposes=care"
    assert refused(text).rule == "patient.format"
    rec = record(text, pol)
    assert rec.patient_ref_scheme == "hospital no." and rec.patient_ref_ending == "567"
    assert rec.patient_ref == HASHER.hash("RX1234567")


def test_leap_day_birthdays():
    assert birthday(date(2012, 2, 29), 16) == date(2028, 2, 29)
    assert birthday(date(2012, 2, 29), 15) == date(2027, 3, 1)
    assert age_on(date(2012, 2, 29), date(2027, 2, 28)) == 14
    assert age_on(date(2012, 2, 29), date(2027, 3, 1)) == 15


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
    rec = record(f"{BASE} by=parent purposes=care dob={dob} {STATEMENT}")
    refusal = check_cover(rec, actor=GP, at=T0 + timedelta(days=offset_days), policy=POLICY)
    if covered:
        assert refusal is None
    else:
        assert refusal is not None and refusal.rule == "age-out" and "by=patient" in refusal.message


def test_age_out_applies_only_to_parent_consent():
    rec = record(f"{BASE} by=patient purposes=care dob=2010-03-10 gillick=yes")
    assert rec.age_out_at is None
    assert check_cover(rec, actor=GP, at=T0 + timedelta(days=4000), policy=POLICY) is None


def test_patient_ref_hash_is_keyed_and_normalised():
    h = PatientRefHasher(SECRET)
    assert h.hash("943 476 5919") == h.hash("9434765919") == h.hash("943-476-5919")
    assert h.hash("943 476 5919") != PatientRefHasher(b"another-secret-0123456789").hash("9434765919")
    with pytest.raises(ValueError):
        PatientRefHasher(b"short")
    assert "test-deployment" not in repr(h)
