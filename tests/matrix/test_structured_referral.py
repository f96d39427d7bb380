"""The structured referral on a real Synapse with real E2EE clients (issue 12 parts 1-2,
issue 11 part 3): what the specialist's thread root shows of the patient, a question
with an NHS number held with nothing in the specialty room (read back from the server),
and a child's intimate referral refused."""
from __future__ import annotations

import asyncio
import re

import pytest
from nio import RoomMemberEvent, RoomMessagesError

from tests.matrix import flow

pytestmark = pytest.mark.synapse

ADULT = ("!consent patient=9434765919 by=patient dob=1980-05-17 sex=female purposes=care identifiable=no "
         "notes=yes specialties=dermatology")
CHILD = ('!consent patient=9434765919 by=parent dob=2016-06-20 sex=male purposes=care identifiable=no notes=yes '
         'specialties=dermatology statement="Mother agrees; the rash needs a specialist view; the boy is too young '
         'to decide."')


async def _consent(w, text: str) -> str:
    ans = await w.gp_says(text, expect="recorded")
    return re.search(r"C-[A-Z0-9]+", ans.body).group(0)


async def bot_events_in_room(w) -> list:
    """Every event the bot sent in the specialty room other than its membership, read from
    the server (not from what a client happened to sync)."""
    events, token = [], None
    while True:
        resp = await w.sp.client.room_messages(w.derm_room, start=token, limit=100)
        assert not isinstance(resp, RoomMessagesError), resp
        events += [e for e in resp.chunk if e.sender == w.bot_user.user_id and not isinstance(e, RoomMemberEvent)]
        if not resp.chunk or not resp.end or resp.end == token:
            return events
        token = resp.end


async def test_thread_root_shows_the_age_band_sex_and_site_never_the_date_of_birth(make_world):
    w = await make_world()
    cid = await _consent(w, ADULT)
    ans = await w.gp_says(f"!refer dermatology {cid} site=left forearm; duration=3 months; urgency=urgent; "
                          "Pigmented lesion, grown. Melanoma?", expect="opened")
    rid = re.search(r"R-[A-Z0-9]+", ans.body).group(0)
    assert "age 40–49, female" in ans.body
    root = await w.sp.wait_for(lambda s: s.room_id == w.derm_room and s.sender == w.bot_user.user_id
                               and rid in s.body and s.thread_root is None, 20, "the thread root")
    lines = root.body.splitlines()
    for line in ("Patient: age 40–49, female", "Urgency: URGENT", "Site: left forearm", "Duration: 3 months",
                 "Question: Pigmented lesion, grown. Melanoma?"):
        assert line in lines, (line, root.body)
    for leak in ("1980", "17/05", "05-17", "9434765919"):
        assert leak not in root.body and leak not in str(root.content), leak
    assert root.encrypted  # the text travelled end-to-end encrypted
    # and the server holds it as ciphertext: read back, nio had to decrypt it (Megolm)
    raw = next(e for e in await bot_events_in_room(w) if e.event_id == root.event_id)
    assert getattr(raw, "decrypted", False) is True


async def test_a_question_with_an_nhs_number_is_held_and_nothing_reaches_the_room(make_world):
    w = await make_world()
    cid = await flow.consent(w)
    ans = await w.gp_says(f"!refer dermatology {cid} Rash on the arm, NHS 943 476 5919, lives LS1 4AP. Eczema?",
                          expect="looks like")
    assert ans.body == ("Your question contains what looks like an NHS number and a postcode; remove them and send "
                        "it again. Nothing was posted.")
    await asyncio.sleep(2.0)  # the bot's outbox drains within a second: give it the chance to post wrongly
    assert await bot_events_in_room(w) == []
    assert not [s for s in w.sp.seen if s.room_id == w.derm_room and s.sender == w.bot_user.user_id
                and s.type != "m.room.member"]
    # the control: the same question without them opens, and the server read-back sees its root
    ans = await w.gp_says(f"!refer dermatology {cid} Rash on the arm. Eczema?", expect="opened")
    rid = re.search(r"R-[A-Z0-9]+", ans.body).group(0)
    await w.sp.wait_for(lambda s: s.room_id == w.derm_room and rid in s.body, 20, "the thread root")
    assert len(await bot_events_in_room(w)) == 1


async def test_an_intimate_referral_for_a_child_is_refused(make_world):
    w = await make_world()
    cid = await _consent(w, CHILD)
    ans = await w.gp_says(f"!refer dermatology {cid} site=scrotum; Itchy red rash for 2 weeks",
                          expect="not opened")
    assert "under 18" in ans.body and "face-to-face assessment" in ans.body
    await asyncio.sleep(2.0)
    assert await bot_events_in_room(w) == []
    # a photo sent now has no referral to go to, and the room still gets nothing
    up = await flow.send_photo(w)
    await flow.upload_redacted(w, up)
    await asyncio.sleep(1.0)
    assert await bot_events_in_room(w) == []
