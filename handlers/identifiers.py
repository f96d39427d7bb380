"""Identifier guard: does a free text carry something that identifies the patient?

Pure (no I/O, no clock: the caller passes ``today``). ``find_identifiers(text,
today=...)`` returns a ``Findings``: the *kinds* found (NHS number, date of birth,
postcode, phone number, email address, titled name, a deployment's own patient
reference), never the matched text, so a caller can say "Your question contains
what looks like an NHS number and a postcode; remove them and send it again."
without echoing anything back (``held_message``).

Why: the clinical question, history and replies are posted verbatim into a
specialty room; an identifier typed there defeats the keyed hashing of the
patient reference (GMC Confidentiality (2017), main principles: use the minimum
necessary personal information; GMC recordings guidance para 17: apparently
insignificant details may identify a patient).

What counts (docs/commands.md "Identifier guard" has the same list for users):

* **NHS number**: 10 digits written together or grouped 3-3-4 (space, dash or dot)
  that pass the modulus-11 check digit. Any 10 digits right after a label ("NHS",
  "NHS no", "NHS number") count, valid or not: a mistyped NHS number still points
  at one patient. CHI and H&C numbers use the same check digit and are caught too.
* **Date of birth**: a full date (day, month, year; ``01/02/1950``, ``1.2.50``,
  ``1950-02-01``, ``1st February 1950``, ``Feb 1, 1950``) or a month and year,
  *labelled* as a birth date (DOB, D.O.B., date of birth, born, b.); or a full date
  with no label that is at least a year old and has no event word near it (see
  ``EVENT_WORDS``). **How a date of onset differs from a date of birth**: an onset
  or event date is written with an event word before it ("since 01/03/2026",
  "started on 3/1/26", "biopsy 12/05/2019") or after it ("12/05/2019 excision"),
  or is recent (less than a year before ``today``), or lacks the day ("March
  2024", "03/2024"). Durations ("3 months", "2/52", "6/12") and plain years
  ("in 2019") are never dates here. A birth year alone (an age in disguise) is not
  held: the specialist gets an age band anyway.
* **UK postcode**: the Royal Mail shape (outward code, optional space, digit and
  two letters from the inward-code alphabet, which has no C, I, K, M, O or V, so
  "B12 1mg" or "5 cm" never match); lower-case ordinals ("L5 1st") are not postcodes.
* **Phone number**: any number Google's libphonenumber (``phonenumbers``) finds
  valid in the text with the UK as the default region (landlines, mobiles,
  international ``+…``), plus anything shaped like a UK number even when that
  library does not know the range (a trunk ``0`` or ``+44``/``0044`` then 9-10
  digits, in any grouping) and any ``+`` number of 7-15 digits, because a
  mistyped or fictional-looking phone number is still personal.
* **Email address**: ``local@domain.tld``.
* **Street address**: a house number, one to three capitalised words and a street
  word ("12 High St", "4a Mill Lane", "Flat 2, 10 Station Road"). Not in the
  issue's list, but its own example carried one.
* **Titled name**: a title (Mr, Mrs, Ms, Miss, Mx, Dr, Prof, Master, Sir, Dame,
  Lady, Lord, Rev, Revd) followed by optional initials and a capitalised name
  ("Mrs Jane Doe", "Mr J. Smith", "Dr. A Patel"); lower-case "mr"/"mrs"/"mx"
  followed by any word. Untitled names ("Jane Doe") cannot be told from ordinary
  words and are not detected: the help text asks GPs never to type names.
* **Patient reference**: a match of one of the deployment's own reference patterns
  (hospital numbers; see ``Policy.patient_ref_schemes``), when the caller passes them.

NHS numbers, postcodes, email addresses and patient references are ``blocking``:
a caller must not offer "post anyway" for them (issue 12). The others may be
offered for confirmation, because a date or a "Dr …" can be clinical.
"""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import date
from typing import Iterable, Pattern

import phonenumbers

__all__ = [
    "IdentifierKind",
    "Findings",
    "find_identifiers",
    "held_message",
    "nhs_check_digit_ok",
    "EVENT_WORDS",
]


class IdentifierKind(enum.Enum):
    """What was found (never where or what it said). Order = order in messages."""

    NHS_NUMBER = "nhs-number"
    PATIENT_REFERENCE = "patient-reference"
    DATE_OF_BIRTH = "date-of-birth"
    NAME = "name"
    ADDRESS = "address"
    POSTCODE = "postcode"
    PHONE = "phone"
    EMAIL = "email"

    @property
    def noun(self) -> str:
        return _NOUNS[self]

    @property
    def blocking(self) -> bool:
        """True when no "post anyway" may be offered (issue 12, part 2)."""
        return self in _BLOCKING


