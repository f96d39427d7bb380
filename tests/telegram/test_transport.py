"""The Telegram transport end to end: fake Bot API <- python-telegram-bot <- transport ->
real workflow -> real SQLite store, real sanitizer (exiftool-checked elsewhere)."""
from __future__ import annotations

import io
from datetime import timedelta

import pytest
from PIL import Image

from bot.matrix.photo import make_photo
from bot.telegram.transport import NOT_E2EE_TEXT, NOT_LISTED_TEXT
from handlers.model import ReferralState
from tests.telegram.world import DERM, DERM_CHAT, DERM_TG, GP_TG, STRANGER_TG, World

QUESTION = "Itchy ring-shaped rash for 3 weeks, tinea?"


@pytest.fixture
async def world(fake_api, tmp_path):
    w = await World.create(fake_api, tmp_path, allow_images=True)
    try:
        yield w
    finally:
        await w.close()


async def _referral(world, rid):
    async with world.store.read() as tx:
        return await tx.get_referral(rid)


async def test_full_flow_consent_refer_image_opinion_removal(world):
    api = world.api
    cid = await world.consent()
    rid = await world.refer(cid)
    photo = make_photo(800, 600)
    gp_upload = api.user_sends_document(GP_TG, photo, "IMG_2041.jpg", "image/jpeg")
    await world.step()

    # the raw upload is gone from the private chat; the clean copy is in the referral's topic
    assert api.messages[(GP_TG, gp_upload.message_id)].deleted
    topic = world.topic_of(rid)
    (posted,) = world.images_in_group()
    assert posted.thread_id == topic
    sent = api.calls_to("sendPhoto")[-1]
    assert sent["photo"]["filename"].startswith(rid) and "IMG_2041" not in sent["photo"]["filename"]
    clean = api.files[posted.body["photo"][-1]["file_id"]].data
    assert clean != photo
    with Image.open(io.BytesIO(clean)) as im:
        assert not im.getexif()  # no EXIF (GPS, device) left
    assert b"GPS" not in clean and b"Leeds" not in clean
    # the question is in the topic; the GP's filename never reached the group
    assert any(QUESTION in t for t in api.bot_texts(DERM_CHAT, topic))
    assert not any("IMG_2041" in str(params) for name, params in api.calls if name != "<download>"
                   and params.get("chat_id") == str(DERM_CHAT))

    # discussion and the opinion in the topic
    api.user_sends_text(DERM_TG, "Looks fungal to me", chat_id=DERM_CHAT, thread_id=topic)
    api.user_sends_text(DERM_TG, "!opinion Tinea corporis; topical terbinafine 2 weeks.", chat_id=DERM_CHAT,
                        thread_id=topic)
    await world.step()
    assert any("terbinafine" in t for t in world.gp_texts())
    ref = await _referral(world, rid)
    assert ref.state is ReferralState.OPINION_GIVEN and ref.opinion_by == DERM

    # after the grace period the image message is deleted and a placeholder is left
    await world.advance(timedelta(hours=6, minutes=1))
    assert world.images_in_group() == []
    assert api.messages[(DERM_CHAT, posted.message_id)].deleted
    assert any("remov" in t.lower() for t in api.bot_texts(DERM_CHAT, topic))
    ref = await _referral(world, rid)
    assert all(not i.state.in_chat for i in ref.images)


async def test_no_consent_means_no_referral_and_no_post(world):
    reply = await world.gp_says(f"!refer dermatology C-ZZZZZZ {QUESTION}")
    assert "no consent" in reply.lower()
    world.api.user_sends_document(GP_TG, make_photo(400, 300), "x.jpg", "image/jpeg")
    await world.step()
    assert "no open referral" in world.gp_texts()[-1].lower()
    assert world.api.calls_to("createForumTopic") == [] and world.images_in_group() == []


async def test_consent_not_covering_the_purpose_is_refused(world):
    cid = await world.consent("purposes=teaching identifiable=no")
    reply = await world.gp_says(f"!refer dermatology {cid} {QUESTION}")
    assert "not opened" in reply.lower() and "care" in reply.lower()
    assert world.api.calls_to("createForumTopic") == []


async def test_corrupt_image_and_pdf_are_refused_and_removed(world):
    api = world.api
    cid = await world.consent()
    await world.refer(cid)
    truncated = make_photo(400, 300)[:700]
    m1 = api.user_sends_document(GP_TG, truncated, "broken.jpg", "image/jpeg")
    await world.step()
    first = world.gp_texts()[-1]
    m2 = api.user_sends_document(GP_TG, b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n%%EOF", "letter.pdf",
                                 "application/pdf")
    await world.step()
    second = world.gp_texts()[-1]
    for text in (first, second):
        assert "removed your upload" in text and "Traceback" not in text
    assert api.messages[(GP_TG, m1.message_id)].deleted and api.messages[(GP_TG, m2.message_id)].deleted
    assert world.images_in_group() == []


