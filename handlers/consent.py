"""Consent rules (DESIGN.md "Consent rules"; issue 12 part 4), pure.

Entry points:

* ``record_consent(cmd, ...)`` turns a parsed ``!consent`` into a ``ConsentRecord``
  or raises ``ConsentRefused`` naming the first unmet rule and how to fix it.
* ``check_cover(consent, ...)`` says whether a recorded consent covers sharing an
  image now (for ``!refer``, again when each photo arrives and before it is posted):
  None, or a ``Refusal``. Given ``specialty=`` (a referral is being opened) it also
  checks the episode: the window and the specialties the consent names.
* ``describe_consent(consent, ...)`` is the read-back for ``!consent show C-…``.
* ``age_band(consent, on)`` is what the specialist may see of the patient's age.

**Every rule is one row of ``RULES``** below: its code (stable; used in audit
details, tests and docs/commands.md), when it is checked (``record`` = on
``!consent``, ``use`` = on every new sharing, ``open`` = when a referral opens),
what it refuses, the guidance it comes from, and the check itself. The rows run
in table order and the first that fails is the answer. docs/commands.md carries
the same table; tests/handlers/test_consent.py has a case per row and checks the
docs against this table.

Sources, short names as in the table:
"GMC Recordings" = GMC, *Making and using visual and audio recordings of patients*
(2011, updated); "GMC Confidentiality" = GMC, *Confidentiality: good practice in
handling patient information* (2017); "GMC 0-18" = GMC, *0-18 years: guidance for
all doctors* (2007, updated 2018); "MCA" = Mental Capacity Act 2005; "MDU 2014" =
MDU, *Doctors sharing images of patients' conditions* (Good Practice, June 2014).
Where a paragraph number could not be confirmed the row names the section instead
and says so.

**A meaningful statement** (rules ``statement`` and ``wishes``): at least
``MIN_STATEMENT_WORDS`` different words of substance, i.e. words of three or more
letters that are neither filler ("the", "with") nor stock wording that says nothing
about this patient ("best", "interests", "agreed", "discussed", "notes", "ok",
"consent", "patient"). "ok for BI." has none; "In the patient's best interests as
discussed with family" has one. A statement that says why sharing helps the patient
and whose views were heard passes easily: "Lacks capacity from advanced dementia;
daughter holds health and welfare LPA and wants the ulcer treated" has 13.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Callable

from handlers.commands import ANY_SPECIALTY, ConsentCmd
from handlers.identifiers import find_identifiers
from handlers.model import Actor, ConsentBasis, ConsentRecord, Purpose
from handlers.patientref import PatientRefHasher, PatientRefInvalid, check_patient_ref
from handlers.policy import Policy
from handlers.timefmt import DEFAULT_ZONE, local_date

__all__ = [
    "Refusal",
    "ConsentRefused",
    "Rule",
    "RULES",
    "record_consent",
    "check_cover",
    "describe_consent",
    "consent_summary",
    "refer_until",
    "age_band",
    "age_on",
    "birthday",
    "statement_substance",
    "MIN_STATEMENT_WORDS",
    "DECEASED_PURPOSES",
    "MCA_AGE",
    "LPA_AGE",
]

#: The Mental Capacity Act 2005 applies from 16 (s2(5)); an LPA is made at 18 or over (s9(2)(c)).
MCA_AGE = 16
LPA_AGE = 18
#: Words of substance a statement made for the patient must have (see the module docstring).
MIN_STATEMENT_WORDS = 6
MAX_STATEMENT_CHARS = 2000
#: What a deceased patient's images may be used for: teaching, audit, and a second opinion
#: for the family's care (a heritable condition); issue 12, GMC Recordings paras 47-48.
DECEASED_PURPOSES = frozenset({Purpose.CARE, Purpose.TEACHING, Purpose.AUDIT})
#: Someone decides for a living patient: each needs a meaningful statement, for any purpose.
_FOR_THE_PATIENT = frozenset({ConsentBasis.PARENT, ConsentBasis.ATTORNEY, ConsentBasis.DEPUTY, ConsentBasis.BEST_INTERESTS})
#: How a read-back names who decided (never "best interests" for a deceased patient).
_BASIS_WORDS = {
    ConsentBasis.PATIENT: "given by the patient",
    ConsentBasis.PARENT: "given by a parent",
    ConsentBasis.ATTORNEY: "given by an LPA attorney",
    ConsentBasis.DEPUTY: "given by a court deputy",
    ConsentBasis.BEST_INTERESTS: "a best-interests decision (nobody holds authority)",
    ConsentBasis.DECEASED_WISHES: "the deceased patient's known wishes",
    ConsentBasis.EXECUTOR: "given by the deceased patient's executor",
    ConsentBasis.FAMILY: "given by the deceased patient's family",
}


_ACTS = {
    ConsentBasis.ATTORNEY: "An LPA attorney acts",
    ConsentBasis.DEPUTY: "A court deputy acts",
    ConsentBasis.BEST_INTERESTS: "A best-interests decision under the Mental Capacity Act applies",
}


@dataclass(frozen=True)
class Refusal:
    """An unmet rule: ``rule`` is its code, ``message`` one plain sentence with the fix."""

    rule: str
    message: str


class ConsentRefused(ValueError):
    def __init__(self, refusal: Refusal):
        super().__init__(refusal.message)
        self.refusal = refusal

    @property
    def rule(self) -> str:
        return self.refusal.rule


# ------------------------------------------------------------------------------ dates
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


def _months_from_birth_month(birth_month: str, on: date) -> int | None:
    """Completed months of age on *on*, taking the birthday as the last day of the
    birth month (so the answer is never older than the patient; at most a month young)."""
    m = re.fullmatch(r"(\d{4})-(\d{2})", birth_month or "")
    if not m:
        return None
    year, month = int(m.group(1)), int(m.group(2))
    return max(0, (on.year - year) * 12 + (on.month - month) - 1)


def age_band(consent: ConsentRecord, on: date) -> str | None:
    """What the specialist may see of the age: "infant <1", "child 10–12", "40–49",
    "adult" (adult=yes without a date of birth), or None (unknown). Never a date."""
    if consent.birth_month:
        months = _months_from_birth_month(consent.birth_month, on)
        if months is not None:
            years = months // 12
            if years < 1:
                return "infant <1"
            for low, high, word in ((1, 4, "child"), (5, 9, "child"), (10, 12, "child"), (13, 15, "young person"),
                                    (16, 17, "young person")):
                if low <= years <= high:
                    return f"{word} {low}–{high}"
            if years < 30:
                return "18–29"
            if years >= 90:
                return "90+"
            low = years // 10 * 10
            return f"{low}–{low + 9}"
    if consent.adult_asserted:
        return "adult"
    return None


# ------------------------------------------------------------------------------ statements
_FILLER = frozenset(
    """the and for with that this was were are has have had not but from into onto than then they them their
    his her hers him she our ours you your yes per via etc also any all can could would should will may might
    been being its it's who whom which what when where why how out off own due""".split()
)
_STOCK = frozenset(
    """best interest interests consent consents consented consenting agree agrees agreed agreeing discussed discuss
    discussion documented document noted notes note see above below patient patients okay fine done given verbal
    verbally happy confirmed confirm appropriate reasons reason decision decided statement""".split()
)
_WORD = re.compile(r"[A-Za-z][A-Za-z'’\-]*")


