"""Issue 12 part 5, the clock as a safety net, through the workflow: escalation after
working hours (the lead or the roster in the thread, a note to the GP), urgent referrals,
the expiry warning, the suspected-cancer pathway reminder, the "delete the originals"
note; each audited without text, sent once, stopped when the referral closes, and
neither lost nor doubled by a crash (real SQLite)."""
from __future__ import annotations

import dataclasses
import os
from datetime import datetime, timedelta, timezone

import pytest

from handlers import actions as A
from handlers import events as E
from handlers.model import ReferralState
from handlers.policy import Specialty
from storage.keys import Keys
from storage.sqlite_store import SQLiteStore

from .helpers import (
    CONSENT_OK,
    DERM,
    DERM2,
    GP,
    Harness,
    consent_id_from,
    jpeg_with_metadata,
    policy,
    referral_id_from,
    reply_text,
)

ROSTER = tuple(sorted({DERM.user_id, DERM2.user_id}))
QUESTION = "Itchy plaque left shin for 3 months, psoriasis or eczema?"


def with_lead(lead: str = DERM2.user_id, **kw):
    base = policy(**kw)
    spec = dataclasses.replace(base.specialties["dermatology"], lead=lead)
    return dataclasses.replace(base, specialties={**base.specialties, "dermatology": spec})


async def refer(h: Harness, question: str = QUESTION, extra: str = "") -> str:
    cid = consent_id_from(await h.say(GP, CONSENT_OK))
    return referral_id_from(await h.say(GP, f"!refer dermatology {cid} {extra} {question}".replace("  ", " ")))


async def refer_with_photo(h: Harness, question: str = QUESTION, extra: str = "") -> str:
    rid = await refer(h, question, extra)
    await h.send_image(GP, jpeg_with_metadata())
    await h.drain()
    return rid


def escalations(acts) -> tuple[list[A.Reply], list[A.Notify]]:
    thread = [a for a in acts if isinstance(a, A.Reply) and "no opinion for" in a.text]
    gp = [a for a in acts if isinstance(a, A.Notify) and "No opinion yet" in a.text]
    return thread, gp


def warnings(acts) -> list[A.Notify]:
    return [a for a in acts if isinstance(a, A.Notify) and "has no opinion yet" in a.text]


async def tick_at(h: Harness, at: datetime):
    h.now = at
    return await h.tick()


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


# ------------------------------------------------------------------ escalation
async def test_routine_escalates_after_16_working_hours_to_the_roster_and_tells_the_gp():
    h = Harness()  # T0 = Monday 2 March 2026 09:00 GMT
    rid = await refer_with_photo(h)
    assert await tick_at(h, utc(2026, 3, 3, 16, 59)) == []  # Tuesday 16:59: 15 h 59 min of working time
    acts = await tick_at(h, utc(2026, 3, 3, 17))
    (thread,), (gp,) = escalations(acts)
    assert thread.to == E.SpecialtyThread("dermatology", rid, f"$root-{rid}")
    assert thread.mentions == ROSTER  # no lead configured: the whole roster
    assert "16 working hours" in thread.text and "!opinion" in thread.text
    assert gp.user_id == GP.user_id and gp.mentions == (GP.user_id,) and gp.referral_id == rid
    assert "phone the on-call dermatology team" in gp.text and "the dermatology team" in gp.text
    assert "Mon 9 Mar 09:00 GMT" in gp.text  # when it expires, local time
    # once per referral: not again, also not when another timer of it (the expiry warning) runs
    assert escalations(await tick_at(h, utc(2026, 3, 4, 12))) == ([], [])
    acts = await tick_at(h, utc(2026, 3, 8, 9))
    assert len(warnings(acts)) == 1 and escalations(acts) == ([], [])
    entries = [e for e in h.store.audit if e.action == "referral.escalated"]
    assert len(entries) == 1 and entries[0].referral_id == rid and entries[0].at == utc(2026, 3, 3, 17)
    assert entries[0].details == {"role": "roster", "urgency": "routine"}


