"""Does a clinical question read like suspected cancer? (issue 12 part 5)

Advice and guidance is not the route for suspected cancer: NICE NG12 ("Suspected
cancer: recognition and referral", section 1.7 for skin) sends a suspected melanoma or
squamous cell carcinoma down the urgent suspected-cancer pathway (the "2-week wait").
When a question reads that way, or the GP says ``urgency=2ww``, the bot reminds the GP of
the pathway in one line. The referral still opens: the reminder costs a glance, a missed
one may cost weeks, so the list leans towards reminding.

``suspected_cancer(text)`` answers True when the text has, in one clause:

* a **lesion named on its own** (no question mark needed): melanoma (also lentigo
  maligna), squamous cell carcinoma / SCC / cSCC, keratoacanthoma (managed as an SCC),
  Merkel cell carcinoma, Kaposi sarcoma;
* a **general word for cancer** (cancer, malignancy, malignant, carcinoma, sarcoma,
  lymphoma, neoplasm) **with a sign of suspicion**: a ``?`` before or after it, or
  suspected / suspicious / query / possible / likely / concern / worried / rule out /
  exclude / could / might / ddx within the five words before it. "History of breast
  cancer" alone is a fact, not a suspicion, and gets no reminder;
* the **pathway named**: 2WW, two-week wait, (urgent) suspected cancer;
* a **7-point checklist score of 3 or more** (NG12's threshold for suspected melanoma).

Not a hit:

* **Negated** mentions, within the clause: no / not / without / nil / never / unlikely /
  doubt / denies / negative / absent / "n't" in the five words before ("no concern for
  melanoma", "does not look like a melanoma"), a term joined to "non-" ("non-melanoma"),
  or unlikely / excluded / ruled out /
  less likely / not suspected right after ("melanoma unlikely"). A hedge beats a
  negation: "not sure if melanoma", "can't rule out SCC", "cannot exclude melanoma" are
  suspicions.
* **Basal cell carcinoma** (BCC, "?BCC", rodent ulcer): NG12 section 1.7 advises a
  routine referral for a suspected BCC (a suspected-cancer referral only when its site or
  size makes delay harmful), and advice and guidance with photos is an accepted route for
  it, so reminding on every "?BCC" would be a false alarm a dermatologist would resent.

Clauses end at ``. ; : ! ,`` a new line, "but", "however", and a ``?`` followed by a space
(so "Melanoma? No bleeding." keeps the "No" away from "Melanoma"). Only True/False leaves
this module: the audit records that a reminder was sent, never which words caused it.
"""
from __future__ import annotations

import re

__all__ = ["suspected_cancer", "SPECIFIC_TERMS", "GENERAL_TERMS", "PATHWAY_TERMS"]

#: lesions that NG12 sends down a suspected-cancer pathway by themselves
SPECIFIC_TERMS = (
    r"melanomas?",
    r"lentigo\s+maligna",
    r"squamous[\s-]+cell\s+(?:carcinomas?|ca|cancers?)",
    r"squamous\s+carcinomas?",
    r"c?sccs?",
    r"keratoacanthomas?",
    r"merkel[\s-]+cell(?:\s+(?:carcinomas?|tumou?rs?|cancers?))?",
    r"kaposi'?s?(?:\s+sarcomas?)?",
)

#: words for cancer that count only with a sign of suspicion
GENERAL_TERMS = (
    r"cancers?",
    r"malignan(?:cy|cies|t)",
    r"carcinomas?",
    r"sarcomas?",
    r"lymphomas?",
    r"neoplasms?",
)

#: the pathway itself
PATHWAY_TERMS = (
    r"2\s*-?\s*ww",
    r"(?:two|2)[\s-]+weeks?[\s-]+wait",
    r"(?:urgent\s+)?suspected[\s-]+cancer",
)

_B = r"(?<![\w-])"  # word start (a hyphen joins words: "non-melanoma" is one word here)
_E = r"(?![\w])"