def statement_substance(text: str | None) -> int:
    """How many different words of substance *text* has (see the module docstring)."""
    words = set()
    for raw in _WORD.findall(text or ""):
        w = raw.lower().replace("’", "'")
        if w.endswith("'s"):
            w = w[:-2]
        w = w.strip("'-")
        if len(w) >= 3 and w not in _FILLER and w not in _STOCK:
            words.add(w)
    return len(words)


# ------------------------------------------------------------------------------ the table
@dataclass(frozen=True)
class Rule:
    """One consent rule. ``check(ctx)`` returns the refusal message, or None when met."""

    code: str
    stage: str  # "record" | "use" | "open"
    refuses: str  # when the bot refuses, in plain words (docs/commands.md)
    source: str  # the guidance paragraph(s) it comes from
    check: Callable[[Any], str | None] = field(repr=False, compare=False)


@dataclass(frozen=True)
class _Recording:
    """What the ``record`` rules look at."""

    cmd: ConsentCmd
    actor: Actor
    at: datetime
    today: date
    policy: Policy
    practice: str | None
    age: int | None  # from dob=, None without it

    @property
    def basis(self) -> ConsentBasis | None:
        return self.cmd.basis

    @property
    def statement(self) -> str:
        return (self.cmd.statement or "").strip()


