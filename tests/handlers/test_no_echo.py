"""Issue 9, finding 2: a refusal never repeats what the GP typed.

A mistyped command is where identifiers slip in: an NHS number typed where a key=value
was expected, a date of birth that is not a real date, a question typed where the
specialty goes. Echoing it sent it back through the chat and kept it (in clear, before
issue 9) in the outbox. The hint names the field instead. Each command below carries the
sentinel NHS number 9434765919 (or a part of it) in a different slot; the reply must
still help (it names the field or the command) and must not contain any of it.
"""
from __future__ import annotations

import pytest

from handlers import events as E

from .helpers import CONSENT_OK, DERM, GP, Harness, consent_id_from, referral_id_from, reply_text

SENTINELS = ("9434765919", "943 476 5919", "9434", "5919", "476")


@pytest.mark.parametrize(
    "command, names",
    [
        ("!consent 9434765919", "key=value"),
        ("!consent nhs=943 476 5919 by=patient", "key=value"),
        ("!consent 9434765919=yes", "Unknown field"),
        ("!consent patient=x purposes=care,9434765919", "purposes="),
        ("!consent patient=x identifiable=9434765919", "identifiable="),
        ("!consent patient=x notes=9434765919", "notes="),
        ("!consent patient=x dob=9434-76-59", "dob="),
        ("!consent patient=x dob=9434765919", "dob="),
        ("!consent patient=x by=9434765919", "by="),
        ("!consent patient=x retention=9434765919", "retention="),
        ("!9434765919", "!help"),
        ("!withdraw 9434765919", "consent id"),
        ("!status 94347-65919", "referral id"),
        ("!cancel 9434765919", "referral id"),
        ("!export 9434765919", "referral id"),
        ("!blur 9434765919", "referral id"),
        ("!discard 9434765919", "referral id"),
        ("!status R9434765919", "referral id"),
        ("!cancel R-94347659", "referral id"),
        ("!status R-943476", "not one of your referrals"),
        ("!cancel R-943476", "not one of your referrals"),
        ("!withdraw C9434765919", "consent id"),
        ("!withdraw C-943476", "no consent with that id"),
        ("!consent show C9434765919", "consent id"),
        ("!consent show C-943476", "no consent with that id"),
        ("!consent show 9434765919", "consent id"),
        ("!refer dermatology C-9434765919 Rash on the arm", "consent id"),
        ("!refer dermatology C-943476 Rash on the arm", "no consent with that id"),
        ("!refer 9434765919 C-ABC123 Rash on the arm", "that specialty"),
        ("!refer dermatology C-ABC123 urgency=9434765919 Rash on the arm", "urgency="),
    ],
)
async def test_a_refusal_names_the_field_and_never_echoes_the_input(command, names):
    h = Harness()
    text = reply_text(await h.say(GP, command))
    assert names.lower() in text.lower(), text
    for sentinel in SENTINELS:
        assert sentinel not in text, f"{command!r} echoed {sentinel!r}: {text!r}"


async def test_naming_another_referral_in_a_thread_does_not_echo_it():
    h = Harness()
    cid = consent_id_from(await h.say(GP, CONSENT_OK))
    rid = referral_id_from(await h.say(GP, f"!refer dermatology {cid} Itchy plaque"))
    await h.drain()
    thread = E.SpecialtyThread("dermatology", None, f"$root-{rid}")
    text = reply_text(await h.say(DERM, "!opinion R-943476 benign", place=thread))
    assert "not the referral you named" in text and "943476" not in text


@pytest.mark.parametrize(
    "command, names",
    [
        ("!reply R-943476 is the lesion raised", "not one of your referrals"),
        ("!reply 9434765919", "!reply R-"),
        ("!photo R-943476", "not one of your referrals"),
        ("!photo 9434765919", "referral id"),
        ("!morephotos 9434765919", "thread"),
        ("!addendum R-943476 benign", "thread"),
        ("!opinion 9434765919", "thread"),
    ],
)
async def test_the_conversation_commands_never_echo_the_input_either(command, names):
    """Issue 10's commands (`!reply`, `!photo`, `!morephotos`, `!addendum`) in the GP's
    direct chat, mistyped or naming an id that is not theirs."""
    h = Harness()
    cid = consent_id_from(await h.say(GP, CONSENT_OK))
    referral_id_from(await h.say(GP, f"!refer dermatology {cid} Itchy plaque"))
    await h.drain()
    text = reply_text(await h.say(GP, command))
    assert names.lower() in text.lower(), text
    for sentinel in SENTINELS:
        assert sentinel not in text, f"{command!r} echoed {sentinel!r}: {text!r}"


@pytest.mark.parametrize(
    "command, names",
    [
        ("!addendum R-943476 benign", "not the referral you named"),
        ("!opinion R-943476 benign", "not the referral you named"),
        ("!reply R-943476 is it raised", "not the referral you named"),
    ],
)
async def test_a_specialist_naming_another_referral_in_a_thread_is_not_echoed(command, names):
    h = Harness()
    cid = consent_id_from(await h.say(GP, CONSENT_OK))
    rid = referral_id_from(await h.say(GP, f"!refer dermatology {cid} Itchy plaque"))
    await h.drain()
    thread = E.SpecialtyThread("dermatology", None, f"$root-{rid}")
    text = reply_text(await h.say(DERM, command, place=thread))
    assert names.lower() in text.lower(), text
    for sentinel in SENTINELS:
        assert sentinel not in text, f"{command!r} echoed {sentinel!r}: {text!r}"


async def test_a_gp_answer_held_back_by_the_identifier_guard_is_not_echoed():
    """The GP's answer into the thread is refused when it holds an NHS number (issue 12's
    guard); the refusal says what kind of identifier, never the number."""
    h = Harness()
    cid = consent_id_from(await h.say(GP, CONSENT_OK))
    rid = referral_id_from(await h.say(GP, f"!refer dermatology {cid} Itchy plaque"))
    await h.drain()
    text = reply_text(await h.say(GP, f"!reply {rid} the patient is 943 476 5919, raised edge"))
    assert "NHS number" in text, text
    for sentinel in SENTINELS:
        assert sentinel not in text, text
