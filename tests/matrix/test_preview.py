"""Preview before sending (issue 11 part 4) on a real Synapse with real E2EE clients.

A photo with a face, under a consent that does not cover identifiable images: the GP gets
the blurred copy as an encrypted image marked PREVIEW in the direct chat, decrypts it, and
the face detector finds nothing in it. ``!blur`` posts exactly those bytes into the thread
(the specialist's decrypted copy has the same SHA-256); ``!discard`` destroys it, and both
the GP's upload and the preview answer 404 on the authenticated media endpoint."""
from __future__ import annotations

import asyncio
import hashlib
import io
import urllib.parse
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from bot.matrix.photo import make_photo
from handlers.sanitizer import sanitize
from tests.matrix import flow

pytestmark = pytest.mark.synapse

FAST = {"grace_period_seconds": 2, "max_lifetime_hours": 72, "reminder_before_hours": 12}
PORTRAIT = Path(__file__).resolve().parent.parent / "sanitizer" / "data" / "astronaut.jpg"


def face_photo() -> bytes:
    """A phone-sized photo (GPS and all) with a face in it: the public-domain portrait
    pasted onto the generated skin photo, as when a patient's face is in the frame."""
    base = make_photo(1600, 1200, seed=11)
    im = Image.open(io.BytesIO(base))
    exif = im.getexif()
    im = im.convert("RGB")
    im.paste(Image.open(PORTRAIT).convert("RGB").resize((520, 520)), (60, 60))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90, exif=exif)
    return buf.getvalue()


def faces_found(jpeg: bytes) -> int:
    return sanitize(jpeg, detect_faces=True).faces


async def download_status(w, mxc: str) -> int:
    """HTTP status of the authenticated download (the only one that proves deletion)."""
    server, media_id = urllib.parse.urlparse(mxc).netloc, urllib.parse.urlparse(mxc).path.strip("/")
    url = f"{w.hs.url}/_matrix/client/v1/media/download/{server}/{media_id}"
    headers = {"Authorization": f"Bearer {w.gp.client.access_token}"}
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers=headers) as resp:
            return resp.status


async def held_with_preview(w, photo: bytes):
    """Consent without identifiable images, a referral, the photo; returns (rid, upload,
    the PREVIEW event as the GP's client decrypted it, its bytes)."""
    cid = await flow.consent(w, identifiable="no")
    rid = await flow.refer(w, cid)
    up = await flow.send_photo(w, photo)
    preview = await w.gp.wait_for(
        lambda s: s.room_id == w.dm_room and s.sender == w.bot_user.user_id and s.msgtype == "m.image"
        and s.body.startswith("PREVIEW") and s.ts >= up.mark, 30, "the PREVIEW image")
    reply = await flow.bot_reply(w, up.mark, "look at the preview")
    assert "found 1 face" in reply.body and cid in reply.body and f"!blur {rid}" in reply.body
    data = await w.gp.download_image(preview)
    assert data is not None
    return rid, up, preview, data


async def test_the_gp_previews_the_blurred_photo_and_blur_posts_exactly_those_bytes(make_world):
    w = await make_world(policy=FAST)
    photo = face_photo()
    assert faces_found(photo) >= 1  # the face is there to be found
    rid, up, preview, previewed = await held_with_preview(w, photo)

    # an encrypted image in the encrypted direct chat, named after the referral, captioned
    assert preview.encrypted and "url" not in preview.content and preview.content["file"]["url"].startswith("mxc://")
    assert preview.content["filename"] == f"{rid}-1.jpg"
    assert "checked for faces and text: 1 face" in preview.body and "blurred" in preview.body
    assert f"!blur {rid} posts exactly this image" in preview.body and f"!discard {rid} destroys it" in preview.body
    assert preview.content["m.mentions"] == {"user_ids": [w.gp.user_id]}
    thumb = (preview.content["info"].get("thumbnail_file") or {}).get("url")
    assert thumb, "a phone-sized preview carries its own encrypted thumbnail"
    preview_mxc = preview.content["file"]["url"]
    # blurred: the face detector no longer finds the face; no metadata came back
    assert faces_found(previewed) == 0
    assert not [k for k in flow.exif_tags(previewed, w.root) if k.startswith(("GPS:", "ExifIFD:"))]
    assert flow.bot_images_in_room(w) == []  # nothing reached the specialists
    await flow.upload_redacted(w, up)

    ans = await w.gp_says(f"!blur {rid}", expect="exactly as previewed")
    assert rid in ans.body
    img, clean_mxc = await flow.clean_image(w)
    posted = await w.sp.download_image(img)
    assert hashlib.sha256(posted).hexdigest() == hashlib.sha256(previewed).hexdigest()
    assert len(flow.bot_images_in_room(w)) == 1
    # posted: the preview leaves the GP's chat and the server
    await w.gp.wait_for(lambda s: s.event_id == preview.event_id and s.redacted, 20, "the preview redacted")
    await flow.media_gone(w, [preview_mxc, thumb])
    assert await download_status(w, preview_mxc) == 404 and await download_status(w, thumb) == 404
    assert await download_status(w, clean_mxc) == 200  # the thread's own copy stays until the opinion


async def test_discard_destroys_the_held_photo_and_its_preview_on_the_server(make_world):
    w = await make_world(policy=FAST)
    rid, up, preview, _previewed = await held_with_preview(w, face_photo())
    preview_media = [preview.content["file"]["url"], preview.content["info"]["thumbnail_file"]["url"]]
    await flow.upload_redacted(w, up)

    await w.gp_says(f"!discard {rid}", expect="nothing was sent")
    await w.gp.wait_for(lambda s: s.event_id == preview.event_id and s.redacted, 20, "the preview redacted")
    for mxc in [*up.mxcs, *preview_media]:  # the GP's upload and the preview, image and thumbnail
        for _ in range(50):
            status = await download_status(w, mxc)
            if status == 404:
                break
            await asyncio.sleep(0.3)
        assert status == 404, mxc
    assert flow.bot_images_in_room(w) == []
    # the vault copy is crypto-shredded: nothing left to post
    ans = await w.gp_says(f"!blur {rid}", expect="no held image")
    assert rid in ans.body
    await flow.nothing_left_on_server(w)