async def test_the_lead_is_mentioned_when_the_specialty_has_one():
    h = Harness(policy=with_lead())
    await refer_with_photo(h)
    (thread,), (gp,) = escalations(await tick_at(h, utc(2026, 3, 3, 17)))
    assert thread.mentions == (DERM2.user_id,)
    assert "the dermatology lead" in gp.text
    assert [e.details["role"] for e in h.store.audit if e.action == "referral.escalated"] == ["lead"]


async def test_the_clock_starts_when_the_photos_reach_the_thread_and_skips_the_weekend():
    h = Harness(policy=policy(max_lifetime=timedelta(days=14)))  # opened Monday, still open the next Tuesday
    rid = await refer(h)
    h.now = utc(2026, 3, 6, 15)  # the photo comes on Friday 15:00
    await h.send_image(GP, jpeg_with_metadata())
    await h.drain()
    assert h.store.referral(rid).escalate_at == utc(2026, 3, 10, 15)  # Fri 2 h + Mon 8 h + Tue 6 h
    for day in (utc(2026, 3, 7, 12), utc(2026, 3, 8, 12), utc(2026, 3, 9, 17), utc(2026, 3, 10, 14, 59)):
        assert escalations(await tick_at(h, day)) == ([], [])
    thread, gp = escalations(await tick_at(h, utc(2026, 3, 10, 15)))
    assert len(thread) == len(gp) == 1


async def test_a_referral_without_photos_is_not_escalated():
    h = Harness()
    rid = await refer(h)
    assert h.store.referral(rid).escalate_at is None
    for day in range(1, 6):
        acts = await tick_at(h, utc(2026, 3, 2, 9) + timedelta(days=day))
        assert escalations(acts) == ([], [])


async def test_urgent_is_escalated_sooner_and_expires_sooner_than_routine():
    h = Harness()
    routine = await refer_with_photo(h)
    urgent = await refer(h, extra="urgency=urgent")
    await h.send_image(GP, jpeg_with_metadata(), caption=urgent)
    await h.drain()
    ref_u, ref_r = h.store.referral(urgent), h.store.referral(routine)
    assert ref_u.urgency == "urgent" and ref_r.urgency == "routine"
    assert ref_u.expires_at == utc(2026, 3, 3, 17)  # 16 working hours: Tuesday 17:00
    assert ref_r.expires_at == utc(2026, 3, 9, 9)  # 7 days
    assert ref_u.reminder_at == utc(2026, 3, 3, 13)  # 4 working hours before
    acts = await tick_at(h, utc(2026, 3, 2, 13))  # 4 working hours
    thread, gp = escalations(acts)
    assert [a.to.referral_id for a in thread] == [urgent] and [a.referral_id for a in gp] == [urgent]
    assert "(urgent)" in gp[0].text and "4 working hours" in thread[0].text
    assert [e.details for e in h.store.audit if e.action == "referral.escalated"] == [
        {"role": "roster", "urgency": "urgent"}]


async def test_urgent_root_says_so_first_and_2ww_is_timed_as_urgent():
    h = Harness()
    cid = consent_id_from(await h.say(GP, CONSENT_OK))
    acts = await h.say(GP, f"!refer dermatology {cid} urgency=urgent Rapidly growing nodule on the scalp")
    (root,) = [a for a in acts if isinstance(a, A.PostThreadRoot)]
    assert root.text.startswith("URGENT: please answer by Tue 3 Mar 17:00 GMT.")
    assert "urgency=" not in root.text and "Rapidly growing nodule on the scalp" in root.text
    assert "Marked urgent" in reply_text(acts)
    acts = await h.say(GP, f"!refer dermatology {cid} urgency=2ww Rapidly growing nodule on the scalp")
    rid = referral_id_from(acts)
    assert h.store.referral(rid).expires_at == utc(2026, 3, 3, 17)
    assert "(urgent)" in reply_text(await h.say(GP, f"!status {rid}"))