@dataclass(frozen=True)
class _Use:
    """What the ``use`` and ``open`` rules look at."""

    consent: ConsentRecord
    actor: Actor | None
    at: datetime
    purpose: Purpose
    policy: Policy | None
    specialty: str | None  # set when a referral is being opened

    @property
    def cid(self) -> str:
        return self.consent.consent_id


def _practice_of(actor: Actor, policy: Policy | None) -> str | None:
    return actor.practice or (policy.practices.get(actor.user_id) if policy else None)


# ---- record-stage checks (each returns a refusal message or None)
def _r_practice(c: _Recording) -> str | None:
    if not c.practice:
        return ("You are not listed with a practice in the clinician directory, so I cannot record consent for you; "
                "ask your administrator to add you.")
    return None


def _r_patient(c: _Recording) -> str | None:
    if not (c.cmd.patient or "").strip(" -."):
        return "Add patient=<NHS number> (I store only a keyed hash of it)."
    return None


def _r_patient_format(c: _Recording) -> str | None:
    try:
        check_patient_ref(c.cmd.patient or "", c.policy.patient_ref_schemes)
    except PatientRefInvalid as exc:
        return str(exc)
    return None


def _r_who(c: _Recording) -> str | None:
    if c.basis is None:
        return "Say who consented with by=patient, parent, attorney, deputy, best-interests, deceased-wishes, executor or family."
    return None


def _r_purposes(c: _Recording) -> str | None:
    if not c.cmd.purposes:
        return "Name each purpose the consent covers, e.g. purposes=care or purposes=care,teaching."
    return None


def _r_identifiable(c: _Recording) -> str | None:
    if c.cmd.identifiable is None:
        return "Say whether identifiable images (e.g. showing the face) are covered: identifiable=yes or identifiable=no."
    return None


def _r_notes(c: _Recording) -> str | None:
    if c.cmd.notes is not True:
        return "Record the consent in the patient's notes first, then add notes=yes."
    return None


def _r_specialties(c: _Recording) -> str | None:
    words = c.cmd.specialties
    names = ", ".join(c.policy.specialty_names()) or "none configured"
    if not words:
        return (f"Name the specialty the patient agreed to, e.g. specialties=dermatology (here: {names}), "
                "or specialties=any.")
    if words == (ANY_SPECIALTY,):
        return None
    unknown = [w for w in words if c.policy.find_specialty(w) is None]
    if unknown:
        return f"specialties= names a specialty I do not know; choose from: {names}, or any."
    return None


def _r_valid_for(c: _Recording) -> str | None:
    window = c.cmd.valid_for
    if window is None:
        return None
    if window.total_seconds() <= 0:
        return "valid-for= must be at least 1 day, e.g. valid-for=30d."
    if window > c.policy.max_consent_window:
        return (f"valid-for= may be at most {c.policy.max_consent_window.days} days here; "
                "give a shorter valid-for= (record a new consent for a new episode).")
    return None


def _r_dob(c: _Recording) -> str | None:
    if c.cmd.dob is not None and c.cmd.dob > c.today:
        return "The date of birth is in the future; check dob=YYYY-MM-DD."
    return None


def _r_adult(c: _Recording) -> str | None:
    if c.cmd.adult is True and c.age is not None and c.age < LPA_AGE:
        return f"adult=yes does not match the date of birth (the patient is {c.age}); check dob= or leave adult= out."
    return None


def _r_age(c: _Recording) -> str | None:
    if c.basis is None or c.basis.deceased or c.basis is ConsentBasis.PARENT:
        return None  # deceased: age does not decide who speaks; parent: who.parent asks for dob=
    if c.age is not None or c.cmd.adult is True:
        return None
    if c.basis is ConsentBasis.PATIENT:
        return ("The patient could be a child: give the date of birth (dob=YYYY-MM-DD) or confirm adult=yes "
                "(18 or over).")
    minimum = LPA_AGE if c.basis is ConsentBasis.ATTORNEY else MCA_AGE
    return (f"{_ACTS[c.basis]} only for a patient aged {minimum} or over: give dob=YYYY-MM-DD or confirm adult=yes.")


