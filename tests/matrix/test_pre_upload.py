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


def _spy_uploads(w) -> list[str]:
    """Keys of the uploads the transport starts ahead of a post, in order."""
    transport = w.app.transport
    keys: list[str] = []
    real = transport._pre_upload

    def spy(key, *args, **kwargs):
        keys.append(key)
        return real(key, *args, **kwargs)

    transport._pre_upload = spy
    return keys


async def _early_mxc(w, up) -> str:
    """The mxc of the stripped photo uploaded before its check (ledger ``pre.early.<event>``)."""
    state = w.app.transport.state
    deadline = time.monotonic() + 20
    while not state.media_for_ref(f"pre.early.{up.event_id}", include_deleted=True):
        assert time.monotonic() < deadline, "the stripped photo was never uploaded"
        await asyncio.sleep(0.05)
    (mxc,) = state.media_for_ref(f"pre.early.{up.event_id}", include_deleted=True)
    return mxc


async def test_a_checked_photo_is_uploaded_while_its_check_runs(make_world):
    """Consent without identifiable images: the face/text check must finish before anything
    is posted, but the stripped JPEG is uploaded (encrypted) while it runs; the check finds
    nothing, so that very upload is what the post carries, with the thumbnail the sanitizer
    made from the check's own decode; no second upload of the photo is made."""
    w = await make_world()
    keys = _spy_uploads(w)
    await flow.refer(w, await flow.consent(w, identifiable="no"))
    up = await flow.send_photo(w, make_photo(1600, 1200))
    img, clean_mxc = await flow.clean_image(w)
    assert keys == [f"early.{up.event_id}"], keys  # started before the check; no other upload
    state = w.app.transport.state
    ledger = {mxc: ref for mxc, _kind, ref in state.live_media()}
    # taken by the image: filed under it, so a restart keeps it while its post is pending
    assert ledger[clean_mxc].startswith("pre.I-"), ledger
    thumb_mxc = img.content["info"]["thumbnail_file"]["url"]
    assert ledger[thumb_mxc] == ledger[clean_mxc]
    assert sorted(state.media_for_event(img.event_id)) == sorted([clean_mxc, thumb_mxc])
    assert state.media_for_ref(f"pre.early.{up.event_id}", include_deleted=True) == []
    assert img.content["info"]["thumbnail_info"]["w"] == 800
    # what the specialist sees is the stripped photo the check looked at
    assert await w.sp.download_image(img)


async def test_the_early_upload_of_a_photo_the_check_holds_is_deleted(make_world):
    """A face is found: the photo is held (its blurred copy waits for the GP), so the upload
    made while the check ran is never posted and is deleted from the server (404 on
    /_matrix/client/v1/media/download, the endpoint that tells deleted from live)."""
    from tests.sanitizer.imagegen import face_photo

    w = await make_world()
    keys = _spy_uploads(w)
    await flow.refer(w, await flow.consent(w, identifiable="no"))
    up = await flow.send_photo(w, face_photo())
    early_mxc = await _early_mxc(w, up)
    await flow.bot_reply(w, up.mark, "holding it")
    assert keys == [f"early.{up.event_id}"], keys
    # the blurred PREVIEW in the GP's chat stays until the GP decides; the early upload goes
    await flow.media_gone(w, [early_mxc])
    state = w.app.transport.state
    assert early_mxc in state.all_media() and early_mxc not in {m for m, _k, _r in state.live_media()}
    assert all(ref.startswith("preview.") for _m, _k, ref in state.live_media()), state.live_media()
    assert flow.bot_images_in_room(w) == []


async def test_the_early_upload_of_a_photo_the_check_refuses_is_deleted(make_world):
    """A JPEG whose structure is sound (so it is stripped and uploaded before the check) but
    whose pixels cannot be decoded: the check refuses it, the GP is told, and the early
    upload is deleted from the server."""
    w = await make_world()
    bad = bytearray(make_photo(1024, 768))
    sos = bad.index(b"\xff\xda")
    for c in range(bad[sos + 4]):  # every component names a Huffman table that is not there
        bad[sos + 6 + 2 * c] = 0x33
    await flow.refer(w, await flow.consent(w, identifiable="no"))
    up = await flow.send_photo(w, bytes(bad))
    early_mxc = await _early_mxc(w, up)
    await flow.bot_reply(w, up.mark, "damaged")
    await flow.nothing_left_on_server(w)
    assert early_mxc in w.app.transport.state.all_media()
    assert await nioclient.download_bytes(w.gp.client, early_mxc) is None
    assert flow.bot_images_in_room(w) == []


async def test_a_photo_under_a_covering_consent_is_uploaded_before_its_transaction(make_world):
    """No check: the stripped JPEG and its thumbnail are uploaded as soon as it is clean,
    before the intake transaction, and the post carries them."""
    w = await make_world()
    keys = _spy_uploads(w)
    await flow.refer(w, await flow.consent(w))
    up = await flow.send_photo(w, make_photo(1600, 1200))
    img, clean_mxc = await flow.clean_image(w)
    assert keys == [f"early.{up.event_id}"], keys
    thumb_mxc = img.content["info"]["thumbnail_file"]["url"]
    ledger = {mxc: ref for mxc, _kind, ref in w.app.transport.state.live_media()}
    assert ledger[clean_mxc].startswith("pre.I-") and ledger[thumb_mxc] == ledger[clean_mxc], ledger
