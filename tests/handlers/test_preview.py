"""Preview before sending (issue 11 part 4): a photo held for a face or text shows the GP
its blurred copy, marked PREVIEW, in the direct chat; ``!blur`` posts that very copy and
``!discard`` destroys it; the preview leaves the chat whatever moves the photo on (posted,
discarded, the held time over, the referral closed, consent withdrawn)."""
from __future__ import annotations

import hashlib
import io
import re
from datetime import timedelta

import numpy as np
from PIL import Image

from handlers import actions as A
from handlers import events as E
from handlers.model import ImageState, PreviewState, ReferralState
from handlers.sanitizer import _detect, sanitize
from tests.sanitizer import evalset

from .helpers import DERM, GP, Harness, face_jpeg, jpeg_with_metadata, policy, reply_text
from .test_workflow import open_referral


def _of(actions, kind):
    return [a for a in actions if isinstance(a, kind)]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _faces_seen(jpeg: bytes) -> int:
    """What the face detector finds in the picture as it is displayed (EXIF orientation applied)."""
    return sanitize(jpeg, detect_faces=True).faces


async def _held(h: Harness, data: bytes | None = None):
    """A referral with one photo held for a face; returns (consent id, referral id, item, SendPreview)."""
    cid, rid = await open_referral(h)
    acts = await h.send_image(GP, data if data is not None else face_jpeg())
    (item,) = h.store.referral(rid).images
    assert item.state is ImageState.HELD
    (preview,) = _of(acts, A.SendPreview)
    return cid, rid, item, preview


async def test_a_held_photo_sends_its_blurred_copy_as_a_preview_to_the_gp():
    h = Harness()
    _cid, rid, item, preview = await _held(h)
    # to the GP, about this image, before the reply that tells them to look at it
    assert preview.user_id == GP.user_id and preview.referral_id == rid and preview.image_id == item.image_id
    assert preview.filename == item.filename and preview.media_type == "image/jpeg"
    assert preview.text.startswith("PREVIEW")
    assert "checked for faces and text" in preview.text
    found = re.search(r"(\d+) faces? and (\d+) text areas? blurred|(\d+) faces? blurred", preview.text)
    assert found, preview.text
    assert f"!blur {rid} posts exactly this image" in preview.text and f"!discard {rid} destroys it" in preview.text
    assert preview.text_without_image.startswith("PREVIEW") and "not end-to-end encrypted" in preview.text_without_image
    assert item.held_until == h.now + h.policy.held_photo_ttl and item.preview is PreviewState.REQUESTED
    # the reply points at the preview, says what was checked and found, and until when it waits
    text = reply_text(await h.say(GP, f"!status {rid}"))
    assert "preview sent" in text
    # the previewed bytes are the held (blurred) vault copy, and the detector no longer finds the face
    previewed = await h.store.vault_get(preview.image_id)
    assert previewed is not None and _faces_seen(face_jpeg()) >= 1 and _faces_seen(previewed) == 0
    await h.drain()
    (item,) = h.store.referral(rid).images
    assert item.preview is PreviewState.SHOWN and item.preview_ref in h.previews
    sent = [e for e in h.store.audit if e.action == "image.preview_sent"]
    assert sent and sent[0].details["members"] == [GP.user_id] and sent[0].details["kind"] == "image"
    assert h.chat == {}  # nothing reached the specialists


async def test_the_reply_says_what_was_checked_found_and_until_when_it_waits():
    h = Harness()
    cid, rid = await open_referral(h)
    text = reply_text(await h.send_image(GP, face_jpeg()))
    assert re.search(r"I checked R-\w+-1\.jpg for faces and text and found 1 face", text), text
    assert f"consent {cid} does not cover identifiable images" in text
    assert "Look at the PREVIEW" in text and f"!blur {rid}" in text and f"!discard {rid}" in text
    assert "If you do neither, I destroy it at Tue 3 Mar 09:00 GMT." in text  # T0 + 24 h, local time