def _r_who_child(c: _Recording) -> str | None:
    years = c.policy.age_out_years
    if c.basis is ConsentBasis.PATIENT and c.age is not None and c.age < years and c.cmd.gillick is not True:
        return (f"The patient is under {years}: they can consent themself only if Gillick competent (add gillick=yes), "
                "otherwise record a parent's consent with by=parent.")
    return None


def _r_who_parent(c: _Recording) -> str | None:
    if c.basis is not ConsentBasis.PARENT:
        return None
    years = c.policy.age_out_years
    if c.cmd.dob is None:
        return (f"A parent's consent needs the child's date of birth (dob=YYYY-MM-DD) so I know when it stops at {years}; "
                "only its month and year are kept.")
    assert c.age is not None
    if c.age >= LPA_AGE:
        return ("The patient is an adult, so a parent cannot consent for them: record by=patient, or if they lack "
                "capacity by=attorney, by=deputy or by=best-interests with a statement.")
    if years <= c.age < MCA_AGE:
        return (f"A parent's consent stops at {years} here and the patient is {c.age}: record their own consent "
                "with by=patient gillick=yes.")
    if c.cmd.gillick is True and c.age < years:
        return "A Gillick-competent child decides for themself: record their own consent with by=patient gillick=yes."
    return None


def _r_who_young_person(c: _Recording) -> str | None:
    if c.basis is not ConsentBasis.PARENT or c.age is None:
        return None
    if max(MCA_AGE, c.policy.age_out_years) <= c.age < LPA_AGE:
        return (f"At {c.age} the Mental Capacity Act applies, not parental consent: if they can decide, by=patient; "
                "if not, by=deputy or by=best-interests with a statement (an LPA needs 18+).")
    return None


def _r_who_adult(c: _Recording) -> str | None:
    if c.basis not in (ConsentBasis.ATTORNEY, ConsentBasis.DEPUTY, ConsentBasis.BEST_INTERESTS) or c.age is None:
        return None
    minimum = LPA_AGE if c.basis is ConsentBasis.ATTORNEY else MCA_AGE
    if c.age >= minimum:
        return None
    if c.age < MCA_AGE:
        return (f"{_ACTS[c.basis]} only from {MCA_AGE}: for a child record a parent's consent (by=parent), "
                "or the child's own if Gillick competent.")
    return (f"An LPA can only be made at {LPA_AGE} or over, so an attorney cannot act for a {c.age}-year-old: "
            "use by=deputy or by=best-interests with a statement.")


def _r_statement(c: _Recording) -> str | None:
    if c.basis not in _FOR_THE_PATIENT:
        return None
    if statement_substance(c.statement) >= MIN_STATEMENT_WORDS:
        return None
    if c.basis is ConsentBasis.PARENT:
        ask = "why sharing helps the child and the child's own view"
    else:
        ask = "why sharing helps the patient, their wishes and whose views were heard"
    return (f"A decision made for the patient needs statement=\"...\" saying {ask}, in at least "
            f"{MIN_STATEMENT_WORDS} words of substance (not a stock phrase).")


def _r_wishes(c: _Recording) -> str | None:
    if c.basis is None or not c.basis.deceased:
        return None
    if statement_substance(c.statement) >= MIN_STATEMENT_WORDS:
        return None
    return ("For a patient who has died, record their known wishes and/or the views of those close to them in "
            f"statement=\"...\" (at least {MIN_STATEMENT_WORDS} words of substance).")


def _r_deceased_purposes(c: _Recording) -> str | None:
    if c.basis is None or not c.basis.deceased or not c.cmd.purposes:
        return None
    if c.cmd.purposes <= DECEASED_PURPOSES:
        return None
    return ("For a patient who has died the images may be used only for teaching, audit, or care "
            "(a second opinion for the family's care): limit purposes= to those.")


def _r_statement_identifiers(c: _Recording) -> str | None:
    if not c.statement:
        return None
    found = find_identifiers(c.statement, today=c.today, reference_patterns=c.policy.reference_patterns())
    if not found:
        return None
    return (f"The statement contains what looks like {found.describe()}; describe people by their role "
            "(e.g. 'her daughter') and give statement= again.")


def _r_statement_length(c: _Recording) -> str | None:
    if len(c.statement) > MAX_STATEMENT_CHARS:
        return f"The statement is over {MAX_STATEMENT_CHARS} characters; give a shorter statement=\"...\" (a short paragraph)."
    return None


