"""Command grammar: text -> a parsed command dataclass, or ``CommandError`` with a one-line hint.

Pure and forgiving:

* a command starts with ``!`` (or ``/`` for Telegram); the word is case-insensitive
  and has synonyms (``!ref``, ``!revoke``, ``!list`` ...);
* ``!consent`` takes ``key=value`` pairs in any order (``key:value`` also works),
  keys and values case-insensitive, with synonyms; values with spaces go in quotes;
* ids are read forgivingly (``r7k3qx9`` == ``R-7K3QX9``, see handlers/ids.py).

A refusal never repeats what was typed (it may be a patient identifier or clinical
text, and replies are kept, sealed, until sent): it names the field instead.

This module only checks syntax. Whether a consent is acceptable is decided by
handlers/consent.py, whether a referral may change state by handlers/lifecycle.py.
The full grammar for users is ``HELP_TEXT`` (sent by ``!help``) and docs/commands.md.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Union

from handlers.ids import normalise_id
from handlers.model import ConsentBasis, Purpose, Sex

__all__ = [
    "CommandError",
    "ConsentCmd",
    "ConsentShowCmd",
    "ANY_SPECIALTY",
    "ReferCmd",
    "OpinionCmd",
    "WithdrawCmd",
    "StatusCmd",
    "CancelCmd",
    "ExportCmd",
    "BlurCmd",
    "DiscardCmd",
    "PhotoCmd",
    "ReplyCmd",
    "MorePhotosCmd",
    "AddendumCmd",
    "HelpCmd",
    "Command",
    "parse_command",
    "is_command",
    "HELP_TEXT",
    "HELP_GP",
    "HELP_SPECIALIST",
    "HELP_TOPICS",
]


class CommandError(ValueError):
    """Malformed command. ``str(exc)`` is one plain line saying what to type instead."""


# ---------------------------------------------------------------- parsed commands
#: ``specialties=any``: the consent covers referrals to any specialty.
ANY_SPECIALTY = "any"


@dataclass(frozen=True)
class ConsentCmd:
    patient: str | None = None  # raw reference: hash it at once, never store or log it
    basis: ConsentBasis | None = None
    purposes: frozenset[Purpose] | None = None
    identifiable: bool | None = None
    notes: bool | None = None
    dob: date | None = None  # exact date: used while recording, only its year-month is stored
    gillick: bool | None = None
    statement: str | None = None
    retention: timedelta | None = None
    expires: date | None = None
    adult: bool | None = None  # adult=yes: the patient is 18 or over (instead of dob=)
    sex: Sex | None = None
    specialties: tuple[str, ...] | None = None  # words as typed (lower case); ("any",) = any
    valid_for: timedelta | None = None  # how long referrals may be opened under it

    def __repr__(self) -> str:  # never print the patient reference or free text
        return "ConsentCmd(<redacted>)"


@dataclass(frozen=True)
class ConsentShowCmd:
    """``!consent show C-…``: read a consent back (never the patient reference)."""

    consent_id: str


@dataclass(frozen=True)
class ReferCmd:
    specialty: str
    consent_id: str
    question: str
    urgency: str = "routine"  # routine | urgent | 2ww (urgency=; the clock's timers, handlers/clock.py)

    def __repr__(self) -> str:
        return f"ReferCmd(specialty={self.specialty!r}, consent_id={self.consent_id!r}, question=<redacted>)"


@dataclass(frozen=True)
class OpinionCmd:
    text: str
    referral_id: str | None = None

    def __repr__(self) -> str:
        return f"OpinionCmd(referral_id={self.referral_id!r}, text=<redacted>)"


@dataclass(frozen=True)
class WithdrawCmd:
    consent_id: str


@dataclass(frozen=True)
class StatusCmd:
    referral_id: str | None = None


@dataclass(frozen=True)
class CancelCmd:
    referral_id: str


@dataclass(frozen=True)
class ExportCmd:
    referral_id: str


@dataclass(frozen=True)
class BlurCmd:
    """Post the held image(s) of a referral exactly as previewed: the faces and text found, blurred."""

    referral_id: str


@dataclass(frozen=True)
class DiscardCmd:
    """Drop the held image(s) of a referral without sending them; without an id, the
    photos the bot is holding because it did not know which referral they are for."""

    referral_id: str | None = None


@dataclass(frozen=True)
class PhotoCmd:
    """``!photo R-…``: the photo(s) the bot is holding are for this referral."""

    referral_id: str


@dataclass(frozen=True)
class ReplyCmd:
    """``!reply [R-…] <text>``: a message for the other side of a referral (the GP's
    answer into the thread, or a specialist's question to the GP). The id may be left
    out in a referral's thread; the workflow decides where it is required."""

    text: str
    referral_id: str | None = None

    def __repr__(self) -> str:
        return f"ReplyCmd(referral_id={self.referral_id!r}, text=<redacted>)"


@dataclass(frozen=True)
class MorePhotosCmd:
    """``!morephotos <what is needed>`` in a referral's thread."""

    text: str

    def __repr__(self) -> str:
        return "MorePhotosCmd(text=<redacted>)"


@dataclass(frozen=True)
class AddendumCmd:
    """``!addendum [R-…] <text>``: adds to an opinion already given."""

    text: str
    referral_id: str | None = None

    def __repr__(self) -> str:
        return f"AddendumCmd(referral_id={self.referral_id!r}, text=<redacted>)"


@dataclass(frozen=True)
class HelpCmd:
    topic: str | None = None


Command = Union[
    ConsentCmd, ConsentShowCmd, ReferCmd, OpinionCmd, WithdrawCmd, StatusCmd, CancelCmd, ExportCmd, BlurCmd,
    DiscardCmd, PhotoCmd, ReplyCmd, MorePhotosCmd, AddendumCmd, HelpCmd,
]

# ---------------------------------------------------------------- vocabulary
_COMMAND_WORDS: dict[str, str] = {}
for _canon, _words in {
    "consent": ("consent", "consents", "cons"),
    # not "ask": a specialist typing !ask in a thread means a question for the GP (!reply)
    "refer": ("refer", "referral", "ref"),
    "opinion": ("opinion", "op", "opine", "advice", "answer"),
    "withdraw": ("withdraw", "revoke", "withdrawal"),
    "status": ("status", "list", "st"),
    "cancel": ("cancel", "close", "stop"),
    "export": ("export", "fhir"),
    "blur": ("blur", "blurred", "send-blurred"),
    "discard": ("discard", "drop"),
    "photo": ("photo", "photos", "pic", "picture", "image", "this-is-for"),
    "reply": ("reply", "ask", "message", "msg", "tell", "respond", "question"),
    "morephotos": ("morephotos", "more-photos", "morephoto", "more-photo", "more", "another-photo", "rephoto"),
    "addendum": ("addendum", "add", "addenda", "addition"),
    "help": ("help", "h", "?", "commands", "start"),
}.items():
    for _w in _words:
        _COMMAND_WORDS[_w] = _canon

_CONSENT_KEYS: dict[str, str] = {}
for _canon, _words in {
    "patient": ("patient", "pt", "ref", "patient-ref", "patientref", "nhs", "mrn", "id"),
    "by": ("by", "basis", "who", "from", "given-by", "consenter"),
    "purposes": ("purposes", "purpose", "for", "use", "uses"),
    "identifiable": ("identifiable", "ident", "identifiable-images", "faces", "id-ok"),
    "notes": ("notes", "in-notes", "recorded", "recorded-in-notes", "documented"),
    "dob": ("dob", "born", "birth", "date-of-birth", "birthdate"),
    "gillick": ("gillick", "competent", "gillick-competent"),
    "statement": ("statement", "best-interests", "best-interests-statement", "bi", "reason", "why",
                  "wishes", "known-wishes", "views"),
    "retention": ("retention", "retain", "keep", "keep-for"),
    "expires": ("expires", "until", "valid-until", "expiry"),
    "adult": ("adult", "over-18", "18+"),
    "sex": ("sex", "gender"),
    "specialties": ("specialties", "specialty", "speciality", "specialities", "spec", "to"),
    "valid_for": ("valid-for", "validfor", "valid", "window", "episode", "refer-within"),
}.items():
    for _w in _words:
        _CONSENT_KEYS[_w] = _canon

_BASIS_WORDS: dict[str, ConsentBasis] = {}
for _basis, _words in {
    ConsentBasis.PATIENT: ("patient", "self", "pt"),
    ConsentBasis.PARENT: ("parent", "guardian", "parent/guardian", "mother", "father", "mum", "dad"),
    ConsentBasis.ATTORNEY: ("attorney", "lpa", "lpa-attorney", "power-of-attorney"),
    ConsentBasis.DEPUTY: ("deputy", "court-deputy", "court"),
    ConsentBasis.BEST_INTERESTS: ("best-interests", "best_interests", "bestinterests", "bi"),
    ConsentBasis.DECEASED_WISHES: ("deceased-wishes", "known-wishes", "wishes", "deceased"),
    ConsentBasis.EXECUTOR: ("executor", "executrix"),
    ConsentBasis.FAMILY: ("family", "relative", "next-of-kin", "nok"),
}.items():
    for _w in _words:
        _BASIS_WORDS[_w] = _basis

_PURPOSE_WORDS: dict[str, Purpose] = {}
for _purpose, _words in {
    Purpose.CARE: ("care", "second-opinion", "second", "opinion", "clinical", "treatment", "referral", "advice"),
    Purpose.TEACHING: ("teaching", "teach", "education", "training"),
    Purpose.AUDIT: ("audit", "clinical-audit", "quality-improvement", "qi"),
    Purpose.RESEARCH: ("research", "study"),
    Purpose.PUBLICATION: ("publication", "publish", "journal", "public"),
}.items():
    for _w in _words:
        _PURPOSE_WORDS[_w] = _purpose

_SEX_WORDS: dict[str, Sex] = {}
for _sex, _words in {
    Sex.FEMALE: ("female", "f", "woman", "girl"),
    Sex.MALE: ("male", "m", "man", "boy"),
    Sex.OTHER: ("other", "x", "intersex", "indeterminate"),
}.items():
    for _w in _words:
        _SEX_WORDS[_w] = _sex

_YES = {"yes", "y", "true", "1", "on", "ok"}
_NO = {"no", "n", "false", "0", "off", "none"}

_DURATION_RE = re.compile(
    r"^(\d{1,5})\s*(d|day|days|w|wk|week|weeks|m|mo|month|months|y|yr|year|years)?$"
)
_DURATION_UNITS = {"d": 1, "w": 7, "m": 30, "y": 365}


def _canon_word(word: str) -> str:
    return word.strip().lower().replace("_", "-").replace(" ", "-")


def _yes_no(key: str, value: str) -> bool:
    v = value.strip().lower()
    if v in _YES:
        return True
    if v in _NO:
        return False
    raise CommandError(f"{key}= takes yes or no.")


def _parse_date(key: str, value: str) -> date:
    v = value.strip()
    m = re.match(r"^(\d{4})-(\d{1,2})-(\d{1,2})$", v)
    if m:
        y, mo, d = (int(x) for x in m.groups())
    else:
        m = re.match(r"^(\d{1,2})[/.](\d{1,2})[/.](\d{4})$", v)  # UK order: DD/MM/YYYY
        if not m:
            raise CommandError(f"{key}= takes a date as YYYY-MM-DD, like 2015-03-31 (or 31/03/2015).")
        d, mo, y = (int(x) for x in m.groups())
    try:
        return date(y, mo, d)
    except ValueError:
        raise CommandError(f"{key}= is not a real date; use YYYY-MM-DD.") from None


def _parse_duration(value: str, key: str = "retention") -> timedelta:
    m = _DURATION_RE.match(value.strip().lower())
    if not m:
        raise CommandError(f"{key}= takes a number of days, weeks, months or years, like 90d, 12w, 6m or 1y.")
    n = int(m.group(1))
    unit = (m.group(2) or "d")[0]
    return timedelta(days=n * _DURATION_UNITS[unit])


def _parse_purposes(value: str) -> frozenset[Purpose]:
    words = [w for w in re.split(r"[,+;/&\s]+|\band\b", value.strip().lower()) if w]
    if not words:
        raise CommandError("purposes= needs at least one of: care, teaching, audit, research, publication.")
    out: set[Purpose] = set()
    for w in words:
        w = _canon_word(w)
        if w in ("all", "any", "everything", "*"):
            raise CommandError(
                "Consent must name each purpose explicitly: write e.g. purposes=care,teaching instead of 'all'."
            )
        if w not in _PURPOSE_WORDS:
            raise CommandError("Unknown purpose in purposes=: use care, teaching, audit, research or publication.")
        out.add(_PURPOSE_WORDS[w])
    return frozenset(out)


def _parse_specialties(value: str) -> tuple[str, ...]:
    words = [_canon_word(w) for w in re.split(r"[,+;/&]+|\s+and\s+|\s+", value.strip().lower()) if w.strip()]
    if not words:
        raise CommandError("specialties= names the specialties the patient agreed to, e.g. specialties=dermatology, or specialties=any.")
    if ANY_SPECIALTY in words or "all" in words:
        if len(words) > 1:
            raise CommandError("specialties= is either a list of specialties or any, not both.")
        return (ANY_SPECIALTY,)
    return tuple(dict.fromkeys(words))


def _split_args(rest: str, what: str) -> list[str]:
    try:
        return shlex.split(rest, posix=True)
    except ValueError:
        raise CommandError(f"A quote is not closed in your {what} command; put values with spaces in \"double quotes\".") from None


_SHOW_WORDS = frozenset({"show", "view", "read", "get", "see"})


def _parse_consent(rest: str) -> ConsentCmd | ConsentShowCmd:
    tokens = _split_args(rest, "!consent")
    if not tokens:
        raise CommandError(
            "Type e.g. !consent patient=<NHS no.> by=patient adult=yes purposes=care identifiable=no notes=yes specialties=dermatology (see !help consent)."
        )
    if tokens[0].lower() in _SHOW_WORDS:
        return ConsentShowCmd(_need_id(tokens[1] if len(tokens) > 1 else None, "C", "!consent show C-…"))
    if len(tokens) == 1 and "=" not in tokens[0] and ":" not in tokens[0] and normalise_id(tokens[0], "C") is not None:
        return ConsentShowCmd(_need_id(tokens[0], "C", "!consent show C-…"))
    # allow "key = value" written with spaces around '='
    merged: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok in ("=", ":") and merged and i + 1 < len(tokens):
            merged[-1] = merged[-1] + "=" + tokens[i + 1]
            i += 2
            continue
        if tok.endswith(("=", ":")) and len(tok) > 1 and i + 1 < len(tokens) and "=" not in tok[:-1]:
            merged.append(tok[:-1] + "=" + tokens[i + 1])
            i += 2
            continue
        merged.append(tok)
        i += 1
    values: dict[str, str] = {}
    for tok in merged:
        eq = tok.find("=")
        colon = tok.find(":")
        cut = eq if eq >= 0 else colon
        if cut <= 0:
            raise CommandError(
                "Each part of !consent must be key=value (put a value with spaces in \"double quotes\"), "
                "e.g. patient=<ref> by=parent (see !help consent)."
            )
        key, value = _canon_word(tok[:cut]), tok[cut + 1 :].strip()
        if key not in _CONSENT_KEYS:
            raise CommandError(
                "Unknown field: use patient, by, purposes, identifiable, notes, specialties, dob, adult, sex, gillick, statement, valid-for, retention, expires."
            )
        canon = _CONSENT_KEYS[key]
        shown = canon.replace("_", "-")
        if canon in values:
            raise CommandError(f"{shown}= is given twice; give it once.")
        if not value:
            raise CommandError(f"{shown}= has no value.")
        values[canon] = value

    kw: dict[str, object] = {}
    if "patient" in values:
        kw["patient"] = values["patient"]
    if "by" in values:
        w = _canon_word(values["by"])
        if w not in _BASIS_WORDS:
            raise CommandError(
                "by= takes patient, parent, attorney, deputy, best-interests, deceased-wishes, executor or family."
            )
        kw["basis"] = _BASIS_WORDS[w]
    if "purposes" in values:
        kw["purposes"] = _parse_purposes(values["purposes"])
    if "identifiable" in values:
        kw["identifiable"] = _yes_no("identifiable", values["identifiable"])
    if "notes" in values:
        kw["notes"] = _yes_no("notes", values["notes"])
    if "dob" in values:
        kw["dob"] = _parse_date("dob", values["dob"])
    if "gillick" in values:
        kw["gillick"] = _yes_no("gillick", values["gillick"])
    if "statement" in values:
        kw["statement"] = values["statement"]
    if "retention" in values:
        kw["retention"] = _parse_duration(values["retention"])
    if "expires" in values:
        kw["expires"] = _parse_date("expires", values["expires"])
    if "adult" in values:
        kw["adult"] = _yes_no("adult", values["adult"])
    if "sex" in values:
        w = _canon_word(values["sex"])
        if w not in _SEX_WORDS:
            raise CommandError("sex= takes female, male or other (or leave it out).")
        kw["sex"] = _SEX_WORDS[w]
    if "specialties" in values:
        kw["specialties"] = _parse_specialties(values["specialties"])
    if "valid_for" in values:
        kw["valid_for"] = _parse_duration(values["valid_for"], "valid-for")
    return ConsentCmd(**kw)  # type: ignore[arg-type]


def _need_id(word: str | None, prefix: str, usage: str) -> str:
    if word is None:
        raise CommandError(f"Type {usage}.")
    ident = normalise_id(word, prefix)
    if ident is None:
        kind = "consent" if prefix == "C" else "referral"
        raise CommandError(f"That is not a {kind} id ({prefix}-…); type {usage}.")
    return ident


def _consent_at(word: str, specialty_words: frozenset[str]) -> tuple[str, bool] | None:
    """(consent id, written with its dash) if *word* is a consent id in its real shape
    and not a word naming a specialty; else None."""
    if word.lower() in specialty_words:
        return None
    ident = normalise_id(word, "C")
    if ident is None:
        return None
    return ident, "-" in word


def _parse_refer(rest: str, specialty_words: frozenset[str] = frozenset()) -> ReferCmd:
    words = rest.split()
    usage = "!refer <specialty> <C-id> <your question>"
    if len(words) < 2:
        raise CommandError(f"Type {usage}, e.g. !refer dermatology C-7K3QX9 Is this lesion suspicious?")
    # forgiving: the consent id may come first or second. Which one it is, when both could
    # be read as one: a word naming a specialty is never the id; an id written with its
    # dash wins over one without; then the documented order (specialty first).
    found = {pos: _consent_at(words[pos], specialty_words) for pos in (1, 0)}
    ranked = sorted((pos for pos in found if found[pos] is not None),
                    key=lambda pos: (not found[pos][1], pos != 1))  # type: ignore[index]
    if not ranked:
        raise CommandError(f"I need the consent id (C-…) after the specialty: {usage}.")
    consent_pos = ranked[0]
    consent_id = found[consent_pos][0]  # type: ignore[index]
    specialty = words[1] if consent_pos == 0 else words[0]
    urgency, rest_words = _take_urgency(words[2:])
    question = " ".join(rest_words).strip()
    if len(question) < 3:
        raise CommandError(f"Add your clinical question after the consent id: {usage}.")
    return ReferCmd(specialty=specialty.lower(), consent_id=consent_id, question=question, urgency=urgency)


_URGENCY_WORDS = {"routine": "routine", "urgent": "urgent", "2ww": "2ww", "2-ww": "2ww"}


def _take_urgency(words: list[str]) -> tuple[str, list[str]]:
    """``urgency=routine|urgent|2ww`` anywhere after the consent id (also ``urgency:``);
    the rest is the question. Routine when absent."""
    urgency = "routine"
    rest = []
    for word in words:
        key, sep, value = word.replace(":", "=", 1).partition("=")
        if sep and key.lower() == "urgency":
            found = _URGENCY_WORDS.get(value.strip().lower())
            if found is None:
                raise CommandError("urgency= must be routine, urgent or 2ww.")
            urgency = found
            continue
        rest.append(word)
    return urgency, rest


def _leading_referral(text: str) -> tuple[str | None, str]:
    """(R-id, rest) when *text* starts with a referral id written with its dash."""
    first, _, remainder = text.partition(" ")
    maybe = normalise_id(first, "R")
    if maybe is not None and first.upper().startswith("R-"):
        return maybe, remainder.strip()
    return None, text


def _parse_opinion(rest: str) -> OpinionCmd:
    referral_id, text = _leading_referral(rest.strip())
    if len(text) < 2:
        raise CommandError("Type !opinion <your opinion> in the referral's thread.")
    return OpinionCmd(text=text, referral_id=referral_id)


def _parse_reply(rest: str) -> ReplyCmd:
    referral_id, text = _leading_referral(rest.strip())
    if len(text) < 1:
        raise CommandError("Type !reply R-… <your message> (in a referral's thread the R-… may be left out).")
    return ReplyCmd(text=text, referral_id=referral_id)


def _parse_more_photos(rest: str) -> MorePhotosCmd:
    _, text = _leading_referral(rest.strip())  # the thread says which referral
    if len(text) < 3:
        raise CommandError("Say what is needed: !morephotos <what the photo should show>, in the referral's thread.")
    return MorePhotosCmd(text=text)


def _parse_addendum(rest: str) -> AddendumCmd:
    referral_id, text = _leading_referral(rest.strip())
    if len(text) < 2:
        raise CommandError("Type !addendum <text> in the referral's thread.")
    return AddendumCmd(text=text, referral_id=referral_id)


def is_command(text: str) -> bool:
    t = text.lstrip()
    return t.startswith("!") or (t.startswith("/") and len(t) > 1 and t[1].isalpha())


def parse_command(text: str, specialty_words: frozenset[str] = frozenset()) -> Command:
    """Parse one message. Raises ``CommandError`` (one-line hint) on anything malformed.

    ``specialty_words``: the configured specialty keys and aliases (lower case), so that
    ``!refer`` never reads one of them as a consent id (``Policy.specialty_words()``)."""
    t = text.strip()
    if not is_command(t):
        raise CommandError("Commands start with ! — type !help to see them.")
    body = t[1:].lstrip()
    word, _, rest = body.partition(" ")
    if "\n" in word:
        word, _, more = word.partition("\n")
        rest = more + " " + rest
    word = word.split("@", 1)[0]  # Telegram: /status@referral_bot
    canon = _COMMAND_WORDS.get(_canon_word(word))
    if canon is None:
        raise CommandError("I don't know that command. Type !help for the list of commands.")
    rest = rest.strip()
    args = rest.split()
    if canon == "consent":
        return _parse_consent(rest)
    if canon == "refer":
        return _parse_refer(rest, specialty_words)
    if canon == "opinion":
        return _parse_opinion(rest)
    if canon == "reply":
        return _parse_reply(rest)
    if canon == "morephotos":
        return _parse_more_photos(rest)
    if canon == "addendum":
        return _parse_addendum(rest)
    if canon == "photo":
        return PhotoCmd(_need_id(args[0] if args else None, "R", "!photo R-… (the referral the photo is for)"))
    if canon == "withdraw":
        return WithdrawCmd(_need_id(args[0] if args else None, "C", "!withdraw C-…"))
    if canon == "status":
        if not args:
            return StatusCmd()
        return StatusCmd(_need_id(args[0], "R", "!status or !status R-…"))
    if canon == "cancel":
        return CancelCmd(_need_id(args[0] if args else None, "R", "!cancel R-…"))
    if canon == "export":
        return ExportCmd(_need_id(args[0] if args else None, "R", "!export R-…"))
    if canon == "blur":
        return BlurCmd(_need_id(args[0] if args else None, "R", "!blur R-…"))
    if canon == "discard":
        if not args:
            return DiscardCmd()
        return DiscardCmd(_need_id(args[0], "R", "!discard R-…, or !discard alone for photos I am holding"))
    topic = _COMMAND_WORDS.get(_canon_word(args[0].lstrip("!/"))) if args else None
    return HelpCmd(topic)


# ---------------------------------------------------------------- help
# Two audiences, two texts: !help answers with the commands of the room it is asked in.
HELP_GP = """\
Referral bot — send a clinical photo to a specialist safely.
1. !consent patient=<NHS no.> by=<who> purposes=<list> identifiable=yes|no notes=yes specialties=<list>|any
     who: patient, parent, attorney, deputy, best-interests, deceased-wishes, executor, family
     purposes: care, teaching, audit, research, publication (name each one)
     age: dob=YYYY-MM-DD (needed for by=parent; by=patient needs dob= or adult=yes)
     optional: sex=female|male|other gillick=yes|no statement="..." valid-for=30d retention=90d expires=YYYY-MM-DD
   -> you get a consent id C-…; !consent show C-… reads it back
2. !refer <specialty> <C-id> [urgency=urgent] <clinical question>   -> referral R-…; then send the photo(s) here.
   With more than one referral open, say which one a photo is for: R-… in its caption, or send it as a
   reply to my message about that referral, or answer my question with !photo R-….
3. The specialists' questions arrive here: reply to the message, or type !reply R-… <answer>.
4. The opinion (!opinion) arrives here. The images are removed from the specialty room afterwards.
Other: !status [R-…]  !cancel R-…  !withdraw C-…  !export R-…  !blur R-… / !discard R-… (held images)  !help <command>"""

HELP_SPECIALIST = """\
Referral bot — in a referral's thread in this room:
  Write as usual: your messages go to the referring GP, who can answer here (roster clinicians only).
  !morephotos <what is needed> — ask the GP for another photo; keeps the referral open longer.
  !opinion <text> — the opinion (roster only); sent to the GP; the images are removed after a grace period.
  !addendum <text> — add to an opinion already given; sent to the GP like the opinion.
  !status — where this referral is.
Anywhere: !status R-…  !help <command>"""

#: the GP's help (kept under its old name)
HELP_TEXT = HELP_GP

HELP_TOPICS: dict[str, str] = {
    "consent": (
        "!consent patient=<NHS no.> by=patient|parent|attorney|deputy|best-interests|deceased-wishes|executor|family "
        "purposes=care,teaching,audit,research,publication identifiable=yes|no notes=yes specialties=dermatology|any "
        "[dob=YYYY-MM-DD | adult=yes] [sex=female|male|other] [gillick=yes|no] [statement=\"...\"] [valid-for=30d] "
        "[retention=90d] [expires=YYYY-MM-DD]. Referrals may be opened under it for 30 days (valid-for=). "
        "Someone deciding for the patient needs statement=\"...\" (why, and whose views were heard). "
        "The patient reference is stored only as a keyed hash; !consent show C-… reads a consent back."
    ),
    "refer": ("!refer <specialty> <C-id> [urgency=routine|urgent|2ww] <clinical question> — opens a referral R-…; "
              "then send the photo(s) in this chat. Urgent: a shorter answer window and an earlier escalation. "
              "Suspected cancer goes through the 2-week-wait pathway, not here."),
    "opinion": "!opinion <text> — in the referral's thread, by a specialist on that specialty's roster.",
    "withdraw": "!withdraw C-… — withdraws the consent now: every image shared under it is removed and destroyed.",
    "status": "!status lists your referrals; !status R-… shows one.",
    "cancel": "!cancel R-… — closes the referral and removes its images from the specialty room.",
    "export": "!export R-… — exports the record (FHIR) for the patient's notes; the vault copy is then destroyed.",
    "blur": "!blur R-… — posts the held image(s) exactly as the PREVIEW I sent you shows them: the faces and text I found, blurred (when the consent does not cover identifiable images). Look first: the check can miss some.",
    "discard": "!discard R-… — destroys the held image(s) and their preview without sending anything; !discard alone drops the photos I am holding because I did not know their referral.",
    "photo": "!photo R-… — the photo(s) I am holding are for this referral (when I could not tell which of your referrals they belong to).",
    "reply": "!reply R-… <text> — GP: your answer goes into the referral's thread (or just reply to the specialist's message). In a thread, specialists can simply write; !reply <text> works too.",
    "morephotos": "!morephotos <what is needed> — specialist, in the thread: asks the GP for another photo and keeps the referral open longer.",
    "addendum": "!addendum <text> — specialist, in the thread: adds to the opinion already given; sent to the GP.",
    "help": "!help or !help <command>.",
}