async def test_withdrawal_after_posting_deletes_the_images(world):
    api = world.api
    cid = await world.consent()
    rid = await world.refer(cid)
    api.user_sends_photo(GP_TG, make_photo(640, 480))
    await world.step()
    assert len(world.images_in_group()) == 1
    reply = await world.gp_says(f"!withdraw {cid}")
    assert "withdrawn" in reply.lower()
    assert world.images_in_group() == []
    ref = await _referral(world, rid)
    assert ref.state is ReferralState.CLOSED
    assert await world.store.vault_get(ref.images[0].image_id) is None  # crypto-shredded


async def test_expiry_without_opinion_deletes_inside_telegrams_48h_window(world):
    api = world.api
    cid = await world.consent()
    rid = await world.refer(cid)
    api.user_sends_photo(GP_TG, make_photo(640, 480))
    await world.step()
    (posted,) = world.images_in_group()
    await world.advance(timedelta(hours=25))  # reminder, no expiry yet
    assert len(world.images_in_group()) == 1
    await world.advance(timedelta(hours=5, minutes=1))  # 30 h max lifetime
    assert world.images_in_group() == []
    assert api.messages[(DERM_CHAT, posted.message_id)].deleted
    ref = await _referral(world, rid)
    assert ref.state in (ReferralState.CLOSED, ReferralState.IMAGES_EXPIRED)
    assert ref.close_reason is not None and ref.close_reason.value == "expired"


async def test_images_and_patient_data_are_refused_without_the_opt_in(fake_api, tmp_path):
    world = await World.create(fake_api, tmp_path, allow_images=False)
    try:
        api = world.api
        m = api.user_sends_photo(GP_TG, make_photo(640, 480))
        await world.step()
        assert world.gp_texts()[-1] == NOT_E2EE_TEXT
        assert api.messages[(GP_TG, m.message_id)].deleted
        assert api.calls_to("getFile") == []  # the bot never even fetched it
        c = api.user_sends_text(GP_TG, "!consent patient=9434765919 by=patient purposes=care identifiable=no notes=yes")
        await world.step()
        assert world.gp_texts()[-1] == NOT_E2EE_TEXT
        assert api.messages[(GP_TG, c.message_id)].deleted  # the NHS number does not stay in the chat
        assert "Referral bot" in await world.gp_says("!help")  # data-free commands still work
        async with world.store.read() as tx:
            assert await tx.all_referrals() == []
        assert world.images_in_group() == []
    finally:
        await world.close()


async def test_strangers_are_told_and_their_uploads_removed(world):
    api = world.api
    m = api.user_sends_photo(STRANGER_TG, make_photo(320, 240), chat_id=STRANGER_TG)
    await world.step()
    assert api.bot_texts(STRANGER_TG)[-1] == NOT_LISTED_TEXT
    assert api.messages[(STRANGER_TG, m.message_id)].deleted


async def test_group_with_unknown_members_gets_no_referral(world):
    api = world.api
    api.chats[DERM_CHAT].members.add(STRANGER_TG)
    cid = await world.consent()
    rid = await world.refer(cid)
    api.user_sends_photo(GP_TG, make_photo(640, 480))
    await world.step()
    assert world.images_in_group() == [] and api.calls_to("createForumTopic") == []
    ref = await _referral(world, rid)
    assert not any(i.state.in_chat and i.room_event_id for i in ref.images)


async def test_redelivered_update_is_processed_once(world):
    api = world.api
    cid = await world.consent()
    before = len(world.gp_texts())
    # Telegram re-sends an update the bot did not confirm (e.g. after a crash)
    last = api.messages[max(k for k in api.messages if k[0] == GP_TG)]
    api._push_update(last)
    await world.step()
    assert len(world.gp_texts()) == before
    async with world.store.read() as tx:
        assert await tx.get_consent(cid) is not None


async def test_bot_down_past_the_48h_window_is_reported_not_hidden(world):
    """If the bot was down so long that Telegram refuses the deletion, the image is not
    reported as removed (it stays 'in chat' for the operator to see) and it is counted."""
    api = world.api
    cid = await world.consent()
    rid = await world.refer(cid)
    api.user_sends_photo(GP_TG, make_photo(640, 480))
    await world.step()
    world.now[0] += timedelta(hours=72)  # nobody ran the bot for three days
    await world.transport.tick()
    await world.transport.drain()
    assert len(world.images_in_group()) == 1
    assert world.transport.delete_failures >= 1
    ref = await _referral(world, rid)
    assert any(i.state.in_chat for i in ref.images)
    topic = world.topic_of(rid)
    assert any("delete them by hand" in t for t in api.bot_texts(DERM_CHAT, topic))


async def test_a_bad_update_is_skipped_not_retried_for_ever(world, monkeypatch):
    api = world.api
    calls = {"n": 0}
    real = world.transport._on_private

    async def explode_once(msg):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("unexpected")
        await real(msg)

    monkeypatch.setattr(world.transport, "_on_private", explode_once)
    api.user_sends_text(GP_TG, "!help")
    api.user_sends_text(GP_TG, "!help")
    await world.step()
    assert calls["n"] == 2  # the first update was skipped once, the second handled
    assert len([t for t in world.gp_texts() if "Referral bot" in t]) == 1