def _r_retention(c: _Recording) -> str | None:
    retention = c.cmd.retention if c.cmd.retention is not None else c.policy.default_retention
    if retention.total_seconds() <= 0:
        return "Retention must be at least 1 day, e.g. retention=90d."
    if retention > c.policy.max_retention:
        return f"Retention may be at most {c.policy.max_retention.days} days here; give a shorter retention=."
    return None


def _r_expires(c: _Recording) -> str | None:
    if c.cmd.expires is not None and _midnight_utc(c.cmd.expires) <= c.at:
        return "The consent end date has already passed; give a future expires=YYYY-MM-DD or leave it out."
    return None


# ---- use-stage checks (every new sharing)
def _u_withdrawn(u: _Use) -> str | None:
    if u.consent.withdrawn:
        return f"Consent {u.cid} has been withdrawn; record a new consent with !consent."
    return None


def _u_expired(u: _Use) -> str | None:
    if u.consent.expires_at is not None and u.consent.expires_at <= u.at:
        return f"Consent {u.cid} has expired; record a new consent with !consent."
    return None


def _u_practice(u: _Use) -> str | None:
    if u.actor is not None and _practice_of(u.actor, u.policy) != u.consent.practice:
        return f"Consent {u.cid} was recorded by another practice; record consent at your own practice with !consent."
    return None


def _u_purpose(u: _Use) -> str | None:
    if u.purpose not in u.consent.purposes:
        return f"Consent {u.cid} does not cover {u.purpose.value}; record a consent with purposes={u.purpose.value}."
    return None


def _u_notes(u: _Use) -> str | None:
    if not u.consent.recorded_in_notes:
        return f"Consent {u.cid} is not recorded in the notes; record it there and give a new !consent with notes=yes."
    return None


def _u_age_out(u: _Use) -> str | None:
    c = u.consent
    if c.basis is ConsentBasis.PARENT and c.age_out_at is not None and u.at >= c.age_out_at:
        years = u.policy.age_out_years if u.policy else 16
        return (f"Consent {u.cid} was given by a parent and the patient has now reached {years}: "
                "ask the patient for their own consent (!consent ... by=patient).")
    return None


# ---- open-stage checks (only when a referral is being opened)
def refer_until(consent: ConsentRecord, policy: Policy | None) -> datetime:
    """Until when referrals may be opened under *consent* (records from before issue 12
    get the deployment's current window)."""
    if consent.refer_until is not None:
        return consent.refer_until
    window = policy.consent_window if policy is not None else Policy().consent_window
    return consent.recorded_at + window


def _o_episode(u: _Use) -> str | None:
    if u.at >= refer_until(u.consent, u.policy):
        return (f"Consent {u.cid} was for one episode, and new referrals under it could be opened until "
                f"{_day(refer_until(u.consent, u.policy), u.policy)}; record a new consent with !consent.")
    return None


def _o_specialty(u: _Use) -> str | None:
    named = u.consent.specialties
    if named is None or u.specialty is None or u.specialty in named:
        return None
    return (f"Consent {u.cid} covers {', '.join(sorted(named))} only; record a consent with "
            f"specialties={u.specialty} (the patient must agree to it).")


RECORD, USE, OPEN = "record", "use", "open"