async def test_blur_posts_exactly_the_previewed_bytes_then_removes_the_preview():
    h = Harness()
    _cid, rid, item, preview = await _held(h)
    await h.drain()
    previewed = await h.store.vault_get(preview.image_id)
    acts = await h.say(GP, f"!blur {rid}")
    assert "exactly as previewed" in reply_text(acts)
    (item,) = h.store.referral(rid).images
    assert item.preview is PreviewState.SHOWN  # kept while the photo is on its way
    done = await h.drain()
    (post,) = _of(done, A.PostImage)
    assert post.image_id == preview.image_id  # one vault item: what was previewed is what is posted
    assert _sha(await h.store.vault_get(post.image_id)) == _sha(previewed)
    assert list(h.chat.values()) == [preview.image_id]
    (remove,) = _of(done, A.RemovePreview)
    assert remove.preview_ref == item.preview_ref and remove.media_uri == item.preview_media_uri
    assert h.previews == {}
    (item,) = h.store.referral(rid).images
    assert item.state is ImageState.POSTED and item.preview is PreviewState.REMOVED
    assert [e.details["reason"] for e in h.store.audit if e.action == "image.preview_removal_requested"] == ["posted"]


async def test_discard_destroys_the_held_photo_and_its_preview():
    h = Harness()
    _cid, rid, item, preview = await _held(h)
    await h.drain()
    assert h.previews
    acts = await h.say(GP, f"!discard {rid}")
    assert "Destroyed the held photo" in reply_text(acts) and "nothing was sent" in reply_text(acts)
    assert item.image_id not in h.store.image_vault_ids()  # vault copy shredded in the same transaction
    (remove,) = _of(acts, A.RemovePreview)
    assert remove.image_id == item.image_id and remove.preview_ref
    await h.drain()
    assert h.previews == {} and h.chat == {}
    (item,) = h.store.referral(rid).images
    assert item.state is ImageState.DISCARDED and item.preview is PreviewState.REMOVED


async def test_an_undecided_held_photo_is_destroyed_with_its_preview_and_the_gp_told():
    h = Harness()
    _cid, rid, item, _preview = await _held(h)
    await h.drain()
    h.advance(hours=23, minutes=59)
    assert not _of(await h.tick(), A.RemovePreview)
    h.advance(minutes=1)
    acts = await h.tick()
    (note,) = [a for a in _of(acts, A.Notify) if a.user_id == GP.user_id]
    assert note.mentions == (GP.user_id,) and "I destroyed the held photo" in note.text
    assert "and its preview" in note.text and "nothing was sent" in note.text and f"{rid} is still open" in note.text
    assert _of(acts, A.RemovePreview)
    assert item.image_id not in h.store.image_vault_ids()
    await h.drain()
    ref = h.store.referral(rid)
    assert ref.is_open and ref.images[0].state is ImageState.DISCARDED and h.previews == {}
    assert [e.details["rule"] for e in h.store.audit if e.action == "image.discarded"] == ["held_expired"]
    assert not await h.tick()  # done once


async def test_the_held_time_is_configurable():
    h = Harness(policy=policy(held_photo_ttl=timedelta(minutes=30)))
    _cid, rid, item, _preview = await _held(h)
    assert item.held_until == h.now + timedelta(minutes=30)
    h.advance(minutes=30)
    await h.tick()
    assert h.store.referral(rid).images[0].state is ImageState.DISCARDED


async def test_withdrawal_removes_the_preview():
    h = Harness()
    cid, rid, item, _preview = await _held(h)
    await h.drain()
    acts = await h.say(GP, f"!withdraw {cid}")
    assert _of(acts, A.RemovePreview) and item.image_id not in h.store.image_vault_ids()
    await h.drain()
    assert h.previews == {} and h.store.referral(rid).images[0].preview is PreviewState.REMOVED


async def test_the_referral_expiring_or_closing_removes_the_preview():
    h = Harness()
    _cid, rid, _item, _preview = await _held(h)
    await h.drain()
    h.advance(days=7)  # past the referral's lifetime (and the held time)
    await h.tick()
    await h.drain()
    assert h.store.referral(rid).state is ReferralState.CLOSED and h.previews == {}

    h2 = Harness()
    _cid, rid2, _item, _preview = await _held(h2)
    await h2.drain()
    await h2.say(GP, f"!cancel {rid2}")
    await h2.drain()
    assert h2.previews == {} and h2.store.referral(rid2).images[0].preview is PreviewState.REMOVED


async def test_the_opinion_on_other_photos_removes_a_held_photos_preview():
    h = Harness()
    _cid, rid = await open_referral(h)
    await h.send_image(GP, jpeg_with_metadata())
    await h.send_image(GP, face_jpeg())
    await h.drain()
    assert len(h.previews) == 1 and len(h.chat) == 1
    await h.in_thread(DERM, rid, "!opinion Benign.")
    await h.drain()
    assert h.previews == {}
    held = [i for i in h.store.referral(rid).images if i.faces]
    assert held[0].state is ImageState.DISCARDED and held[0].preview is PreviewState.REMOVED


