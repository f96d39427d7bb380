"""The referral story on a real Synapse with real E2EE clients, and what can go wrong.

In each test: what the GP and the specialist see, and that the original upload and
the clean image are gone from the server at the end (download answers 404)."""
from __future__ import annotations

import asyncio
import time

import pytest

from bot.matrix.photo import make_corrupt_jpeg, make_pdf, make_photo
from tests.matrix import flow

pytestmark = pytest.mark.synapse

FAST = {"grace_period_seconds": 2, "max_lifetime_hours": 72, "reminder_before_hours": 12}


async def test_full_flow(make_world, tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="referral_bot")
    w = await make_world(policy=FAST)
    cid = await flow.consent(w)
    rid = await flow.refer(w, cid)
    # the thread opens with the referral: the specialists see the question before any photo
    opened = await w.sp.wait_for(lambda s: s.room_id == w.derm_room and s.sender == w.bot_user.user_id
                                 and rid in s.body and s.thread_root is None, 20, "the thread root")
    assert "melanoma" in opened.body.lower() and "photos follow" in opened.body
    assert flow.bot_images_in_room(w) == []
    photo = make_photo(1024, 768)
    up = await flow.send_photo(w, photo)
    removed = await flow.bot_reply(w, up.mark, "removed")
    assert "GPS" in removed.body and rid in removed.body

    # the specialist: a bot-authored thread root with the question, then the clean image in it
    img, clean_mxc = await flow.clean_image(w)
    thread = img.thread_root
    assert thread == opened.event_id  # in the thread opened with the referral
    assert img.body.startswith(rid) and img.body.endswith(".jpg")
    assert "url" not in img.content and img.content["file"]["url"] == clean_mxc   # encrypted
    info = img.content.get("info") or {}
    # nothing of the phone's reused: its thumbnail and blurhash stay behind; the bot's own
    # thumbnail (made from the clean pixels, test_element_tiles.py) is encrypted
    assert "xyz.amorgan.blurhash" not in info and "thumbnail_url" not in info
    assert info["thumbnail_file"]["url"] not in up.mxcs
    rel = img.content["m.relates_to"]
    assert set(rel) <= {"rel_type", "event_id", "is_falling_back", "m.in_reply_to"}
    received = await w.sp.download_image(img)
    before, after = flow.exif_tags(photo, tmp_path), flow.exif_tags(received, tmp_path)
    assert any(k.startswith("GPS:") for k in before)
    assert not [k for k in after if k.startswith(("GPS:", "IFD0:", "ExifIFD:"))], after
    # the raw upload left the chat, and the server
    await flow.upload_redacted(w, up)
    await flow.media_gone(w, up.mxcs)

    # the opinion, relayed to the GP; then after the grace period the image goes
    await w.sp.say(w.derm_room, "!opinion Benign seborrhoeic keratosis.", thread_root=thread)
    op = await flow.bot_reply(w, up.mark, "seborrhoeic")
    assert rid in op.body
    await w.sp.wait_for(lambda s: s.event_id == img.event_id and s.redacted, 20, "image redacted")
    await w.sp.wait_for(lambda s: s.room_id == w.derm_room and s.thread_root == thread
                        and "removed" in s.body.lower() and s.sender == w.bot_user.user_id,
                        20, "the placeholder")
    await flow.media_gone(w, [clean_mxc, *up.mxcs])
    await flow.nothing_left_on_server(w)
    # exactly one image was ever posted
    assert len(flow.bot_images_in_room(w)) == 1
    # no log line carries the patient reference, clinical text or an access token
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in ("9434765919", "melanoma", "seborrhoeic", w.app.client.access_token,
                   w.gp.client.access_token):
        assert secret.lower() not in logged.lower()


async def test_no_consent(make_world):
    w = await make_world(policy=FAST)
    ans = await w.gp_says("!refer dermatology C-ZZZZZZ lesion?")
    assert "C-ZZZZZZ" in ans.body or "consent" in ans.body.lower()
    assert "R-" not in ans.body
    up = await flow.send_photo(w)
    reply = await flow.bot_reply(w, up.mark, "referral")
    assert "no open referral" in reply.body.lower()
    await flow.upload_redacted(w, up)
    await flow.media_gone(w, up.mxcs)
    await asyncio.sleep(1)
    assert flow.bot_images_in_room(w) == []
    assert not [s for s in w.sp.seen if s.room_id == w.derm_room and s.sender == w.bot_user.user_id
                and s.type == "m.room.message"]


async def test_consent_not_covering_purpose(make_world):
    w = await make_world(policy=FAST)
    cid = await flow.consent(w, purposes="teaching")
    ans = await w.gp_says(f"!refer dermatology {cid} lesion?")
    assert "R-" not in ans.body and ("care" in ans.body.lower() or "purpose" in ans.body.lower())
    up = await flow.send_photo(w)
    await flow.bot_reply(w, up.mark, "referral")
    await flow.upload_redacted(w, up)
    await flow.media_gone(w, up.mxcs)
    assert flow.bot_images_in_room(w) == []