async def test_urgency_is_checked_when_the_gp_types_it():
    h = Harness()
    cid = consent_id_from(await h.say(GP, CONSENT_OK))
    text = reply_text(await h.say(GP, f"!refer dermatology {cid} urgency=soon Rash"))
    assert "urgency= must be routine, urgent or 2ww" in text and not h.store.referrals()


# ------------------------------------------------------------------ stops when the referral closes
@pytest.mark.parametrize("closing", ["opinion", "cancel", "withdraw", "expired"])
async def test_the_safety_net_stops_when_the_referral_closes(closing):
    h = Harness()
    cid = consent_id_from(await h.say(GP, CONSENT_OK))
    rid = referral_id_from(await h.say(GP, f"!refer dermatology {cid} {QUESTION}"))
    await h.send_image(GP, jpeg_with_metadata())
    await h.drain()
    if closing == "opinion":
        await h.in_thread(DERM, rid, "!opinion Discoid eczema; potent steroid for 2 weeks.")
    elif closing == "cancel":
        await h.say(GP, f"!cancel {rid}")
    elif closing == "withdraw":
        await h.say(GP, f"!withdraw {cid}")
    else:  # the bot was down past the expiry: the first tick expires it, nothing else
        h.now = utc(2026, 3, 20, 9)
        acts = await h.tick()
        assert any("has expired" in a.text for a in acts if isinstance(a, A.Notify))
        assert escalations(acts) == ([], []) and warnings(acts) == []
    await h.drain()
    for at in (utc(2026, 3, 3, 17), utc(2026, 3, 8, 9, 1), utc(2026, 3, 9, 9, 1), utc(2026, 3, 21)):
        acts = await tick_at(h, at)
        assert escalations(acts) == ([], []) and warnings(acts) == [], closing
    assert not [e for e in h.store.audit if e.action in ("referral.escalated", "referral.reminder")]
    assert not h.store.referral(rid).is_open


# ------------------------------------------------------------------ the expiry warning
async def test_expiry_warning_says_when_in_local_time_and_what_happens_then():
    h = Harness(policy=policy(filing_enabled=True))
    rid = await refer_with_photo(h)
    await tick_at(h, utc(2026, 3, 3, 17))  # the escalation
    assert warnings(await tick_at(h, utc(2026, 3, 8, 8, 59))) == []
    (warn,) = warnings(await tick_at(h, utc(2026, 3, 8, 9)))  # 1 day before the 7-day window
    assert warn.mentions == (GP.user_id,) and warn.referral_id == rid
    assert "It expires at Mon 9 Mar 09:00 GMT" in warn.text
    assert "its photos are removed from the specialists' room" in warn.text
    assert "its record (question, photos, consent) is filed" in warn.text
    assert warnings(await tick_at(h, utc(2026, 3, 8, 18))) == []  # once
    assert [e.details for e in h.store.audit if e.action == "referral.reminder"] == [{"urgency": "routine"}]


async def test_expiry_warning_in_summer_time_and_without_photos():
    h = Harness()
    h.now = utc(2026, 6, 1, 8)  # Monday 09:00 BST
    rid = await refer(h)
    (warn,) = warnings(await tick_at(h, utc(2026, 6, 7, 8)))
    assert "It expires at Mon 8 Jun 09:00 BST" in warn.text
    assert "it closes (no photo of it has been shared)" in warn.text and "filed" not in warn.text
    assert h.store.referral(rid).reminder_sent


async def test_urgent_expiry_warning_runs_on_working_time():
    h = Harness()
    h.now = utc(2026, 3, 6, 16)  # Friday 16:00
    rid = await refer(h, extra="urgency=urgent")
    ref = h.store.referral(rid)
    assert ref.expires_at == utc(2026, 3, 10, 16)  # Tuesday 16:00
    assert ref.reminder_at == utc(2026, 3, 10, 12)
    assert warnings(await tick_at(h, utc(2026, 3, 9, 12))) == []
    (warn,) = warnings(await tick_at(h, utc(2026, 3, 10, 12)))
    assert "(urgent)" in warn.text and "Tue 10 Mar 16:00 GMT" in warn.text


