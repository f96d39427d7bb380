"""Issue 12 part 5 on a real Synapse with real E2EE clients and short configured times:
an urgent referral is escalated to the specialty lead (the mention reaches the lead, and
the push rules the lead's client evaluates on the decrypted event say notify, while the
rest of the roster is not alerted), the GP gets the escalation note, the suspected-cancer
reminder and the "delete the originals" note; and a routine referral's expiry warning
reaches the GP with the local time of expiry before the referral expires."""
from __future__ import annotations

import asyncio
import time

import pytest

from handlers.timefmt import fmt_time
from tests.matrix import flow
from tests.matrix.pushrules import mentions_only
from tests.matrix.test_conversation import alerts, refer, root_of, rule_for, rules_of, wait_images

pytestmark = pytest.mark.synapse

EVERY_DAY = '["mon", "tue", "wed", "thu", "fri", "sat", "sun"]'
ESCALATION = {
    "grace_period_seconds": 30, "max_lifetime_hours": 72, "reminder_before_hours": 12,
    # round the clock, so working seconds pass while the test runs, whatever the day
    "working_days": EVERY_DAY, "working_hours": '"00:00-24:00"',
    "escalate_after_working_hours": 8, "urgent_escalate_after_working_seconds": 3,
    "urgent_max_lifetime_working_hours": 24, "urgent_reminder_before_working_hours": 2,
}


async def referral_of(w, rid: str):
    async with w.app.store.transaction() as tx:
        return await tx.get_referral(rid)


async def test_an_urgent_referral_is_escalated_to_the_lead_and_the_gp_is_told(make_world):
    w = await make_world(policy=ESCALATION, with_lead=True)
    for person in (w.sp, w.lead):  # busy specialists: the room alerts them only when they are mentioned
        await mentions_only(w.hs.url, person.client.access_token, w.derm_room)
    cid = await flow.consent(w)
    mark = time.monotonic()
    rid, _opened = await refer(w, cid, "urgency=urgent Crusted nodule on the ear growing fast, ?SCC")
    reminder = await flow.bot_reply(w, mark, "NICE NG12")
    assert "urgent suspected-cancer referral pathway" in reminder.body and rid in reminder.body
    root = await root_of(w, rid)
    assert root.body.startswith("URGENT: please answer by")
    assert "urgency=" not in root.body

    mark = time.monotonic()
    await flow.send_photo(w)
    await wait_images(w, root, 1)
    delete_note = await flow.bot_reply(w, mark, "delete the original")
    assert "cloud backup" in delete_note.body and "MDU" in delete_note.body and rid in delete_note.body

    # 3 working seconds after the photo reached the thread: the lead is asked, in the thread
    escalated = await w.lead.wait_for(
        lambda s: s.room_id == w.derm_room and s.thread_root == root.event_id and "no opinion for" in s.body,
        30, "the escalation in the thread")
    assert escalated.sender == w.bot_user.user_id and escalated.msgtype == "m.text"
    assert escalated.content["m.mentions"] == {"user_ids": [w.lead.user_id]}
    assert f"https://matrix.to/#/{w.lead.user_id}" in escalated.content["formatted_body"]
    assert rid in escalated.body and "(urgent)" in escalated.body
    note = await flow.bot_reply(w, mark, "No opinion yet")
    assert "phone the on-call dermatology team" in note.body and "the dermatology lead" in note.body
    assert note.msgtype == "m.text" and note.content["m.mentions"] == {"user_ids": [w.gp.user_id]}

    # what the clients decide on the decrypted events, with the server's push rules
    lead_rules, sp_rules, gp_rules = await rules_of(w, w.lead), await rules_of(w, w.sp), await rules_of(w, w.gp)
    assert alerts(lead_rules, w.lead, w.derm_room, escalated)
    assert rule_for(lead_rules, w.lead, w.derm_room, escalated) == ".m.rule.is_user_mention"
    assert not alerts(sp_rules, w.sp, w.derm_room, escalated)  # the lead was asked, not the whole roster
    assert alerts(gp_rules, w.gp, w.dm_room, note)
    assert rule_for(gp_rules, w.gp, w.dm_room, note) == ".m.rule.is_user_mention"
    assert not alerts(gp_rules, w.gp, w.dm_room, delete_note)  # a quiet note, not an alarm

    # once: no second escalation while the referral stays open
    await asyncio.sleep(3.0)
    assert len([s for s in w.lead.seen if s.thread_root == root.event_id and "no opinion for" in s.body]) == 1
    assert len([s for s in w.gp.seen if s.room_id == w.dm_room and "No opinion yet" in s.body]) == 1
    entries = await w.app.store.audit_entries(rid)
    actions = [e.action for e in entries]
    for kind in ("referral.escalated", "referral.cancer_pathway_reminder", "referral.originals_reminder"):
        assert actions.count(kind) == 1, kind
    assert "nodule" not in repr(entries).lower() and "scc" not in repr(entries).lower()


async def test_the_gp_is_warned_before_an_unanswered_referral_expires(make_world):
    w = await make_world(policy={"grace_period_hours": 1, "max_lifetime_seconds": 20, "reminder_before_seconds": 12,
                                 "escalate_after_working_hours": 100})
    await mentions_only(w.hs.url, w.sp.client.access_token, w.derm_room)
    cid = await flow.consent(w)
    rid, _ = await refer(w, cid, "Itchy plaque left shin for 3 months, psoriasis or eczema?")
    root = await root_of(w, rid)
    mark = time.monotonic()
    await flow.send_photo(w)
    (img,) = await wait_images(w, root, 1)
    ref = await referral_of(w, rid)
    expires = fmt_time(ref.expires_at, "Europe/London")

    warning = await flow.bot_reply(w, mark, "has no opinion yet", timeout=30)
    assert f"It expires at {expires}" in warning.body
    assert "its photos are removed from the specialists' room" in warning.body
    assert warning.content["m.mentions"] == {"user_ids": [w.gp.user_id]}
    gp_rules, sp_rules = await rules_of(w, w.gp), await rules_of(w, w.sp)
    assert alerts(gp_rules, w.gp, w.dm_room, warning)
    reminder = await w.sp.wait_for(lambda s: s.thread_root == root.event_id and "Reminder:" in s.body, 20,
                                   "the roster's reminder in the thread")
    assert alerts(sp_rules, w.sp, w.derm_room, reminder)

    # then it expires: the photo leaves the room, and the warning came first, once
    await w.sp.wait_for(lambda s: s.event_id == img.event_id and s.redacted, 30, "the photo removed at expiry")
    expired = await flow.bot_reply(w, mark, "has expired", timeout=20)
    assert warning.ts < expired.ts
    assert len([s for s in w.gp.seen if s.room_id == w.dm_room and "has no opinion yet" in s.body]) == 1
    actions = [e.action for e in await w.app.store.audit_entries(rid)]
    assert actions.count("referral.reminder") == 1 and "referral.escalated" not in actions
