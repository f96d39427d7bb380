"""Issue 10, part 5: a consent id is recognised only in its real shape, whatever the
specialty is called. Property tests over every configured specialty and alias,
including the ones that start with C (whose names used to be read as consent ids)."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.commands import CommandError, ReferCmd, ReplyCmd, parse_command
from handlers.ids import find_ids, make_id, normalise_id
from handlers.policy import Policy, Specialty

from .helpers import CONSENT_OK, GP, Harness, consent_id_from, referral_id_from, reply_text

SPECIALTIES = {
    "cardiology": ("cardio", "cardiac", "heart", "cvs"),
    "chest": ("respiratory", "resp", "lung", "copd"),
    "colorectal": ("colo", "crs", "bowel", "coloproctology"),
    "cosmetic": ("cosmetics", "cosmo", "aesthetic"),
    "dermatology": ("derm", "skin", "c-derm"),
    "care-of-the-elderly": ("coe", "cote", "elderly", "geriatrics"),
    "clinical-genetics": ("genetics", "cgen"),
    "ent": ("ear-nose-throat", "c1inic"),  # an alias that is id-shaped on purpose
}

POLICY = Policy(
    specialties={
        key: Specialty(key=key, title=key.replace("-", " ").title(), roster=frozenset({"@sp:example.org"}),
                       aliases=frozenset(aliases))
        for key, aliases in SPECIALTIES.items()
    }
)
WORDS = sorted(POLICY.specialty_words())

consent_ids = st.integers(min_value=0, max_value=10**9).map(lambda n: make_id("C", f"seed{n}"))
questions = st.lists(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789?,.-", min_size=1, max_size=12), min_size=1, max_size=8
).map(" ".join).filter(lambda q: len(q) >= 3)
case = st.sampled_from([str.lower, str.upper, str.title, lambda s: s])


def _written(cid: str, how: str) -> str:
    body = cid[2:]
    return {"dashed": cid, "lower": cid.lower(), "dashless": "c" + body.lower(),
            "ambiguous-letters": cid.replace("0", "O").replace("1", "l")}[how]


@settings(max_examples=300, deadline=None)
@given(word=st.sampled_from(WORDS), cid=consent_ids, question=questions, style=case,
       how=st.sampled_from(["dashed", "lower", "dashless", "ambiguous-letters"]), id_first=st.booleans())
def test_refer_reads_every_specialty_and_alias_with_any_consent_id(word, cid, question, style, how, id_first):
    written = _written(cid, how)
    args = f"{written} {style(word)}" if id_first else f"{style(word)} {written}"
    cmd = parse_command(f"!refer {args} {question}", POLICY.specialty_words())
    assert cmd == ReferCmd(specialty=word, consent_id=cid, question=question)
    assert POLICY.find_specialty(cmd.specialty) is not None


@settings(max_examples=200, deadline=None)
@given(word=st.sampled_from(WORDS), cid=consent_ids, question=questions)
def test_the_documented_order_with_a_dashed_id_needs_no_configuration(word, cid, question):
    """Even a parser that knows no specialty reads `!refer <specialty> C-XXXXXX ...` right."""
    assert parse_command(f"!refer {word} {cid} {question}") == ReferCmd(word, cid, question)


def test_the_report_of_the_issue():
    for text in ("!refer cardiology C-1N4TQG question about the heart",
                 "!refer chest C-1N4TQG question about the lungs",
                 "!refer colorectal C-1N4TQG question", "!refer cosmetic C-1N4TQG question"):
        cmd = parse_command(text)
        assert isinstance(cmd, ReferCmd) and cmd.consent_id == "C-1N4TQG" and cmd.specialty == text.split()[1]


def test_ids_only_in_their_real_shape():
    assert normalise_id("cardiology", "C") is None  # was C-ARD1010GY
    assert normalise_id("C-1N4TQ", "C") is None and normalise_id("C-1N4TQGX", "C") is None
    assert normalise_id("c1n4tqg", "C") == "C-1N4TQG"
    assert normalise_id("C-UUUUUU", "C") is None  # U is not in the alphabet
    assert find_ids("reddish patch near R-7k3qx9, see also r-7K3QX9", "R") == ["R-7K3QX9"]
    assert find_ids("reddish", "R") == []


def test_ask_is_no_longer_refer():
    assert parse_command("!ask Is there any bleeding?") == ReplyCmd("Is there any bleeding?")
    assert parse_command("!ask R-7K3QX9 Any bleeding?") == ReplyCmd("Any bleeding?", "R-7K3QX9")
    try:
        parse_command("!reply")
    except CommandError as exc:
        assert "!reply" in str(exc)
    else:
        raise AssertionError("an empty !reply must be refused")


async def test_a_cardiology_referral_opens_through_the_workflow():
    h = Harness(policy=POLICY)
    cid = consent_id_from(await h.say(GP, CONSENT_OK.replace("specialties=dermatology",
                                                             "specialties=cardiology,chest,colorectal,cosmetic,ent")))
    for word in ("cardiology", "cardiac", "chest", "colorectal", "cosmetic", "c1inic"):
        rid = referral_id_from(await h.say(GP, f"!refer {word} {cid} A question for {word}"))
        assert h.store.referral(rid).specialty == POLICY.find_specialty(word).key
        # and with the consent id first
        text = reply_text(await h.say(GP, f"!refer {cid.lower()} {word} Another question"))
        assert "opened" in text, text
