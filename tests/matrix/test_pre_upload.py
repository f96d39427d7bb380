"""The clean image is encrypted and uploaded while the workflow saves it (before the
outbox posts it); an upload that is never posted is deleted from the server, also
when the bot stopped before it could tidy up."""
from __future__ import annotations

import asyncio
import time

import pytest

from bot.matrix import nioclient
from bot.matrix.photo import make_photo
from handlers import actions as A
from handlers.workflow import ClearedImage
from tests.matrix import flow

pytestmark = pytest.mark.synapse


async def test_the_posted_image_is_the_upload_made_while_saving(make_world):
    w = await make_world()
    await flow.refer(w, await flow.consent(w))
    await flow.send_photo(w)
    img, clean_mxc = await flow.clean_image(w)
    thumb_mxc = img.content["info"]["thumbnail_file"]["url"]
    ledger = {mxc: ref for mxc, _kind, ref in w.app.transport.state.live_media()}
    # uploaded by the workflow's hook (ledger reference "pre.<image id>"), not re-read
    # from the vault and uploaded again by the post; its thumbnail was made alongside
    assert ledger[clean_mxc].startswith("pre.I-"), ledger
    assert ledger[thumb_mxc] == ledger[clean_mxc]
    assert sorted(w.app.transport.state.media_for_event(img.event_id)) == sorted([clean_mxc,
                                                                                  thumb_mxc])


async def test_an_upload_that_is_never_posted_is_deleted(make_world):
    w = await make_world()
    state = w.app.transport.state
    # what the workflow reports for an image whose transaction then rolls back: no
    # PostImage will ever take it
    w.app.workflow.on_image_cleared(ClearedImage("R-NONE", "I-UNUSED", "R-NONE-1.jpg", "image/jpeg",
                                                 make_photo(1024, 768)))
    deadline = time.monotonic() + 20
    while len(state.media_for_ref("pre.I-UNUSED", include_deleted=True)) < 2:
        assert time.monotonic() < deadline, "the cleared image and its thumbnail were never uploaded"
        await asyncio.sleep(0.1)
    uploaded = state.media_for_ref("pre.I-UNUSED", include_deleted=True)   # image + thumbnail
    await flow.nothing_left_on_server(w)
    assert set(uploaded) <= set(state.all_media())


async def test_uploads_left_from_before_a_stop_are_deleted_at_start(make_world):
    w = await make_world()
    up = await nioclient.upload_encrypted(w.app.client, make_photo(320, 240), "x.jpg", "image/jpeg")
    # as if the bot had stopped between uploading a cleared image and posting it
    w.app.transport.state.record_media(up.mxc, "posted", "pre.I-ORPHAN")
    await w.stop_bot()
    await w.start_bot()
    await w.wait_bot_joined()
    await flow.media_gone(w, [up.mxc])
    assert w.app.transport.state.unposted_media("pre.") == []


async def test_a_post_run_again_keeps_the_image_already_posted(make_world):
    w = await make_world(policy={"grace_period_seconds": 2, "max_lifetime_hours": 72})
    done: list = []
    w.app.transport.on_action_done = lambda action, outcome: done.append(action)
    await flow.refer(w, await flow.consent(w))
    await flow.send_photo(w)
    img, clean_mxc = await flow.clean_image(w)
    deadline = time.monotonic() + 10
    while not any(isinstance(a, A.PostImage) for a in done):
        assert time.monotonic() < deadline, "PostImage never completed"
        await asyncio.sleep(0.1)
    post = next(a for a in done if isinstance(a, A.PostImage))
    # the same PostImage again, as after a crash between sending the event and recording
    # it: the early upload died with the process, so the post uploads from the vault
    # again, and Synapse answers the reused transaction id with the first event
    outcome = await w.app.transport._execute(post)
    assert outcome.room_event_id == img.event_id
    await asyncio.sleep(1)
    assert len(flow.bot_images_in_room(w)) == 1
    # what the specialist sees still downloads: the first upload was not deleted
    assert await w.sp.download_image(img)
    # and after the opinion every upload of it, the second one too, is gone
    await w.sp.say(w.derm_room, "!opinion Benign.", thread_root=img.thread_root)
    await w.sp.wait_for(lambda s: s.event_id == img.event_id and s.redacted, 20, "the removal")
    await flow.nothing_left_on_server(w)
    assert outcome.media_uri != clean_mxc and outcome.media_uri in w.app.transport.state.all_media()


async def test_an_upload_whose_post_is_still_pending_survives_the_start(make_world):
    from bot.app import open_store
    from bot.config import load_config

    w = await make_world()
    up = await nioclient.upload_encrypted(w.app.client, make_photo(320, 240), "x.jpg", "image/jpeg")
    # as if the bot died after sending the post of a pre-uploaded image and before
    # recording it: the ledger has the upload without an event, the PostImage is pending
    w.app.transport.state.record_media(up.mxc, "posted", "pre.I-PENDING")
    await w.stop_bot()
    store, _ = await open_store(load_config(w.config_path))
    try:
        async with store.transaction() as tx:
            await tx.enqueue([A.PostImage(referral_id="R-GONE", specialty="dermatology",
                                          thread_root_event_id="$nothing", image_id="I-PENDING",
                                          filename="R-GONE-1.jpg", media_type="image/jpeg",
                                          key="test/pending")])
    finally:
        await store.close()
    await w.start_bot()
    await w.wait_bot_joined()
    await asyncio.sleep(1.5)
    # not swept at start: the event the pending post re-runs into may carry it
    assert await nioclient.download_bytes(w.gp.client, up.mxc) is not None
    assert (up.mxc, "pre.I-PENDING") in w.app.transport.state.unposted_media("pre.")