_NOUNS = {
    IdentifierKind.NHS_NUMBER: "an NHS number",
    IdentifierKind.PATIENT_REFERENCE: "a patient reference number",
    IdentifierKind.DATE_OF_BIRTH: "a date of birth",
    IdentifierKind.NAME: "a name",
    IdentifierKind.ADDRESS: "a street address",
    IdentifierKind.POSTCODE: "a postcode",
    IdentifierKind.PHONE: "a phone number",
    IdentifierKind.EMAIL: "an email address",
}
_BLOCKING = frozenset(
    {IdentifierKind.NHS_NUMBER, IdentifierKind.PATIENT_REFERENCE, IdentifierKind.POSTCODE, IdentifierKind.EMAIL}
)
_ORDER = {k: i for i, k in enumerate(IdentifierKind)}


@dataclass(frozen=True)
class Findings:
    """The kinds of identifier found in one text, in message order, each once."""

    kinds: tuple[IdentifierKind, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.kinds)

    def __contains__(self, kind: object) -> bool:
        return kind in self.kinds

    @property
    def blocking(self) -> bool:
        """At least one kind for which "post anyway" must not be offered."""
        return any(k.blocking for k in self.kinds)

    def describe(self) -> str:
        """"an NHS number and a postcode" / "a name, a postcode and a phone number"."""
        nouns = [k.noun for k in self.kinds]
        if not nouns:
            return "nothing identifying"
        if len(nouns) == 1:
            return nouns[0]
        return ", ".join(nouns[:-1]) + " and " + nouns[-1]

    @property
    def codes(self) -> str:
        """Comma-separated kind codes, safe for the audit trail ("nhs-number,postcode")."""
        return ",".join(k.value for k in self.kinds)


def held_message(findings: Findings, what: str = "question") -> str:
    """The one-line reply for a held text; names the kinds only, never the text."""
    them = "it" if len(findings.kinds) == 1 else "them"
    return f"Your {what} contains what looks like {findings.describe()}; remove {them} and send it again."


# --------------------------------------------------------------------------- NHS number
def nhs_check_digit_ok(digits: str) -> bool:
    """Modulus 11 (NHS Data Dictionary): weights 10..2 on the first nine digits;
    check = 11 - (sum mod 11), 11 -> 0, 10 -> invalid; it must equal the tenth."""
    if len(digits) != 10 or not digits.isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(digits[:9], range(10, 1, -1)))
    check = 11 - total % 11
    if check == 11:
        check = 0
    return check != 10 and check == int(digits[9])


_NHS_SHAPED = re.compile(r"(?<![\w.\-/])(\d{3})([ \-.]?)(\d{3})\2(\d{4})(?![\w/]|[.\-]\d)")
_NHS_LABEL = re.compile(
    r"\bNHS(?:\s*(?:no\.?|num(?:ber)?\.?|#|id))?\s*[:=\-]?\s*((?:\d[ \-.]{0,2}){9}\d)(?!\d)", re.IGNORECASE
)

