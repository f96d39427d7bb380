"""Issue 10 on a real Synapse with real E2EE clients: the photo reaches the referral it
was meant for, the thread is a conversation both ways, and people are alerted (checked
with the push rules a client evaluates on the decrypted event)."""
from __future__ import annotations

import asyncio
import re
import time

import pytest

from bot.matrix.people import Person, Seen
from bot.matrix.photo import make_photo
from tests.matrix import flow
from tests.matrix.pushrules import Context, decrypted_event, fetch_rules, matching_rule, mentions_only, notifies

pytestmark = pytest.mark.synapse

FAST = {"grace_period_seconds": 30, "max_lifetime_hours": 72, "reminder_before_hours": 12}


async def refer(w, cid: str, question: str) -> tuple[str, Seen]:
    """Open a referral; returns its id and the bot's "opened, send the photos" message."""
    ans = await w.gp_says(f"!refer dermatology {cid} {question}", expect="opened")
    rid = re.search(r"R-[A-Z0-9]+", ans.body).group(0)
    return rid, ans


async def root_of(w, rid: str) -> Seen:
    return await w.sp.wait_for(lambda s: s.room_id == w.derm_room and s.sender == w.bot_user.user_id
                               and rid in s.body and s.thread_root is None and s.msgtype == "m.text",
                               20, f"the thread root of {rid}")


def images_in(w, root: Seen) -> list[Seen]:
    return [s for s in w.sp.seen if s.room_id == w.derm_room and s.sender == w.bot_user.user_id
            and s.msgtype == "m.image" and s.thread_root == root.event_id]


async def wait_images(w, root: Seen, n: int, timeout: float = 30) -> list[Seen]:
    deadline = time.monotonic() + timeout
    while len(images_in(w, root)) < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(images_in(w, root))} images in the thread, expected {n}")
        await asyncio.sleep(0.2)
    return images_in(w, root)


def context(person: Person, room_id: str, sender: str) -> Context:
    room = person.client.rooms[room_id]
    return Context(user_id=person.user_id, display_name=room.user_name(person.user_id) or "",
                   room_id=room_id, member_count=room.member_count,
                   sender_power=room.power_levels.get_user_level(sender))


async def rules_of(w, person: Person) -> dict:
    return await fetch_rules(w.hs.url, person.client.access_token)


def rule_for(rules: dict, person: Person, room_id: str, seen: Seen) -> str | None:
    rule = matching_rule(rules, decrypted_event(seen, room_id), context(person, room_id, seen.sender))
    return rule and rule["rule_id"]


def alerts(rules: dict, person: Person, room_id: str, seen: Seen) -> bool:
    return notifies(rules, decrypted_event(seen, room_id), context(person, room_id, seen.sender))


async def test_two_open_referrals_photos_by_caption_by_reply_and_by_photo_command(make_world):
    w = await make_world(policy=FAST)
    cid = await flow.consent(w)
    rid_a, _ = await refer(w, cid, "Pigmented lesion left forearm, grown over 3 months")
    rid_b, opened_b = await refer(w, cid, "Leg ulcer right shin, not healing after 6 weeks")
    root_a, root_b = await root_of(w, rid_a), await root_of(w, rid_b)

    # by caption: the photo names the older referral, which the old rule never picked
    mark = time.monotonic()
    up1 = await flow.send_photo(w, filename="IMG_0001.JPG", caption=f"{rid_a} forearm, close-up")
    await wait_images(w, root_a, 1)
    assert images_in(w, root_b) == []
    assert rid_a in (await flow.bot_reply(w, mark, "on its way")).body
    # by a Matrix reply to the bot's "send the photos" message of R-B
    up2 = await flow.send_photo(w, filename="IMG_0002.JPG", reply_to=opened_b.event_id)
    await wait_images(w, root_b, 1)
    assert len(images_in(w, root_a)) == 1
    # neither: both referrals are waiting, so the bot holds the photo and asks
    mark = time.monotonic()
    up3 = await flow.send_photo(w, filename="IMG_0003.JPG")
    ask = await flow.bot_reply(w, mark, "Which referral is this photo for")
    assert f"!photo {rid_a}" in ask.body and f"!photo {rid_b}" in ask.body
    assert "Pigmented lesion" in ask.body and "Leg ulcer" in ask.body
    await asyncio.sleep(1.0)
    assert len(images_in(w, root_a)) == 1 and len(images_in(w, root_b)) == 1  # nothing posted meanwhile
    await w.gp_says(f"!photo {rid_b}", expect="on its way")
    await wait_images(w, root_b, 2)
    assert len(images_in(w, root_a)) == 1
    for up in (up1, up2, up3):  # every raw upload left the chat and the server
        await flow.upload_redacted(w, up)
    await flow.media_gone(w, [m for up in (up1, up2, up3) for m in up.mxcs])