@pytest.mark.parametrize("kind", ["corrupt", "pdf"])
async def test_bad_files_are_refused(make_world, kind):
    w = await make_world(policy=FAST)
    rid = await flow.refer(w, await flow.consent(w))
    data, name = (make_corrupt_jpeg(), "IMG_0002.JPG") if kind == "corrupt" else (make_pdf(), "scan.jpg")
    up = await flow.send_photo(w, data, name, "image/jpeg", thumbnail=False)
    reply = await flow.bot_reply(w, up.mark, "removed your upload")
    text = reply.body.lower()
    assert "traceback" not in text
    if kind == "pdf":
        assert "pdf" in text
    else:
        assert any(word in text for word in ("truncated", "corrupt", "incomplete", "could not read", "damaged", "cut"))
    await flow.upload_redacted(w, up)
    await flow.media_gone(w, up.mxcs)
    await asyncio.sleep(1)
    assert flow.bot_images_in_room(w) == []
    # a good photo afterwards still goes through the same referral
    up2 = await flow.send_photo(w)
    img, mxc = await flow.clean_image(w)
    assert img.body.startswith(rid)


async def test_outsider_in_specialty_room(make_world):
    w = await make_world(policy=FAST, with_outsider=True)
    mark = time.monotonic()
    rid = await flow.refer(w, await flow.consent(w))
    # the GP learns it when the referral opens, before sending any photo
    early = await flow.bot_reply(w, mark, "could not post")
    assert rid in early.body and "not on its roster" in early.body
    up = await flow.send_photo(w)
    # the room is told why, the GP is told the image was not shared
    said = await w.sp.wait_for(lambda s: s.room_id == w.derm_room and s.sender == w.bot_user.user_id
                               and "not on its roster" in s.body, 20, "the refusal")
    assert w.outsider.user_id in said.body
    note = await flow.bot_reply(w, up.mark, "could not post")
    assert rid in note.body
    await flow.upload_redacted(w, up)
    await flow.media_gone(w, up.mxcs)
    await asyncio.sleep(1)
    assert flow.bot_images_in_room(w) == []
    await flow.nothing_left_on_server(w)  # an image encrypted+uploaded early is deleted too
    assert not [s for s in w.outsider.seen if s.msgtype == "m.image"]
    assert not [s for s in w.outsider.seen if rid in s.body and "melanoma" in s.body.lower()]


async def test_unencrypted_specialty_room(make_world):
    w = await make_world(policy=FAST, specialty_encrypted=False)
    rid = await flow.refer(w, await flow.consent(w))
    up = await flow.send_photo(w)
    await w.sp.wait_for(lambda s: s.room_id == w.derm_room and s.sender == w.bot_user.user_id
                        and "not end-to-end encrypted" in s.body, 20, "the refusal")
    note = await flow.bot_reply(w, up.mark, "could not post")
    assert rid in note.body
    await flow.media_gone(w, up.mxcs)
    assert flow.bot_images_in_room(w) == []
    await flow.nothing_left_on_server(w)
    assert not [s for s in w.sp.seen if "melanoma" in s.body.lower()]


async def test_unencrypted_direct_chat(make_world):
    w = await make_world(policy=FAST, dm_encrypted=False)
    ans = await w.gp_says("!consent patient=9434765919 by=patient purposes=care identifiable=no notes=yes")
    assert "not end-to-end encrypted" in ans.body and "C-" not in ans.body
    # a photo sent there anyway is taken out of the chat and off the server
    up = await flow.send_photo(w)
    reply = await flow.bot_reply(w, up.mark, "removed your upload")
    assert "not end-to-end encrypted" in reply.body
    await flow.upload_redacted(w, up)
    await flow.media_gone(w, up.mxcs)
    assert flow.bot_images_in_room(w) == []


async def test_withdrawal_after_posting(make_world):
    w = await make_world(policy={"grace_period_hours": 1, "max_lifetime_hours": 72})
    cid = await flow.consent(w)
    rid = await flow.refer(w, cid)
    up = await flow.send_photo(w)
    img, clean_mxc = await flow.clean_image(w)
    thread = img.thread_root
    mark = time.monotonic()
    ans = await w.gp_says(f"!withdraw {cid}", expect=cid)
    await w.sp.wait_for(lambda s: s.event_id == img.event_id and s.redacted, 20, "image redacted")
    await w.sp.wait_for(lambda s: s.room_id == w.derm_room and s.thread_root == thread
                        and s.ts >= mark and "removed" in s.body.lower(), 20, "the placeholder")
    await flow.media_gone(w, [clean_mxc, *up.mxcs])