# --------------------------------------------------------------------------- dates
_MONTHS = {
    "jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6,
    "jul": 7, "aug": 8, "sep": 9, "sept": 9, "oct": 10, "nov": 11, "dec": 12,
}
_MONTH_WORD = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
    r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?"
)
_ORD = r"(?:st|nd|rd|th)?"
# Full dates. Each has named groups d, m (number or word) and y.
_FULL_DATES: tuple[Pattern[str], ...] = (
    # 01/02/1950, 1.2.50, 01-02-1950 (UK order; the same separator twice)
    re.compile(r"(?<![\w/.\-])(?P<d>\d{1,2})(?P<s>[/.\-])(?P<m>\d{1,2})(?P=s)(?P<y>\d{4}|\d{2})(?![\w/]|[.\-]\d)"),
    # 1950-02-01
    re.compile(r"(?<![\w/.\-])(?P<y>\d{4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})(?![\w/]|[.\-]\d)"),
    # 1st February 1950, 1 Feb 50, 01-Feb-1950, 1 of March 1950
    re.compile(
        rf"(?<![\w/.])(?P<d>\d{{1,2}}){_ORD}(?:\s+of)?[\s\-/.]*(?P<m>{_MONTH_WORD})[\s\-/.,]*(?P<y>\d{{4}}|'?\d{{2}})(?![\w/])",
        re.IGNORECASE,
    ),
    # February 1st, 1950 / Feb 1 1950
    re.compile(
        rf"(?<![\w/.])(?P<m>{_MONTH_WORD})\s+(?P<d>\d{{1,2}}){_ORD},?\s+(?P<y>\d{{4}})(?![\w/])", re.IGNORECASE
    ),
)
# Month and year only (held only when labelled as a birth date).
_MONTH_YEAR: tuple[Pattern[str], ...] = (
    re.compile(rf"(?<![\w/.])(?P<m>{_MONTH_WORD})[\s\-/.,]*(?P<y>\d{{4}})(?![\w/])", re.IGNORECASE),
    re.compile(r"(?<![\w/.\-])(?P<m>\d{1,2})[/.\-](?P<y>\d{4})(?![\w/]|[.\-]\d)"),
)
_BIRTH_LABEL = re.compile(
    r"(?:\bd\.?\s?o\.?\s?b\b\.?|\bdate\s+of\s+birth\b|\bbirth\s*date\b|\bbirthday\b|\bborn\b(?:\s+on)?|\bb\.)\s*[:=\-]?\s*$",
    re.IGNORECASE,
)
#: Words that make a nearby full date an event (onset, procedure, result), not a birth date.
EVENT_WORDS = frozenset(
    """
    since from on onset started start starting began begun begin noticed appeared appearing first last
    until till to after before by between during in at and dated date seen reviewed review biopsy biopsied
    excised excision removed removal treated treatment tx prescribed rx started admitted admission discharged
    operated operation surgery op procedure scan ct mri us uss ultrasound xray x-ray cxr result results bloods
    blood test tests tested swab swabbed culture vaccinated vaccine vaccination injury injured fall fell visit
    appointment appt clinic referral referred letter consultation consulted episode diagnosed diagnosis dx hx
    histology histo path pathology report reported flare flared worse worsened better improved recurrence
    recurred relapse relapsed course cycle dose started stopped stop stopping changed increased reduced
    holiday travel trip returned bitten bite exposure exposed contact photo photos photographed image images
    last-seen ed a&e ooh gp telephone phoned called
    """.split()
)
_WORD = re.compile(r"[A-Za-z][A-Za-z&'\-]*")

# --------------------------------------------------------------------------- postcodes
_POSTCODE = re.compile(
    r"(?<![A-Za-z0-9])"
    r"(?P<out>GIR|[A-PR-UWYZ](?:\d[A-HJKPSTUW\d]?|[A-HK-Y]\d[ABEHMNPRVWXY\d]?))"
    r"\s{0,2}"
    r"(?P<in>\d[ABD-HJLNP-UW-Z]{2})"
    r"(?![A-Za-z0-9])",
    re.IGNORECASE,
)
_ORDINAL_SUFFIXES = frozenset({"st", "nd", "rd", "th"})

# --------------------------------------------------------------------------- phones
# UK-shaped numbers libphonenumber may not know (Ofcom drama ranges, typos):
# +44 / 0044 / trunk 0, then 9-10 digits with single spaces, dashes or brackets.
_UK_PHONE = re.compile(
    r"(?<![\w+])(?<!\d[ \-])"
    r"(?:(?:\+|00)44[ \-]?(?:\(0\)[ \-]?)?|\(?0)"
    r"[1-9](?:[ \-)]{0,2}\d){8,9}"
    r"(?![ \-]?\d)(?!\w)"
)

# Any "+country" number of 7-15 digits (E.164 allows 15), whatever the library knows.
_INTL_PHONE = re.compile(r"(?<![\w+])(?:\+|00(?=[1-9]))\d{1,3}[ \-.]?(?:\(\d{1,4}\)[ \-.]?)?\d(?:[ \-.]?\d){5,13}(?![\w])")

# --------------------------------------------------------------------------- email
_EMAIL = re.compile(r"(?<![\w.+\-])[A-Za-z0-9][A-Za-z0-9._%+\-]*@[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9\-]+)+")

# --------------------------------------------------------------------------- addresses
_STREET = (
    r"(?:Street|St|Road|Rd|Avenue|Ave|Lane|Ln|Close|Drive|Way|Court|Ct|Crescent|Cres|Place|Terrace|Gardens|"
    r"Gdns|Grove|Hill|Square|Sq|Mews|Walk|Row|Parade|Green|Rise|Vale|View|Park|Boulevard|Wharf|Yard)"
)
_ADDRESS = re.compile(
    rf"(?<![\w/.])(?:Flat\s+\d{{1,4}}[A-Za-z]?,?\s+)?\d{{1,4}}[A-Za-z]?,?\s+(?:[A-Z][a-z'’]+\s+){{1,3}}{_STREET}\b\.?"
)