_SPECIFIC = re.compile(_B + "(?:" + "|".join(SPECIFIC_TERMS) + ")" + _E, re.IGNORECASE)
_GENERAL = re.compile(_B + "(?:" + "|".join(GENERAL_TERMS) + ")" + _E, re.IGNORECASE)
_PATHWAY = re.compile(_B + "(?:" + "|".join(PATHWAY_TERMS) + ")" + _E, re.IGNORECASE)
_CHECKLIST = re.compile(
    r"(?:7|seven)[\s-]*point(?:\s+check[\s-]*list)?(?:\s+score)?(?:\s+(?:of|=|is))?[\s:=]*(\d{1,2})\b",
    re.IGNORECASE,
)

# clause boundaries: punctuation, new lines, "but"/"however", and a "?" that ends a clause
_BOUNDARY = re.compile(r"[.;:!,\n]|\?(?=\s|$)|\bbut\b|\bhowever\b|\bwhereas\b", re.IGNORECASE)

_NEGATORS = re.compile(
    r"\b(?:no|not|without|nil|never|unlikely|doubt|doubtful|denies|denied|negative|absent)\b|n't\b",
    re.IGNORECASE,
)
_AFTER_NEGATION = re.compile(
    r"^\W*(?:(?:is|are|seems|looks|felt|thought|very|most|much)\s+)*"
    r"(?:unlikely|excluded|ruled\s+out|less\s+likely|not\s+(?:suspected|likely|thought|a\s+concern))\b",
    re.IGNORECASE,
)
_HEDGES = re.compile(
    r"\b(?:not\s+sure|unsure|uncertain|can'?t\s+(?:exclude|rule\s+out)|cannot\s+(?:exclude|rule\s+out)|"
    r"unable\s+to\s+(?:exclude|rule\s+out)|not\s+(?:be\s+)?(?:excluded|ruled\s+out))\b",
    re.IGNORECASE,
)
_SUSPICION = re.compile(
    r"\?|\b(?:suspect|suspected|suspicious|suspicion|query|possible|possibly|probable|probably|likely|"
    r"concern|concerned|concerning|worried|worry|worrying|r/o|rule|exclude|excluding|ddx|differential|"
    r"could|might)\b",
    re.IGNORECASE,
)
_BCC_BEFORE = re.compile(r"(?:basal[\s-]+cell|bcc)\s*$", re.IGNORECASE)

_WINDOW_WORDS = 5


def _clause(text: str, start: int, end: int) -> tuple[str, str]:
    """(the clause's words before the match, the clause's words after it)."""
    before = text[:start]
    cut = 0
    for m in _BOUNDARY.finditer(before):
        cut = m.end()
    after = text[end:]
    nxt = _BOUNDARY.search(after)
    # a "?" right after the term is its own sign of suspicion, not a boundary to skip
    return before[cut:], after[: nxt.start()] if nxt else after


def _last_words(s: str, n: int = _WINDOW_WORDS) -> str:
    return " ".join(s.split()[-n:])


def _negated(pre: str, post: str) -> bool:
    window = _last_words(pre)
    if _HEDGES.search(pre):
        return False
    return bool(_NEGATORS.search(window) or _AFTER_NEGATION.search(post))


def _marked(text: str, start: int, end: int, pre: str) -> bool:
    """A sign of suspicion next to a general cancer word."""
    if text[end:end + 1] == "?" or text[max(0, start - 2):start].strip().endswith("?"):
        return True
    return bool(_SUSPICION.search(_last_words(pre)) or _HEDGES.search(pre))


def suspected_cancer(text: str) -> bool:
    """True when *text* reads like a suspected cancer (see the module docstring)."""
    if not text:
        return False
    for pattern in (_SPECIFIC, _PATHWAY):
        for m in pattern.finditer(text):
            pre, post = _clause(text, m.start(), m.end())
            if not _negated(pre, post):
                return True
    for m in _GENERAL.finditer(text):
        pre, post = _clause(text, m.start(), m.end())
        if _BCC_BEFORE.search(pre.rstrip()) or _negated(pre, post):
            continue
        if _marked(text, m.start(), m.end(), pre):
            return True
    for m in _CHECKLIST.finditer(text):
        if int(m.group(1)) >= 3:
            return True
    return False