_REC = "GMC Recordings"
_CONF = "GMC Confidentiality"
RULES: tuple[Rule, ...] = (
    Rule("practice", RECORD, "you are not listed with a practice",
         f"{_REC} para 15 (a recording made for care is part of the medical record); {_CONF}, main principles, "
         "'manage and protect information' (paragraph number not confirmed)", _r_practice),
    Rule("patient", RECORD, "no `patient=`",
         f"{_REC} para 24 (consent, or a record of it, is kept with the recording)", _r_patient),
    Rule("patient.format", RECORD,
         "`patient=` is 10 digits failing the NHS modulus-11 check, or matches none of the deployment's schemes "
         "(a name is refused)",
         "NHS Data Dictionary, NHS Number (modulus 11 check digit); our own data check", _r_patient_format),
    Rule("who", RECORD, "no `by=`", f"{_REC} paras 13, 31-32 and 34 (who may consent)", _r_who),
    Rule("purposes", RECORD, "no purpose named (`all` is refused: each purpose is named)",
         f"{_REC} paras 13 and 24; MDU 2014, 'Patient consent' (explicit consent whether or not the patient is "
         "identifiable)", _r_purposes),
    Rule("identifiable", RECORD, "whether identifiable images are covered is not stated",
         f"{_REC} para 17 (apparently insignificant details may identify a patient)", _r_identifiable),
    Rule("notes", RECORD, "not `notes=yes`", f"{_REC} paras 14 and 24 (record it in the notes)", _r_notes),
    Rule("specialties", RECORD, "no `specialties=` (or `any`), or a specialty the deployment does not have",
         f"{_REC} para 25 (explain the purpose and how the recording will be used)", _r_specialties),
    Rule("valid-for", RECORD, "`valid-for=` is zero or longer than the operator allows",
         f"{_REC} para 25 (consent is to a stated use, not open-ended)", _r_valid_for),
    Rule("dob", RECORD, "the date of birth is in the future", "our own data check", _r_dob),
    Rule("adult", RECORD, "`adult=yes` with a date of birth under 18", "our own data check", _r_adult),
    Rule("age", RECORD,
         "`by=patient`, `attorney`, `deputy` or `best-interests` with neither `dob=` nor `adult=yes` "
         "(the patient could be a child)",
         "GMC 0-18 paras 24-25 (capacity depends on age and maturity; presumed at 16); MCA s2(5), s9(2)(c)", _r_age),
    Rule("who.child", RECORD, "`by=patient` under 16 without `gillick=yes`",
         f"GMC 0-18 para 25(b); {_REC} para 34 (a child under 16 with capacity may consent)", _r_who_child),
    Rule("who.parent", RECORD,
         "`by=parent` without `dob=`; or the patient is 18 or over; or the child is Gillick competent",
         f"{_REC} para 34; GMC 0-18 para 27 (a parent consents for a child who lacks capacity)", _r_who_parent),
    Rule("who.young-person", RECORD,
         "`by=parent` for a 16-17-year-old: the Mental Capacity Act path applies (a deputy, or a best-interests "
         "decision; an LPA needs 18+)",
         "GMC 0-18 para 28; MCA s2(5) (the Act applies from 16)", _r_who_young_person),
    Rule("who.adult", RECORD,
         "`by=attorney` under 18; `by=deputy` or `by=best-interests` under 16",
         "MCA s9(2)(c) (an LPA is made at 18 or over); MCA s2(5) (no power under the Act for a person under 16)",
         _r_who_adult),
    Rule("statement", RECORD,
         "a parent, attorney, deputy or best-interests decision, for any purpose, without a meaningful statement "
         f"(at least {MIN_STATEMENT_WORDS} words of substance)",
         f"{_REC} paras 31-32 and 34; MCA s1(5), s4(6) (the person's wishes and feelings), s4(7) (the views of "
         "carers, attorney, deputy)", _r_statement),
    Rule("wishes", RECORD,
         "a deceased patient (`deceased-wishes`, `executor`, `family`) without their known wishes and/or the views "
         "of those close to them in `statement=`",
         f"{_REC} paras 47-48; {_CONF} paras 134-138 (after a patient's death)", _r_wishes),
    Rule("deceased.purposes", RECORD,
         "a deceased patient's images for research or publication (only teaching, audit, or care: a second "
         "opinion for the family's care)",
         f"{_REC} paras 47-48 (known wishes; consult the family where the recording bears on them); {_CONF} "
         "paras 134-138", _r_deceased_purposes),
    Rule("statement.identifiers", RECORD,
         "the statement contains an identifier (NHS number, date of birth, name, address, postcode, phone, email)",
         f"{_CONF}, main principles, 'use the minimum necessary personal information' (paragraph number not "
         "confirmed)", _r_statement_identifiers),
    Rule("statement.length", RECORD, f"the statement is over {MAX_STATEMENT_CHARS} characters",
         "our own limit (a short paragraph)", _r_statement_length),
    Rule("retention", RECORD, "retention zero, or longer than the operator allows",
         f"{_REC} para 25 (say how long the recording will be kept)", _r_retention),
    Rule("expires", RECORD, "`expires=` is in the past", "our own data check", _r_expires),
    Rule("withdrawn", USE, "the consent was withdrawn", f"{_REC} para 25 (patients may withdraw consent)", _u_withdrawn),
    Rule("expired", USE, "past its `expires=` date", f"{_REC} para 25", _u_expired),
    Rule("practice", USE, "the consent was recorded by another practice",
         f"{_REC} para 15; {_CONF}, main principles (paragraph number not confirmed)", _u_practice),
    Rule("purpose", USE, "the consent does not include `care` (a referral is care / second opinion)",
         f"{_REC} paras 13 and 24", _u_purpose),
    Rule("notes", USE, "the consent is not recorded in the notes", f"{_REC} paras 14 and 24", _u_notes),
    Rule("age-out", USE, "a parent's consent once the patient reaches 16 (configurable): new sharing needs their own",
         f"{_REC} para 35; GMC 0-18 para 25(a)", _u_age_out),
    Rule("episode", OPEN,
         "a new referral after the consent's window (one episode: 30 days unless `valid-for=`)",
         f"{_REC} para 25; MDU 2014, 'Patient consent'", _o_episode),
    Rule("specialty", OPEN, "a new referral to a specialty the consent does not name",
         f"{_REC} para 25; MDU 2014, 'Patient consent'", _o_specialty),
)