# --------------------------------------------------------------------------- names
_TITLES = r"(?:Mrs|Mr|Ms|Miss|Mx|Dr|Prof|Master|Sir|Dame|Lady|Lord|Revd|Rev)"
# a capitalised name: "Doe", "McDonald", "O'Brien", "Smith-Jones", "Li"
_NAME_PART = r"[A-Z](?:[a-z]|['’][A-Z]|[A-Z](?=[a-z]))*[a-z]"
_CAP_NAME = rf"{_NAME_PART}(?:-{_NAME_PART})?"
_INITIAL = r"[A-Z]\.?"
_TITLED_NAME = re.compile(
    rf"(?<![\w.])(?:{_TITLES}|MRS|MR|MISS|MX)\.?\s+(?:{_INITIAL}\s*){{0,3}}(?:{_CAP_NAME}|[A-Z]{{2,}}\b)(?![\w])"
)
_LOWER_TITLE = re.compile(r"(?<![\w.])(?:mrs|mr|mx)\.?\s+(?:[a-z]\.\s*|[a-z]\s+(?=[a-z]))*(?P<w>[a-z][a-z'’\-]+)\b")
_LOWER_TITLE_CAP = re.compile(rf"(?<![\w.])(?:miss|ms|dr|prof)\.?\s+(?:{_INITIAL}\s*){{0,3}}{_CAP_NAME}(?![\w])")
#: words after a lower-case "mr" that are imaging, not a name (MR = magnetic resonance)
_MR_WORDS = frozenset(
    {"scan", "scans", "imaging", "angiogram", "angiography", "enterography", "guided", "spectroscopy",
     "sequence", "sequences", "report", "findings", "contrast", "arthrogram", "venogram", "head", "brain",
     "spine", "liver", "pelvis", "knee", "shoulder", "and", "or", "with", "of", "is", "was", "showed", "shows"}
)
# "Sir"/"Lady"/"Lord"/"Master" followed by words that are not names
_NOT_NAME_AFTER_TITLE = frozenset({"The", "And", "Or", "Of", "In", "On", "At", "To", "For", "With", "Has", "Had",
                                   "Is", "Was", "Who", "Which", "That", "This", "Please", "Thanks", "Thank"})


# --------------------------------------------------------------------------- the scan
class _Claims:
    """Character spans already attributed to a kind, so one token counts once
    (an NHS number is not also a phone number)."""

    def __init__(self) -> None:
        self.spans: list[tuple[int, int]] = []

    def free(self, start: int, end: int) -> bool:
        return all(end <= s or start >= e for s, e in self.spans)

    def take(self, start: int, end: int) -> None:
        self.spans.append((start, end))

    def masked(self, text: str) -> str:
        """*text* with claimed spans blanked to letters (same length), so a library
        scanning for numbers does not glue a date onto the phone number before it."""
        chars = list(text)
        for s, e in self.spans:
            chars[s:e] = "x" * (e - s)
        return "".join(chars)


def _year(text: str, today: date) -> int:
    y = int(text.lstrip("'"))
    if len(text.lstrip("'")) == 2:
        y += 2000 if 2000 + y <= today.year else 1900
    return y


def _month(text: str) -> int | None:
    t = text.strip(".").lower()
    if t.isdigit():
        return int(t)
    return _MONTHS.get(t[:4] if t.startswith("sept") else t[:3])


def _real_date(d: int, m: int | None, y: int) -> date | None:
    if m is None:
        return None
    try:
        return date(y, m, d)
    except ValueError:
        return None


def _labelled(text: str, start: int) -> bool:
    return bool(_BIRTH_LABEL.search(text[max(0, start - 24) : start]))


def _event_near(text: str, start: int, end: int) -> bool:
    before = [w.lower() for w in _WORD.findall(text[max(0, start - 40) : start])][-3:]
    after = [w.lower() for w in _WORD.findall(text[end : end + 30])][:2]
    return any(w in EVENT_WORDS for w in before + after)


def _find_dates(text: str, today: date, claims: _Claims) -> bool:
    found = False
    for pattern in _FULL_DATES:
        for m in pattern.finditer(text):
            if not claims.free(m.start(), m.end()):
                continue
            when = _real_date(int(m.group("d")), _month(m.group("m")), _year(m.group("y"), today))
            if when is None:
                continue
            claims.take(m.start(), m.end())  # a date, whatever kind: not also a phone number
            if _labelled(text, m.start()):
                found = True
            elif when <= today and (today - when).days >= 365 and not _event_near(text, m.start(), m.end()):
                found = True
    for pattern in _MONTH_YEAR:
        for m in pattern.finditer(text):
            if not claims.free(m.start(), m.end()):
                continue
            month = _month(m.group("m"))
            if month is None or not 1 <= month <= 12:
                continue
            if _labelled(text, m.start()):
                claims.take(m.start(), m.end())
                found = True
    return found