async def test_blur_before_the_preview_went_out_removes_it_as_soon_as_it_is_sent():
    """The GP confirms before the transport sent the preview, and the post overtakes it (the
    Matrix transport runs posts first): the preview is taken out as soon as it lands."""
    h = Harness()
    _cid, rid = await open_referral(h)
    await h.drain()  # the thread root exists
    await h.send_image(GP, face_jpeg())
    await h.say(GP, f"!blur {rid}")
    pending = await h.store.pending_actions()
    order = sorted(pending, key=lambda e: not isinstance(e.action, A.PostImage))
    assert isinstance(order[0].action, A.PostImage)
    assert any(isinstance(e.action, A.SendPreview) for e in order[1:])
    for entry in order:  # post first, then the preview, like the Matrix transport
        feedback = h._execute(entry.action)
        if feedback is not None:
            out = await h.workflow.handle(feedback)
            if isinstance(entry.action, A.SendPreview):
                (remove,) = _of(out, A.RemovePreview)  # landed after the post: out at once
                assert remove.preview_ref in h.previews
        await h.store.complete_action(entry.outbox_id)
    await h.drain()
    assert h.previews == {}
    (item,) = h.store.referral(rid).images
    assert item.state is ImageState.POSTED and item.preview is PreviewState.REMOVED


async def test_a_preview_that_cannot_be_sent_is_swept_and_the_gp_told_the_photo_is_still_held():
    h = Harness()
    h.fail_previews = "I could not open our direct chat."
    _cid, rid, item, _preview = await _held(h)
    done = await h.drain()
    (sweep,) = _of(done, A.RemovePreview)
    assert sweep.preview_ref == ""  # nothing was shown; whatever was uploaded is deleted
    notes = [a.text for a in _of(done, A.Notify)]
    assert any("could not show you the preview" in t and "still held" in t and f"!blur {rid}" in t for t in notes)
    (item,) = h.store.referral(rid).images
    assert item.state is ImageState.HELD and item.preview is PreviewState.REMOVED
    h.fail_previews = None
    await h.say(GP, f"!blur {rid}")  # the GP can still send it
    await h.drain()
    assert list(h.chat.values()) == [item.image_id]


async def test_text_on_the_photo_is_named_in_the_preview():
    im = Image.open(io.BytesIO(jpeg_with_metadata(640, 480))).convert("RGB")
    im = evalset._label(im, 0.06, 7)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=92)
    h = Harness()
    _cid, rid, item, preview = await _held(h, buf.getvalue())
    assert item.faces == 0 and item.text_regions >= 1
    assert re.search(r"checked for faces and text: \d+ text areas? blurred\.", preview.text), preview.text
    blurred = await h.store.vault_get(item.image_id)
    picture = np.asarray(Image.open(io.BytesIO(blurred)).convert("RGB"))
    assert _detect.text(picture) == []  # what the GP previews shows no text the detector can find


async def test_no_preview_when_nothing_is_found_or_the_consent_covers_identifiable_images():
    from .test_workflow import CONSENT_IDENT

    h = Harness()
    await open_referral(h)
    acts = await h.send_image(GP, jpeg_with_metadata())
    assert not _of(acts, A.SendPreview)
    assert "I checked it for faces and text and found none (the check can miss some)" in reply_text(acts)
    h2 = Harness()
    await open_referral(h2, CONSENT_IDENT)
    acts = await h2.send_image(GP, face_jpeg())
    assert not _of(acts, A.SendPreview)
    assert "so I did not check it for faces or text" in reply_text(acts)


async def test_preview_feedback_is_idempotent_and_survives_the_store():
    """The same PreviewSent twice changes nothing; the preview state round-trips the store."""
    from handlers.model import Referral

    h = Harness()
    _cid, rid, item, preview = await _held(h)
    ev = E.PreviewSent("done:x", h.now, rid, item.image_id, "!dm/$p", "mxc://hs/p")
    await h.workflow.handle(ev)
    again = E.PreviewSent("done:y", h.now, rid, item.image_id, "!dm/$q", "mxc://hs/q")
    assert await h.workflow.handle(again) == []
    ref = h.store.referral(rid)
    assert ref.images[0].preview_ref == "!dm/$p"
    assert Referral.from_dict(ref.to_dict()) == ref
    assert A.action_from_dict(preview.to_dict()) == preview
    assert "text=<" in repr(preview) and "PREVIEW" not in repr(preview)  # free text stays out of logs
