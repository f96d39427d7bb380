"""Previews on Telegram (issue 11 part 4), against the fake Bot API: Telegram chats are not
end-to-end encrypted, so a held photo's preview is words only unless the operator set
``preview_images = true`` (which needs ``allow_images = true``); either way the preview
message is deleted when the photo is posted or discarded."""
from __future__ import annotations

import hashlib

import pytest

from bot.telegram.config import TelegramConfigError, parse_telegram_config
from handlers.model import ImageState, PreviewState
from handlers.sanitizer import sanitize
from tests.handlers.helpers import face_jpeg
from tests.telegram.world import DERM_CHAT, GP_TG, World, raw_config


async def _referral(world, rid):
    async with world.store.read() as tx:
        return await tx.get_referral(rid)


async def _held(world) -> tuple[str, object]:
    cid = await world.consent("purposes=care identifiable=no")
    rid = await world.refer(cid)
    world.api.user_sends_photo(GP_TG, face_jpeg(), 512, 512)
    await world.step()
    (item,) = (await _referral(world, rid)).images
    assert item.state is ImageState.HELD
    return rid, item


def _gp_messages(world):
    return world.api.live_messages(GP_TG, from_bot=True)


async def test_without_the_second_opt_in_the_preview_is_words_only(fake_api, tmp_path):
    world = await World.create(fake_api, tmp_path, allow_images=True)
    try:
        rid, item = await _held(world)
        photos_to_gp = [c for c in fake_api.calls_to("sendPhoto") + fake_api.calls_to("sendDocument")
                        if c.get("chat_id") == str(GP_TG)]
        assert photos_to_gp == []  # no picture of the held photo went over Telegram
        (preview,) = [m for m in _gp_messages(world) if m.body.get("text", "").startswith("PREVIEW")]
        text = preview.body["text"]
        assert "not end-to-end encrypted" in text and "1 face" in text and f"!blur {rid}" in text
        ref = await _referral(world, rid)
        assert ref.images[0].preview is PreviewState.SHOWN and ref.images[0].preview_media_uri is None

        await world.gp_says(f"!discard {rid}")
        assert fake_api.messages[(GP_TG, preview.message_id)].deleted
        ref = await _referral(world, rid)
        assert ref.images[0].state is ImageState.DISCARDED and ref.images[0].preview is PreviewState.REMOVED
        async with world.store.read() as tx:
            assert await tx.vault_get(item.image_id) is None
    finally:
        await world.close()


async def test_with_preview_images_the_gp_sees_the_photo_and_blur_posts_the_same_bytes(fake_api, tmp_path):
    world = await World.create(fake_api, tmp_path, allow_images=True, preview_images=True)
    try:
        rid, item = await _held(world)
        (preview,) = [m for m in _gp_messages(world) if "photo" in m.body]
        assert preview.body["caption"].startswith("PREVIEW, not sent") and f"!blur {rid}" in preview.body["caption"]
        previewed = fake_api.files[preview.body["photo"][-1]["file_id"]].data
        assert sanitize(face_jpeg(), detect_faces=True).faces >= 1
        assert sanitize(previewed, detect_faces=True).faces == 0  # blurred past the detector
        assert world.images_in_group() == []

        await world.gp_says(f"!blur {rid}")
        (posted,) = world.images_in_group()
        sent = fake_api.files[posted.body["photo"][-1]["file_id"]].data
        assert hashlib.sha256(sent).hexdigest() == hashlib.sha256(previewed).hexdigest()
        assert fake_api.messages[(GP_TG, preview.message_id)].deleted  # posted: the preview goes
        assert fake_api.messages[(DERM_CHAT, posted.message_id)].deleted is False
        ref = await _referral(world, rid)
        assert ref.images[0].state is ImageState.POSTED and ref.images[0].preview is PreviewState.REMOVED
    finally:
        await world.close()


def test_preview_images_needs_allow_images(fake_api):
    raw = raw_config(fake_api, allow_images=False, preview_images=True)
    with pytest.raises(TelegramConfigError, match="preview_images = true needs allow_images = true"):
        parse_telegram_config(raw)
    raw = raw_config(fake_api, allow_images=True, preview_images="yes")
    with pytest.raises(TelegramConfigError, match="preview_images must be true or false"):
        parse_telegram_config(raw)
    assert parse_telegram_config(raw_config(fake_api, allow_images=True)).preview_images is False