def _find_postcodes(text: str, claims: _Claims) -> bool:
    found = False
    for m in _POSTCODE.finditer(text):
        inward_letters = m.group("in")[1:]
        if inward_letters.lower() in _ORDINAL_SUFFIXES and not inward_letters.isupper():
            continue
        if claims.free(m.start(), m.end()):
            claims.take(m.start(), m.end())
            found = True
    return found


def _find_phones(text: str, claims: _Claims) -> bool:
    found = False
    for match in phonenumbers.PhoneNumberMatcher(claims.masked(text), "GB", leniency=phonenumbers.Leniency.VALID):
        if claims.free(match.start, match.end):
            claims.take(match.start, match.end)
            found = True
    for m in _UK_PHONE.finditer(text):
        if claims.free(m.start(), m.end()):
            claims.take(m.start(), m.end())
            found = True
    return found


def _find_names(text: str, claims: _Claims) -> bool:
    found = False
    for m in _TITLED_NAME.finditer(text):
        words = m.group(0).split()
        if len(words) >= 2 and words[1].strip(".") in _NOT_NAME_AFTER_TITLE:
            continue
        if claims.free(m.start(), m.end()):
            claims.take(m.start(), m.end())
            found = True
    for m in _LOWER_TITLE.finditer(text):
        if m.group("w") in _MR_WORDS or not claims.free(m.start(), m.end()):
            continue
        claims.take(m.start(), m.end())
        found = True
    for m in _LOWER_TITLE_CAP.finditer(text):
        if claims.free(m.start(), m.end()):
            claims.take(m.start(), m.end())
            found = True
    return found


def _find_references(text: str, patterns: Iterable[Pattern[str]], claims: _Claims) -> bool:
    found = False
    for pattern in patterns:
        for m in re.finditer(r"(?<![\w])[A-Za-z0-9][A-Za-z0-9\-]{2,}(?![\w])", text):
            token = m.group(0).replace("-", "").upper()
            if pattern.fullmatch(token) and claims.free(m.start(), m.end()):
                claims.take(m.start(), m.end())
                found = True
    return found


def find_identifiers(
    text: str,
    *,
    today: date,
    reference_patterns: Iterable[Pattern[str]] = (),
) -> Findings:
    """The kinds of patient identifier in *text* (see the module docstring).

    ``today`` is the date the text was written (from the event, never the clock):
    it decides which unlabelled full dates are old enough to look like a date of
    birth. ``reference_patterns``: compiled patterns of the deployment's own patient
    reference schemes, matched against tokens with dashes removed, upper-cased.
    """
    kinds: set[IdentifierKind] = set()
    claims = _Claims()
    # order matters: the most specific kinds claim their characters first
    for m in _EMAIL.finditer(text):
        claims.take(m.start(), m.end())
        kinds.add(IdentifierKind.EMAIL)
    for m in _NHS_LABEL.finditer(text):
        if claims.free(m.start(1), m.end(1)):
            claims.take(m.start(1), m.end(1))
            kinds.add(IdentifierKind.NHS_NUMBER)
    # a number with an international prefix is a phone number, even if its digits
    # happen to pass modulus 11 ("+44 123 493 1869")
    for m in _INTL_PHONE.finditer(text):
        if claims.free(m.start(), m.end()):
            claims.take(m.start(), m.end())
            kinds.add(IdentifierKind.PHONE)
    for m in _NHS_SHAPED.finditer(text):
        if claims.free(m.start(), m.end()) and nhs_check_digit_ok(m.group(1) + m.group(3) + m.group(4)):
            claims.take(m.start(), m.end())
            kinds.add(IdentifierKind.NHS_NUMBER)
    if _find_references(text, reference_patterns, claims):
        kinds.add(IdentifierKind.PATIENT_REFERENCE)
    if _find_dates(text, today, claims):
        kinds.add(IdentifierKind.DATE_OF_BIRTH)
    for m in _ADDRESS.finditer(text):
        if claims.free(m.start(), m.end()):
            claims.take(m.start(), m.end())
            kinds.add(IdentifierKind.ADDRESS)
    if _find_postcodes(text, claims):
        kinds.add(IdentifierKind.POSTCODE)
    if _find_phones(text, claims):
        kinds.add(IdentifierKind.PHONE)
    if _find_names(text, claims):
        kinds.add(IdentifierKind.NAME)
    return Findings(tuple(sorted(kinds, key=_ORDER.__getitem__)))