# -- who is in the specialty group (security review, issue 9, findings 11 and 14) -------------
DERM2_TG, GP2_TG, GP3_TG, GP4_TG = 2002, 1002, 1003, 1004
STRANGERS = (3101, 3102, 3103)
_TEAM = {
    DERM2_TG: {"user_id": "@derm2:example.org", "role": "specialist", "specialties": ["dermatology"], "name": "Dr Mole"},
    GP2_TG: {"user_id": "@gp2:example.org", "role": "referrer", "practice": "Riverside Surgery"},
    GP3_TG: {"user_id": "@gp3:example.org", "role": "referrer", "practice": "Riverside Surgery"},
    GP4_TG: {"user_id": "@gp4:example.org", "role": "referrer", "practice": "Riverside Surgery"},
}


async def _try_to_post(world) -> str:
    """Open a referral and send a photo; returns what the GP was told."""
    cid = await world.consent()
    world.last_referral = await world.refer(cid)
    world.api.user_sends_photo(GP_TG, make_photo(640, 480))
    await world.step()
    return "\n".join(world.gp_texts())


async def test_strangers_in_the_group_are_found_even_when_gps_keep_the_count_low(fake_api, tmp_path):
    """The reviewer's group: 2 specialists, 3 strangers and the bot. Six GPs and
    specialists are configured for Telegram, so counting members (6 <= 6 + 1) passed."""
    for tg in STRANGERS:
        fake_api.add_user(tg, "Stranger")
    world = await World.create(fake_api, tmp_path, extra_clinicians=_TEAM,
                               group_members=(DERM2_TG, *STRANGERS))
    try:
        told = await _try_to_post(world)
        assert world.images_in_group() == [] and fake_api.calls_to("createForumTopic") == []
        assert "3 member(s) who are not on the Dermatology advice roster" in told
        # without the strangers the same group is fine (the GP cancels the referral the bot
        # could not post, as it told them, so the new photo has one referral to go to)
        fake_api.chats[DERM_CHAT].members -= set(STRANGERS)
        await world.gp_says(f"!cancel {world.last_referral}")
        await _try_to_post(world)
        assert len(world.images_in_group()) == 1
    finally:
        await world.close()


async def test_a_gp_in_the_directory_is_not_a_safe_member_of_the_specialty_group(fake_api, tmp_path):
    world = await World.create(fake_api, tmp_path, group_members=(GP_TG,))
    try:
        told = await _try_to_post(world)
        assert "1 member(s) who are not on the Dermatology advice roster" in told
        assert world.images_in_group() == []
    finally:
        await world.close()


async def test_an_administrator_off_the_roster_makes_the_group_unsafe(fake_api, tmp_path):
    fake_api.add_user(STRANGERS[0], "Group owner's friend")
    world = await World.create(fake_api, tmp_path)
    fake_api.chats[DERM_CHAT].admins.append(STRANGERS[0])
    fake_api.chats[DERM_CHAT].members.add(STRANGERS[0])
    try:
        told = await _try_to_post(world)
        assert "1 administrator(s) who are not on the Dermatology advice roster" in told
        assert world.images_in_group() == []
    finally:
        await world.close()


async def test_an_update_the_store_could_not_handle_is_not_confirmed(world):
    """Finding 4 on Telegram: a store failure must not confirm the update (the offset is
    Telegram's sync token), so it comes again and is handled once the store answers."""
    from handlers import events as E
    from storage.interfaces import StoreError

    real = world.workflow.handle
    failures = []

    async def full_disk_once(event):
        if isinstance(event, E.CommandReceived) and not failures:
            failures.append(event.event_id)
            raise StoreError("database or disk is full")
        return await real(event)

    world.workflow.handle = full_disk_once
    before = len(world.gp_texts())
    world.api.user_sends_text(GP_TG, "!help")
    assert await world.transport.poll_once(0) == 0  # not confirmed
    assert world.transport.store_errors == 1 and len(world.gp_texts()) == before
    await world.step()  # Telegram sends it again; now it is handled, once
    assert len([t for t in world.gp_texts()[before:] if "Referral bot" in t]) == 1


async def test_one_update_that_fails_costs_that_update_only(world):
    """A bug while handling one update: it is logged and counted, and the updates after
    it in the same getUpdates batch are still handled (none is fetched again forever)."""
    real = world.transport._on_private

    async def fails_on_boom(msg):
        if msg.text == "boom":
            raise RuntimeError("a bug in handling this one update")
        return await real(msg)

    world.transport._on_private = fails_on_boom
    before = len(world.gp_texts())
    world.api.user_sends_text(GP_TG, "boom")
    world.api.user_sends_text(GP_TG, "!help")  # the same batch, after it
    await world.step()
    assert any("!consent" in t for t in world.gp_texts()[before:])
    assert world.transport.failed_events == 1