def _rules(stage: str) -> tuple[Rule, ...]:
    return tuple(r for r in RULES if r.stage == stage)


# ------------------------------------------------------------------------------ entry points
def record_consent(
    cmd: ConsentCmd,
    *,
    consent_id: str,
    actor: Actor,
    at: datetime,
    hasher: PatientRefHasher,
    policy: Policy,
) -> ConsentRecord:
    """Check a ``!consent`` against every ``record`` rule; return the record or raise
    ``ConsentRefused``.

    Kept in the record: a keyed hash of the reference plus its scheme and last 3
    characters; the year and month of birth (not the day); the parent's age-out date.
    The exact date of birth is used here and dropped. (The reference itself goes only
    to the vault, encrypted, for filing: handlers/workflow.py.)
    """
    today = at.astimezone(timezone.utc).date()
    age = age_on(cmd.dob, today) if cmd.dob is not None and cmd.dob <= today else None
    ctx = _Recording(cmd=cmd, actor=actor, at=at, today=today, policy=policy,
                     practice=_practice_of(actor, policy), age=age)
    for rule in _rules(RECORD):
        message = rule.check(ctx)
        if message is not None:
            raise ConsentRefused(Refusal(rule.code, message))

    assert ctx.practice and cmd.patient and cmd.basis and cmd.purposes is not None and cmd.identifiable is not None
    checked = check_patient_ref(cmd.patient, policy.patient_ref_schemes)
    retention = cmd.retention if cmd.retention is not None else policy.default_retention
    age_out_at = _midnight_utc(birthday(cmd.dob, policy.age_out_years)) if cmd.basis is ConsentBasis.PARENT and cmd.dob else None
    words = cmd.specialties or (ANY_SPECIALTY,)
    specialties = None
    if words != (ANY_SPECIALTY,):
        specialties = frozenset(spec.key for spec in (policy.find_specialty(w) for w in words) if spec is not None)
    window = cmd.valid_for if cmd.valid_for is not None else policy.consent_window
    return ConsentRecord(
        consent_id=consent_id,
        patient_ref=hasher.hash(checked.canonical),
        practice=ctx.practice,
        recorded_by=actor.user_id,
        recorded_at=at,
        basis=cmd.basis,
        purposes=frozenset(cmd.purposes),
        identifiable=cmd.identifiable,
        recorded_in_notes=True,
        retention=retention,
        age_out_at=age_out_at,
        gillick_competent=cmd.gillick,
        best_interests_statement=ctx.statement or None,
        expires_at=_midnight_utc(cmd.expires) if cmd.expires is not None else None,
        patient_ref_scheme=checked.scheme,
        patient_ref_ending=checked.ending,
        birth_month=f"{cmd.dob.year:04d}-{cmd.dob.month:02d}" if cmd.dob is not None else None,
        adult_asserted=True if cmd.adult is True and cmd.dob is None else None,
        sex=cmd.sex,
        specialties=specialties,
        refer_until=at + window,
    )


