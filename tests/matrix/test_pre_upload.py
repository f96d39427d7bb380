"""The clean image is encrypted and uploaded while the workflow saves it (before the
outbox posts it); an upload that is never posted is deleted from the server, also
when the bot stopped before it could tidy up."""
from __future__ import annotations

import asyncio
import time

import pytest

from bot.matrix import nioclient
from bot.matrix.photo import make_photo
from handlers.workflow import ClearedImage
from tests.matrix import flow

pytestmark = pytest.mark.synapse


async def test_the_posted_image_is_the_upload_made_while_saving(make_world):
    w = await make_world()
    await flow.refer(w, await flow.consent(w))
    await flow.send_photo(w)
    img, clean_mxc = await flow.clean_image(w)
    ledger = {mxc: ref for mxc, _kind, ref in w.app.transport.state.live_media()}
    # uploaded by the workflow's hook (ledger reference "pre.<image id>"), not re-read
    # from the vault and uploaded again by the post
    assert ledger[clean_mxc].startswith("pre.I-"), ledger
    assert w.app.transport.state.media_for_event(img.event_id) == [clean_mxc]


async def test_an_upload_that_is_never_posted_is_deleted(make_world):
    w = await make_world()
    state = w.app.transport.state
    # what the workflow reports for an image whose transaction then rolls back: no
    # PostImage will ever take it
    w.app.workflow.on_image_cleared(ClearedImage("R-NONE", "I-UNUSED", "R-NONE-1.jpg", "image/jpeg",
                                                 make_photo(320, 240)))
    deadline = time.monotonic() + 20
    while not state.media_for_ref("pre.I-UNUSED", include_deleted=True):
        assert time.monotonic() < deadline, "the cleared image was never uploaded"
        await asyncio.sleep(0.1)
    (mxc,) = state.media_for_ref("pre.I-UNUSED", include_deleted=True)
    await flow.nothing_left_on_server(w)
    assert mxc in state.all_media()


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