# ------------------------------------------------------------------ suspected cancer
async def test_suspected_cancer_wording_gets_the_pathway_reminder_and_the_referral_still_opens():
    h = Harness()
    cid = consent_id_from(await h.say(GP, CONSENT_OK))
    acts = await h.say(GP, f"!refer dermatology {cid} Pigmented lesion left forearm, grown over 3 months. Melanoma?")
    rid = referral_id_from(acts)
    replies = [a for a in acts if isinstance(a, A.Reply)]
    assert "opened" in replies[0].text  # the referral first, then the reminder
    (reminder,) = [a for a in replies if "NICE NG12" in a.text]
    assert reminder.to == E.DirectChat(GP.user_id) and "\n" not in reminder.text
    assert "urgent suspected-cancer referral pathway" in reminder.text and "not advice and guidance" in reminder.text
    assert h.store.referral(rid).state is ReferralState.OPENED
    assert any(isinstance(a, A.PostThreadRoot) for a in acts)
    (entry,) = [e for e in h.store.audit if e.action == "referral.cancer_pathway_reminder"]
    assert entry.referral_id == rid and entry.details == {"reason": "wording"}
    assert "melanoma" not in repr(h.store.audit).lower()


async def test_2ww_urgency_gets_the_reminder_and_ordinary_questions_do_not():
    h = Harness()
    cid = consent_id_from(await h.say(GP, CONSENT_OK))
    acts = await h.say(GP, f"!refer dermatology {cid} urgency=2ww Crusted nodule on the ear")
    assert "NICE NG12" in reply_text(acts)
    for question in ("?BCC on the nose", "no concern for melanoma, ?seborrhoeic keratosis", QUESTION):
        assert "NICE NG12" not in reply_text(await h.say(GP, f"!refer dermatology {cid} {question}"))
    assert [e.details for e in h.store.audit if e.action == "referral.cancer_pathway_reminder"] == [
        {"reason": "urgency"}]


# ------------------------------------------------------------------ delete the originals
async def test_the_gp_is_told_once_to_delete_the_originals_after_the_photos_are_posted():
    h = Harness()
    rid = await refer(h)
    acts = await h.send_image(GP, jpeg_with_metadata())
    assert not [a for a in acts if "delete the original" in getattr(a, "text", "")]  # not before it is posted
    done = await h.drain()
    (note,) = [a for a in done if isinstance(a, A.Notify) and "delete the original" in a.text]
    assert note.user_id == GP.user_id and note.referral_id == rid and note.mentions == ()
    assert "cloud backup" in note.text and "MDU" in note.text and "recently deleted" in note.text
    await h.send_image(GP, jpeg_with_metadata(seed=3), caption=rid)  # a second photo: no second note
    assert not [a for a in await h.drain() if "delete the original" in getattr(a, "text", "")]
    (entry,) = [e for e in h.store.audit if e.action == "referral.originals_reminder"]
    assert entry.referral_id == rid and entry.details == {}


async def test_no_originals_note_once_the_referral_is_closed():
    h = Harness()
    rid = await refer(h)
    await h.send_image(GP, jpeg_with_metadata())
    await h.say(GP, f"!cancel {rid}")  # cancelled before the photo reached the thread
    done = await h.drain()
    assert not [a for a in done if "delete the original" in getattr(a, "text", "")]


# ------------------------------------------------------------------ crash: never twice, never lost
def _keys() -> Keys:
    return Keys.from_master(os.urandom(32))


async def _reopen(h: Harness, path, keys) -> SQLiteStore:
    await h.store.close()
    store = await SQLiteStore.open(path, keys)
    h.store = store
    h.workflow.store = store
    return store