def check_cover(
    consent: ConsentRecord,
    *,
    actor: Actor | None,
    at: datetime,
    purpose: Purpose = Purpose.CARE,
    policy: Policy | None = None,
    specialty: str | None = None,
) -> Refusal | None:
    """None if *consent* covers NEW sharing for *purpose* by *actor* at *at*, else the
    first unmet rule. ``actor=None`` skips the practice check (re-checks of a referral
    whose referrer was checked when it opened). ``specialty`` (a specialty key) means a
    referral is being opened: the episode rules (window, specialties) apply too."""
    ctx = _Use(consent=consent, actor=actor, at=at, purpose=purpose, policy=policy, specialty=specialty)
    stages = (USE, OPEN) if specialty is not None else (USE,)
    for stage in stages:
        for rule in _rules(stage):
            message = rule.check(ctx)
            if message is not None:
                return Refusal(rule.code, message)
    return None


def _purpose_words(consent: ConsentRecord) -> str:
    order = [p for p in Purpose if p in consent.purposes]
    words = []
    for p in order:
        if p is Purpose.CARE and consent.basis.deceased:
            words.append("care (a second opinion for the family's care)")
        else:
            words.append(p.value)
    return ", ".join(words)


def _day(at: datetime, policy: Policy | None) -> str:
    """A date shown to people: the local calendar day in the configured zone (issue 10)."""
    return local_date(at, policy.time_zone if policy is not None else DEFAULT_ZONE).isoformat()


def consent_summary(consent: ConsentRecord, policy: Policy | None = None) -> str:
    """One line for the GP when a consent is recorded (no patient reference, no free text)."""
    parts = [
        f"Consent {consent.consent_id} recorded for {consent.patient_hint}: {_BASIS_WORDS[consent.basis]}",
        "for " + _purpose_words(consent),
        "identifiable images " + ("covered" if consent.identifiable else "NOT covered (I check each photo for faces and text and hold any where I find them)"),
        "specialties: " + (", ".join(sorted(consent.specialties)) if consent.specialties is not None else "any"),
        f"new referrals until {_day(refer_until(consent, policy), policy)}",
        f"images kept {consent.retention.days} days",
    ]
    if consent.age_out_at is not None:
        parts.append(f"stops covering new sharing on {_day(consent.age_out_at, policy)}")
    return "; ".join(parts) + "."


def describe_consent(consent: ConsentRecord, *, at: datetime, policy: Policy | None = None) -> str:
    """The read-back for ``!consent show``: every recorded field except the patient
    reference (its scheme and last 3 characters only) and the exact date of birth."""
    if consent.withdrawn:
        status = f"WITHDRAWN {_day(consent.withdrawn_at, policy)}"  # type: ignore[union-attr]
    elif consent.expires_at is not None and consent.expires_at <= at:
        status = "EXPIRED"
    elif at >= refer_until(consent, policy):
        status = "episode over (no new referrals; open ones continue)"
    else:
        status = "active"
    lines = [
        f"Consent {consent.consent_id} ({status}), recorded {_day(consent.recorded_at, policy)} by "
        f"{consent.recorded_by} for {consent.practice}.",
        f"Patient: {consent.patient_hint}.",
        _BASIS_WORDS[consent.basis].capitalize() + (" (Gillick competent)" if consent.gillick_competent else "") + ".",
    ]
    about = []
    band = age_band(consent, at.date())
    if band:
        about.append("adult (18+, stated)" if band == "adult" else f"age {band}")
    if consent.sex is not None:
        about.append(f"sex {consent.sex.value}")
    if about:
        lines.append("About the patient: " + ", ".join(about) + ".")
    lines.append(f"Purposes: {_purpose_words(consent)}. Identifiable images "
                 + ("covered." if consent.identifiable else "NOT covered."))
    lines.append("Specialties: " + (", ".join(sorted(consent.specialties)) if consent.specialties is not None else "any")
                 + f". New referrals until {_day(refer_until(consent, policy), policy)}.")
    tail = f"Images kept {consent.retention.days} days."
    if consent.expires_at is not None:
        tail += f" Ends {_day(consent.expires_at, policy)}."
    if consent.age_out_at is not None:
        tail += f" Parent's consent stops covering new sharing on {_day(consent.age_out_at, policy)}."
    lines.append(tail + " Recorded in the notes: " + ("yes." if consent.recorded_in_notes else "no."))
    if consent.best_interests_statement:
        label = "Known wishes / views of those close to them" if consent.basis.deceased else "Statement"
        lines.append(f"{label}: \"{consent.best_interests_statement}\"")
    return "\n".join(lines)