async def test_expiry_by_max_lifetime(make_world):
    w = await make_world(policy={"grace_period_hours": 1, "max_lifetime_seconds": 8,
                                 "reminder_before_seconds": 5})
    rid = await flow.refer(w, await flow.consent(w))
    up = await flow.send_photo(w)
    img, clean_mxc = await flow.clean_image(w)
    await w.sp.wait_for(lambda s: s.event_id == img.event_id and s.redacted, 30, "expiry")
    t_redacted = time.monotonic()
    await flow.media_gone(w, [clean_mxc, *up.mxcs])
    texts = [s.body for s in w.gp.messages(w.dm_room, sender=w.bot_user.user_id)]
    texts += [s.body for s in w.sp.messages(w.derm_room, sender=w.bot_user.user_id)]
    assert any("remind" in t.lower() or "no opinion yet" in t.lower() for t in texts), texts
    assert any(rid in t and ("expire" in t.lower() or "removed" in t.lower()) for t in texts), texts


async def test_invite_from_outside_the_allow_list_is_declined(make_world, synapse, tmp_path):
    from bot.matrix.people import Person

    w = await make_world(policy=FAST)
    stranger_u = synapse.register(f"stranger{w.suffix}")
    # allowed_servers covers the local server; a user id not in it is what we need:
    # restrict by writing a config without allowed_servers
    text = w.config_path.read_text().replace(f'allowed_servers = ["{synapse.server_name}"]',
                                             "allowed_servers = []")
    w.config_path.write_text(text)
    await w.stop_bot()
    await w.start_bot()
    stranger = await Person.login(synapse.url, stranger_u.user_id, stranger_u.password,
                                  tmp_path / "stranger", "stranger")
    w.extra_people.append(stranger)
    stranger.start()
    room = await stranger.create_room("hello", [w.bot_user.user_id], direct=True)
    left = await stranger.wait_for(lambda s: s.room_id == room and s.type == "m.room.member"
                                   and s.sender == w.bot_user.user_id, 20, "the bot's answer")
    assert left.content.get("membership") == "leave"
    assert "allow-list" in (left.content.get("reason") or "")


async def test_status_command_after_a_finished_referral(make_world):
    import json
    import subprocess
    import sys

    w = await make_world(policy=FAST)
    rid = await flow.refer(w, await flow.consent(w))
    up = await flow.send_photo(w)
    img, mxc = await flow.clean_image(w)
    out = subprocess.run([sys.executable, "-m", "bot.cli", "status", "--config", str(w.config_path),
                          "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    live = json.loads(out.stdout)
    assert [i["referral"] for i in live["images_live_in_chat"]] == [rid]
    await w.sp.say(w.derm_room, "!opinion Benign.", thread_root=img.thread_root)
    await w.sp.wait_for(lambda s: s.event_id == img.event_id and s.redacted, 20, "removal")
    await flow.media_gone(w, [mxc, *up.mxcs])
    # the bot records the removal once the placeholder is posted: poll the status
    deadline = time.monotonic() + 20
    while True:
        out = subprocess.run([sys.executable, "-m", "bot.cli", "status", "--config",
                              str(w.config_path), "--json"], capture_output=True, text=True,
                             timeout=60)
        done = json.loads(out.stdout)
        if (not done["images_live_in_chat"] and done["media_on_server_not_yet_deleted"] == 0) \
                or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert done["images_live_in_chat"] == [] and done["overdue"] == []
    assert done["media_on_server_not_yet_deleted"] == 0
    assert "9434765919" not in out.stdout and "melanoma" not in out.stdout.lower()


async def test_export_files_the_record_and_names_no_server_path(make_world, tmp_path):
    """Issue 13: !export re-files through the configured sinks and says where it went in
    words ("filed to the practice document inbox"), never a server path; files are 0640."""
    import os

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    sink = f'[[filing.sink]]\nname = "inbox"\ntype = "folder"\nlabel = "the practice document inbox"\npath = "{inbox}"\n'
    w = await make_world(policy=FAST, extra_toml=sink)
    rid = await flow.refer(w, await flow.consent(w))
    up = await flow.send_photo(w)
    img, mxc = await flow.clean_image(w)
    await w.sp.say(w.derm_room, "!opinion Benign.", thread_root=img.thread_root)
    await flow.bot_reply(w, up.mark, "opinion on")
    ans = await w.gp_says(f"!export {rid}", expect="filed to")
    assert f"{rid} filed to the practice document inbox." in ans.body and str(inbox) not in ans.body
    pdfs = list(inbox.glob("*.pdf"))
    assert len(pdfs) == 2  # at the opinion, and again on !export
    assert all((os.stat(p).st_mode & 0o777) == 0o640 for p in inbox.iterdir())
