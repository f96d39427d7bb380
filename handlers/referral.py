"""The structured referral (issue 12 part 1; issue 11 part 3), pure.

* ``intimate_reason(details, question, stated)``: whether a referral shows an
  intimate area, and why in a few words (the consent rules say it back to the GP).
* ``guard_referral(question, details, ...)``: the identifier guard over every free
  text of ``!refer`` that leaves the GP's direct chat (the question, site, duration,
  history), and the one-line refusal that names the kinds found, never the text.
* ``about_patient(consent, on)`` and ``details_lines(details)``: what the thread root
  shows of the patient and of the fields. Never a date of birth, a name or a number
  that identifies: an age band from the consent's birth month, sex if recorded.

**Intimate sites** (``INTIMATE_SITE``): the genitals (and the pubic area and
perineum), the anus and perianal area, and the breasts (nipple, areola). This is
the GMC's own description of what intimate examinations are likely to include,
"breasts, genitalia and rectum" (GMC, *Intimate examinations and chaperones*, 2024;
paragraph number not confirmed), narrowed to the surface that a photograph shows.
The groin, buttocks and inner thigh are not on the list, because most photos of them
show neither; a GP whose photo does show an intimate area says ``intimate=yes``.
A site on the list always makes the referral intimate (``intimate=no`` does not
override it); a question naming an intimate site does too, unless the GP says
``intimate=no`` (the question may only mention one: "mother had breast cancer").
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Iterable, Pattern

from handlers.consent import age_band
from handlers.identifiers import Findings, IdentifierKind, find_identifiers
from handlers.model import ConsentRecord, ReferralDetails

__all__ = [
    "INTIMATE_SITE",
    "intimate_reason",
    "GuardHit",
    "guard_referral",
    "about_patient",
    "details_lines",
]

#: words naming an intimate area (see the module docstring); matched case-insensitively
INTIMATE_SITE: Pattern[str] = re.compile(
    r"\b(?:\w*genital\w*|penis|penile|\w*scrot\w*|testis|testes|testicles?|testicular|foreskin|prepuc\w*|glans|"
    r"vulv\w*|vagin\w*|labia|labium|clitor\w*|pubic|perine\w*|peri-?anal|anus|anal|rectum|rectal|"
    r"breasts?|nipples?|areol\w*|(?:infra|sub)?mammary)\b",
    re.IGNORECASE,
)


def intimate_reason(details: ReferralDetails, question: str, stated: bool | None) -> str | None:
    """Why the referral is intimate, in words for the GP, or None when it is not.
    ``stated``: what the GP said with ``intimate=`` (None = nothing)."""
    if stated is True:
        return "you said intimate=yes"
    if details.site and INTIMATE_SITE.search(details.site):
        return "site= names an intimate area"
    if stated is None and INTIMATE_SITE.search(question):
        return "the question names an intimate area"
    return None


# ------------------------------------------------------------------ the identifier guard
#: the fields in the order the refusal names them, with how the GP knows each one
_FIELD_NAMES = (("question", "question"), ("site", "site="), ("duration", "duration="), ("history", "history="))

#: what to write instead, for the kinds that may be clinical by mistake (not blocking)
_REPHRASE = {
    IdentifierKind.NAME: "name people by role, e.g. 'her daughter'",
    IdentifierKind.DATE_OF_BIRTH: "the age band comes from the consent; write other dates as 'since March 2019'",
    IdentifierKind.ADDRESS: "say the setting, e.g. 'care home'",
    IdentifierKind.PHONE: "no phone numbers: the specialists answer in the thread",
}


@dataclass(frozen=True)
class GuardHit:
    """What the guard found in a ``!refer``: the fields (names only) and the kinds."""

    fields: tuple[str, ...]
    findings: Findings

    @property
    def message(self) -> str:
        """One line: "Your question contains what looks like an NHS number and a postcode;
        remove them and send it again." (plus how to rephrase a kind that may be clinical)."""
        names = [shown for key, shown in _FIELD_NAMES if key in self.fields]
        which = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        verb = "contains" if len(names) == 1 else "contain"
        them = "it" if len(self.findings.kinds) == 1 else "them"
        text = (f"Your {which} {verb} what looks like {self.findings.describe()}; remove {them} and send it "
                "again")
        hints = [_REPHRASE[k] for k in self.findings.kinds if k in _REPHRASE]
        return text + (f" ({'; '.join(hints)})." if hints else ".")

    @property
    def audit_details(self) -> dict[str, str]:
        """Kind codes and field names only: safe for the audit trail."""
        return {"rule": "identifier", "kind": self.findings.codes, "fields": ",".join(self.fields)}


def guard_referral(question: str, details: ReferralDetails, *, today: date,
                   reference_patterns: Iterable[Pattern[str]] = ()) -> GuardHit | None:
    """Run the identifier guard over every free text of a ``!refer``. Every kind holds
    the referral, blocking or not (docs/commands.md, "Identifier guard"): the thread
    root is posted to a whole room and filed, the GP is writing it, not chatting, and
    each kind has a plain rewording; so no "post anyway" is offered for any of them."""
    patterns = list(reference_patterns)
    texts = {"question": question, "site": details.site, "duration": details.duration, "history": details.history}
    kinds: list[IdentifierKind] = []
    fields: list[str] = []
    for key, text in texts.items():
        if not text:
            continue
        found = find_identifiers(text, today=today, reference_patterns=patterns)
        if found:
            fields.append(key)
            kinds.extend(k for k in found.kinds if k not in kinds)
    if not fields:
        return None
    order = list(IdentifierKind)
    return GuardHit(tuple(fields), Findings(tuple(sorted(kinds, key=order.index))))


# ------------------------------------------------------------------ the thread root
def about_patient(consent: ConsentRecord, on: date) -> str:
    """"age 40–49, female" / "adult (age not recorded)" / "age not recorded": an age band
    from the consent's birth month (``handlers.consent.age_band``) and sex if recorded."""
    band = age_band(consent, on)
    if band is None:
        words = ["age not recorded"]
    elif band == "adult":
        words = ["adult (age not recorded)"]
    else:
        words = [f"age {band}"]
    if consent.sex is not None:
        words.append(consent.sex.value)
    return ", ".join(words)


def details_lines(details: ReferralDetails) -> list[str]:
    """The root's lines for the fields the GP gave (urgency always)."""
    lines = [f"Urgency: {details.urgency.label}"]
    if details.site:
        lines.append(f"Site: {details.site}")
    if details.duration:
        lines.append(f"Duration: {details.duration}")
    if details.history:
        lines.append(f"History: {details.history}")
    if details.intimate:
        lines.append("Intimate area: yes (the consent covers intimate images)")
    return lines