async def test_a_restart_after_the_decision_does_not_send_twice(tmp_path):
    keys, path = _keys(), tmp_path / "bot.sqlite3"
    h = Harness(store=await SQLiteStore.open(path, keys))
    try:
        await refer_with_photo(h)
        h.now = utc(2026, 3, 3, 17)
        assert len(escalations(await h.tick())[1]) == 1  # decided and enqueued; the bot dies before sending
        store = await _reopen(h, path, keys)
        assert escalations(await h.tick()) == ([], [])  # the restarted bot's first tick: nothing new
        pending = [e.action for e in await store.pending_actions()]
        assert len(escalations(pending)[0]) == 1 and len(escalations(pending)[1]) == 1  # still to be sent, once
        await h.drain()
        assert await store.pending_actions() == []
    finally:
        await h.store.close()


class _DiesOnEnqueue:
    """A store whose next transaction fails at the outbox write (a crash between the
    decision and the commit): everything of that transaction must roll back."""

    def __init__(self, store):
        self._store, self.armed = store, True

    def __getattr__(self, name):
        return getattr(self._store, name)

    def transaction(self):
        outer = self

        class _Tx:
            async def __aenter__(self):
                self._cm = outer._store.transaction()
                tx = await self._cm.__aenter__()

                async def enqueue(actions):
                    if outer.armed:
                        outer.armed = False
                        raise OSError("killed")
                    return await type(tx).enqueue(tx, actions)

                tx.enqueue = enqueue
                return tx

            async def __aexit__(self, *exc):
                return await self._cm.__aexit__(*exc)

        return _Tx()


async def test_a_crash_before_the_commit_does_not_lose_the_escalation(tmp_path):
    keys, path = _keys(), tmp_path / "bot.sqlite3"
    h = Harness(store=await SQLiteStore.open(path, keys))
    try:
        rid = await refer_with_photo(h)
        real = h.store
        h.workflow.store = _DiesOnEnqueue(real)
        h.now = utc(2026, 3, 3, 17)
        with pytest.raises(OSError):
            await h.tick()
        h.workflow.store = real
        async with real.transaction() as tx:
            assert (await tx.get_referral(rid)).escalated_at is None  # rolled back with the outbox write
        assert not [e for e in await real.audit_entries(rid) if e.action == "referral.escalated"]
        await _reopen(h, path, keys)
        thread, gp = escalations(await h.tick())
        assert len(thread) == len(gp) == 1
        assert len([e for e in await h.store.audit_entries(rid) if e.action == "referral.escalated"]) == 1
    finally:
        await h.store.close()


def test_refer_reads_urgency_anywhere_after_the_consent_id():
    from handlers.commands import CommandError, ReferCmd, parse_command

    cmd = parse_command("!refer derm C-7K3QX9 Crusted nodule urgency=URGENT on the ear")
    assert isinstance(cmd, ReferCmd) and cmd.urgency == "urgent" and cmd.question == "Crusted nodule on the ear"
    assert parse_command("!refer derm C-7K3QX9 urgency:2ww Crusted nodule").urgency == "2ww"
    assert parse_command("!refer derm C-7K3QX9 Crusted nodule").urgency == "routine"
    with pytest.raises(CommandError, match="routine, urgent or 2ww"):
        parse_command("!refer derm C-7K3QX9 urgency=asap Crusted nodule")


async def test_the_filed_record_shows_the_safety_net_without_its_words():
    from bot.filing.record import load_record

    h = Harness(policy=policy(filing_enabled=True))
    rid = await refer_with_photo(h, "Changing mole on the back, ?melanoma")
    await tick_at(h, utc(2026, 3, 3, 17))  # escalated
    await tick_at(h, utc(2026, 3, 8, 9))  # warned
    await h.in_thread(DERM, rid, "!opinion Dysplastic naevus; excise.")
    await h.drain()
    record = await load_record(h.store, rid, version=1, at=h.now)
    lines = [line for _, line in record.timeline]
    for expected in ("GP reminded: suspected cancer goes through the 2-week-wait pathway (NICE NG12)",
                     "GP asked to delete the original photos from the phone and its backups",
                     "Escalated: no opinion yet, the specialty asked to answer and the GP told",
                     "GP warned that the referral would expire without an opinion"):
        assert expected in lines, lines
    assert not any("melanoma" in line.lower() for line in lines)
