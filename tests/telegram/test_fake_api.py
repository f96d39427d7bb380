"""The fake Bot API answers python-telegram-bot v22 the way Telegram does (for what we use)."""
from __future__ import annotations

import io

import pytest
from PIL import Image
from telegram import Bot
from telegram.error import BadRequest, InvalidToken


def _jpeg(w=32, h=24) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 120, 90)).save(buf, "JPEG")
    return buf.getvalue()


def _bot(api, token=None) -> Bot:
    return Bot(token or api.token, base_url=api.base_url, base_file_url=api.base_file_url)


async def test_ptb_round_trip_through_every_method(fake_api):
    fake_api.add_user(42, "Gina")
    fake_api.add_forum(-100777, "Dermatology advice")
    async with _bot(fake_api) as bot:
        assert bot.username == "referral_test_bot"
        m = await bot.send_message(42, "hello")
        assert m.message_id == 1 and m.chat.id == 42
        topic = await bot.create_forum_topic(-100777, "R-ABC123")
        root = await bot.send_message(-100777, "question", message_thread_id=topic.message_thread_id)
        assert root.message_thread_id == topic.message_thread_id
        photo = await bot.send_photo(-100777, _jpeg(), message_thread_id=topic.message_thread_id,
                                     filename="R-ABC123-1.jpg")
        assert photo.photo[-1].width == 32
        doc = await bot.send_document(42, b"%PDF-1.4", filename="x.pdf")
        assert doc.document.file_size == 8
        assert await bot.delete_message(-100777, photo.message_id) is True
        with pytest.raises(BadRequest, match="not found"):
            await bot.delete_message(-100777, photo.message_id)
        # the user sends a photo: getFile + download give the bytes back
        data = _jpeg(64, 48)
        fake_api.user_sends_photo(42, data)
        updates = await bot.get_updates(offset=0, timeout=1)
        assert len(updates) == 1
        f = await bot.get_file(updates[0].message.photo[-1].file_id)
        assert bytes(await f.download_as_bytearray()) == data
        # confirmed updates are not served again
        assert await bot.get_updates(offset=updates[0].update_id + 1, timeout=0) == ()
    methods = [name for name, _ in fake_api.calls]
    for needed in ("getMe", "sendMessage", "createForumTopic", "sendPhoto", "sendDocument",
                   "deleteMessage", "getUpdates", "getFile", "<download>"):
        assert needed in methods
    # file parameters are recorded by size, never as bytes
    assert fake_api.calls_to("sendPhoto")[0]["photo"]["size"] == len(_jpeg())


async def test_delete_window_and_forum_rules(fake_api):
    fake_api.add_user(42, "Gina")
    fake_api.add_forum(-100888, "Not a forum", is_forum=False)
    clock = [1_000_000.0]
    fake_api.now = lambda: clock[0]
    async with _bot(fake_api) as bot:
        m = await bot.send_message(42, "old")
        clock[0] += 48 * 3600
        with pytest.raises(BadRequest, match="can't be deleted"):
            await bot.delete_message(42, m.message_id)
        with pytest.raises(BadRequest, match="not a forum"):
            await bot.create_forum_topic(-100888, "R-1")
        with pytest.raises(BadRequest, match="(?i)chat not found"):
            await bot.send_message(999, "x")
    with pytest.raises(InvalidToken):
        async with _bot(fake_api, token="1:wrong") as bot:
            pass