async def test_the_specialist_asks_the_gp_answers_and_both_are_alerted(make_world):
    w = await make_world(policy=FAST)
    await mentions_only(w.hs.url, w.sp.client.access_token, w.derm_room)  # a busy specialist's setting
    cid = await flow.consent(w)
    rid, _ = await refer(w, cid, "Pigmented lesion left forearm, grown over 3 months")
    root = await root_of(w, rid)
    mark = time.monotonic()
    await flow.send_photo(w)
    ack = await flow.bot_reply(w, mark, "on its way")
    await wait_images(w, root, 1)

    # the specialist writes in the thread, like in any chat
    question = "How long has it been there, and has it bled?"
    asked_at = time.monotonic()
    asked = await w.sp.say(w.derm_room, question, thread_root=root.event_id)
    relayed = await flow.bot_reply(w, asked_at, "has it bled")
    assert rid in relayed.body and "Dr Sam Okafor" in relayed.body and "Pigmented lesion" in relayed.body
    assert relayed.msgtype == "m.text" and relayed.content["m.mentions"] == {"user_ids": [w.gp.user_id]}
    assert f"https://matrix.to/#/{w.gp.user_id}" in relayed.content["formatted_body"]
    # and the specialist's message is marked as passed on
    await w.sp.wait_for(lambda s: s.type == "m.reaction" and s.sender == w.bot_user.user_id
                        and (s.content.get("m.relates_to") or {}).get("event_id") == asked, 20,
                        "the bot's mark on the relayed message")

    # the GP answers with a Matrix reply to the relayed message: it lands in the thread
    await w.gp.say(w.dm_room, "About 3 months; it bled once last week.", reply_to=relayed.event_id)
    answer = await w.sp.wait_for(lambda s: s.room_id == w.derm_room and s.thread_root == root.event_id
                                 and "bled once" in s.body, 20, "the GP's answer in the thread")
    assert "The referring GP (P81001)" in answer.body and answer.sender == w.bot_user.user_id
    assert answer.content["m.mentions"] == {"user_ids": [w.sp.user_id]}
    # !reply R-… works too
    await w.gp.say(w.dm_room, f"!reply {rid} She is on methotrexate.")
    await w.sp.wait_for(lambda s: s.thread_root == root.event_id and "methotrexate" in s.body, 20,
                        "the !reply in the thread")

    # the opinion
    op_at = time.monotonic()
    await w.sp.say(w.derm_room, "!opinion Benign seborrhoeic keratosis.", thread_root=root.event_id)
    opinion = await flow.bot_reply(w, op_at, "seborrhoeic")
    recorded = await w.sp.wait_for(lambda s: s.thread_root == root.event_id and "Opinion recorded" in s.body,
                                   20, "the opinion's acknowledgement")

    # what a client decides, with the server's push rules, on the decrypted events
    gp_rules, sp_rules = await rules_of(w, w.gp), await rules_of(w, w.sp)
    for seen in (relayed, opinion):
        assert alerts(gp_rules, w.gp, w.dm_room, seen), seen.body
        assert rule_for(gp_rules, w.gp, w.dm_room, seen) == ".m.rule.is_user_mention"
    assert not alerts(gp_rules, w.gp, w.dm_room, ack)
    assert rule_for(gp_rules, w.gp, w.dm_room, ack) == ".m.rule.suppress_notices"
    # in the specialty room set to "mentions & keywords": the root and the GP's answer alert
    # the specialist, the acknowledgement does not
    for seen in (root, answer):
        assert alerts(sp_rules, w.sp, w.derm_room, seen), seen.body
    assert not alerts(sp_rules, w.sp, w.derm_room, recorded)
    # ... and a message without its mention would not have: the mention is what alerts
    stripped = Seen(root.room_id, root.event_id, root.sender, root.type,
                    {"msgtype": "m.text", "body": root.content["body"]}, root.ts)
    assert not alerts(sp_rules, w.sp, w.derm_room, stripped)

    # the audit says who relayed what when, never the words
    entries = await w.app.store.audit_entries(rid)
    actions = [e.action for e in entries]
    assert actions.count("thread.relayed_to_gp") == 1 and actions.count("thread.relayed_to_thread") == 2
    dumped = repr(entries).lower()
    assert "bled" not in dumped and "methotrexate" not in dumped


