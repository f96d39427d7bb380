"""Image intake: the photo is cleaned before the write transaction (issue 9, finding 7), the
face/text check follows the consent and is re-checked inside the transaction, and the
replies say what was checked, never that nothing can be there (issue 11, parts 2 and 5)."""
from __future__ import annotations

import asyncio
import io
import re

from PIL import Image

from handlers import actions as A
from handlers.model import ImageState
from handlers.sanitizer import sanitize
from tests.sanitizer import evalset

from .helpers import CONSENT_OK, GP, GP2, Harness, face_jpeg, jpeg_with_metadata, reply_text
from .test_workflow import CONSENT_IDENT, open_referral


def _label_photo() -> bytes:
    im = evalset._label(evalset.skin(1600, 1200, 4), 0.03, 2)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


class GatedSanitizer:
    """An async sanitize (like the bot's worker pool) that waits until the test lets it go."""

    def __init__(self):
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.calls: list[dict] = []
        self.on_enter = None

    async def __call__(self, data, **kwargs):
        self.calls.append(kwargs)
        self.entered.set()
        if self.on_enter is not None:
            await self.on_enter()
        await self.release.wait()
        return await asyncio.to_thread(sanitize, data, **kwargs)


async def test_other_gps_are_not_kept_waiting_while_a_photo_is_cleaned():
    h = Harness()
    gate = GatedSanitizer()
    h.workflow = type(h.workflow)(h.store, h.policy, h.workflow.hasher, sanitize=gate)
    await open_referral(h)
    photo = asyncio.create_task(h.send_image(GP, jpeg_with_metadata()))
    await asyncio.wait_for(gate.entered.wait(), 5)
    # the photo is being cleaned: the store must be free for everyone else
    help_reply = await asyncio.wait_for(h.say(GP2, "!help"), 2)
    assert "!consent" in reply_text(help_reply)
    await asyncio.wait_for(h.tick(), 2)
    gate.release.set()
    acts = await asyncio.wait_for(photo, 30)
    assert "I checked it for faces and text and found none" in reply_text(acts)
    assert gate.calls == [{"detect_faces": True, "detect_text": True, "blur_faces": True, "blur_text": True,
                           "thumbnail": True}]


async def test_the_check_decision_is_made_again_inside_the_transaction():
    """Prepared under a consent that covers identifiable images; by the time the photo is
    saved, a referral under one that does not is the newest: the photo is checked now and
    the face is held, never posted unchecked."""
    h = Harness()
    gate = GatedSanitizer()
    h.workflow = type(h.workflow)(h.store, h.policy, h.workflow.hasher, sanitize=gate)
    await open_referral(h, CONSENT_IDENT)
    gate.release.set()
    await h.send_image(GP, jpeg_with_metadata())  # the covered referral has its photo...
    h.advance(hours=1)  # ...and is no longer waiting for one (issue 10: never a guess)
    gate.release.clear()
    plain = Harness(store=h.store, counter=100, now=h.now)  # the same store, the plain workflow, new event ids

    async def open_uncovered():
        gate.on_enter = None
        await open_referral(plain)
        gate.release.set()

    gate.on_enter = open_uncovered
    acts = await asyncio.wait_for(h.send_image(GP, face_jpeg()), 30)
    # the new referral is the only one waiting for a photo, so the photo goes there
    assert [c.get("detect_faces") for c in gate.calls] == [False, False, True]
    assert "found 1 face" in reply_text(acts) and "holding it" in reply_text(acts)
    assert not any(isinstance(a, A.PostImage) for a in acts)


async def test_text_on_the_photo_holds_it_and_blurs_it():
    h = Harness()
    _cid, rid = await open_referral(h)
    acts = await h.send_image(GP, _label_photo())
    text = reply_text(acts)
    assert "text" in text and "does not cover identifiable images" in text and f"!blur {rid}" in text
    assert "text on the photo (blurred)" not in text  # not metadata: not in "Removed: ..."
    (item,) = h.store.referral(rid).images
    assert item.state is ImageState.HELD and item.faces == 0
    kept = await h.store.vault_get(item.image_id)
    assert sanitize(kept, detect_text=True).text_regions == 0  # only the blurred copy is kept
    assert "exactly as previewed, with what I found blurred" in reply_text(await h.say(GP, f"!blur {rid}"))


async def test_replies_say_what_was_checked():
    h = Harness()
    await open_referral(h)
    text = reply_text(await h.send_image(GP, jpeg_with_metadata()))
    assert "I checked it for faces and text and found none (the check can miss some)" in text
    assert "no face" not in text.lower() and "cannot" not in text
    h2 = Harness()
    await open_referral(h2, CONSENT_IDENT)
    text = reply_text(await h2.send_image(GP, face_jpeg()))
    assert "so I did not check it for faces or text" in text
    consent = reply_text(await h2.say(GP, CONSENT_OK))
    assert "faces will be blurred" not in consent and "check each photo for faces and text" in consent


async def test_a_face_and_text_together_are_both_named():
    im = Image.open(io.BytesIO(face_jpeg())).convert("RGB")
    im = evalset._label(im, 0.04, 3)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=92)
    h = Harness()
    await open_referral(h)
    text = reply_text(await h.send_image(GP, buf.getvalue()))
    assert re.search(r"found 1 face and \d+ text areas?;", text), text


async def test_a_covering_consent_gets_the_photo_unblurred_even_if_another_referral_needed_the_check():
    """The GP has two open referrals: the older under a consent that does not cover
    identifiable images (so the photo is checked and blurred before the transaction), the
    newer (where the photo goes) under one that does. The specialist gets it unblurred."""
    h = Harness()
    gate = GatedSanitizer()
    gate.release.set()
    h.workflow = type(h.workflow)(h.store, h.policy, h.workflow.hasher, sanitize=gate)
    await open_referral(h)
    h.advance(minutes=1)
    _cid, rid = await open_referral(h, CONSENT_IDENT)
    # both are waiting for photos: the GP names the newer one (issue 10: never a guess)
    acts = await h.send_image(GP, face_jpeg(), caption=f"{rid} face and lesion")
    assert [c.get("blur_faces", False) for c in gate.calls] == [True, False]
    assert "covers identifiable" in reply_text(acts)
    (item,) = h.store.referral(rid).images
    assert item.state is not ImageState.HELD and not item.faces_blurred
    kept = await h.store.vault_get(item.image_id)
    assert kept == sanitize(face_jpeg(), detect_faces=False).data  # the lossless clean copy, face intact