async def test_more_photos_lands_in_the_same_thread_and_the_addendum_reaches_the_gp(make_world):
    w = await make_world(policy=FAST)
    cid = await flow.consent(w)
    rid, _ = await refer(w, cid, "Pigmented lesion left forearm, grown over 3 months")
    root = await root_of(w, rid)
    await flow.send_photo(w)
    await wait_images(w, root, 1)
    # meanwhile the GP opened another referral, which is waiting for its photo
    other, _ = await refer(w, cid, "Leg ulcer right shin, not healing after 6 weeks")
    other_root = await root_of(w, other)

    at = time.monotonic()
    await w.sp.say(w.derm_room, "!morephotos Close-up with a ruler, in daylight", thread_root=root.event_id)
    request = await flow.bot_reply(w, at, "asks for another photo")
    assert "ruler" in request.body and rid in request.body
    assert request.content["m.mentions"] == {"user_ids": [w.gp.user_id]}
    extended = await w.sp.wait_for(lambda s: s.thread_root == root.event_id and "Asked the GP" in s.body,
                                   20, "the thread told")
    assert re.search(r"expires at \w{3} \d{1,2} \w{3} \d\d:\d\d (GMT|BST)", extended.body), extended.body
    # the GP sends the photo as a reply to the request: same referral, same thread
    await flow.send_photo(w, make_photo(800, 600, seed=3), filename="IMG_0100.JPG", reply_to=request.event_id)
    await wait_images(w, root, 2)
    assert images_in(w, other_root) == []

    await w.sp.say(w.derm_room, "!opinion Seborrhoeic keratosis.", thread_root=root.event_id)
    await flow.bot_reply(w, at, "Opinion on")
    at = time.monotonic()
    await w.sp.say(w.derm_room, "!addendum Dermoscopy at the next visit would confirm it.",
                   thread_root=root.event_id)
    addendum = await flow.bot_reply(w, at, "Addendum")
    assert "Dermoscopy" in addendum.body and rid in addendum.body
    assert addendum.content["m.mentions"] == {"user_ids": [w.gp.user_id]}
    assert alerts(await rules_of(w, w.gp), w.gp, w.dm_room, addendum)


async def test_a_strangers_words_in_the_thread_are_not_relayed(make_world):
    w = await make_world(policy=FAST)
    cid = await flow.consent(w)
    rid, _ = await refer(w, cid, "Pigmented lesion left forearm, grown over 3 months")
    root = await root_of(w, rid)
    await flow.send_photo(w)
    await wait_images(w, root, 1)
    # someone outside the clinician directory is let into the room afterwards and writes
    out_u = w.hs.register(f"visitor{w.suffix}", displayname="A visitor")
    stranger = await Person.login(w.hs.url, out_u.user_id, out_u.password, w.root / "people" / "visitor",
                                  "Visitor")
    w.extra_people.append(stranger)
    stranger.start()
    await w.sp.client.room_invite(w.derm_room, out_u.user_id)
    await stranger.join(w.derm_room)
    await asyncio.sleep(1.0)
    from bot.matrix import nioclient

    await nioclient.sync_once(stranger.client)
    await stranger.say(w.derm_room, "I know her, she is Jane Doe from Elm Street", thread_root=root.event_id)
    told = await w.sp.wait_for(lambda s: s.thread_root == root.event_id and "Not passed to the GP" in s.body,
                               30, "the bot saying it did not pass it on")
    assert told.msgtype == "m.notice"
    await asyncio.sleep(1.0)
    assert not [s for s in w.gp.seen if "Jane Doe" in s.body]
    entries = await w.app.store.audit_entries(rid)
    assert [e.actor for e in entries if e.action == "thread.relay_refused"] == [out_u.user_id]
    assert "thread.relayed_to_gp" not in [e.action for e in entries]
