"""Step one: a real Synapse, real nio E2EE clients, an encrypted image GP -> bot."""
from __future__ import annotations

import io

import pytest
from PIL import Image

from bot.matrix import nioclient
from bot.matrix.people import Person

pytestmark = pytest.mark.synapse


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 150, 120)).save(buf, "JPEG")
    return buf.getvalue()


async def test_encrypted_image_gp_to_bot(synapse, tmp_path, unique):
    bot_u = synapse.register(f"bot{unique}", admin=True)
    gp_u = synapse.register(f"gp{unique}")
    sp_u = synapse.register(f"sp{unique}")
    bot = await Person.login(synapse.url, bot_u.user_id, bot_u.password, tmp_path / "bot", "bot")
    gp = await Person.login(synapse.url, gp_u.user_id, gp_u.password, tmp_path / "gp", "gp")
    sp = await Person.login(synapse.url, sp_u.user_id, sp_u.password, tmp_path / "sp", "sp")
    for p in (bot, gp, sp):
        p.start()
    try:
        dm = await gp.create_room("GP and bot", [bot.user_id], encrypted=True, direct=True)
        room = await bot.create_room("Dermatology advice", [sp.user_id], encrypted=True)
        await gp.wait_for(lambda s: s.room_id == dm and s.type == "m.room.member"
                          and s.sender == bot.user_id, what="the bot joining")
        await sp.wait_for(lambda s: s.room_id == room and s.type == "m.room.member"
                          and s.sender == sp.user_id, what="joining the room")
        assert gp.client.rooms[dm].encrypted and bot.client.rooms[room].encrypted

        photo = _jpeg()
        event_id, mxc = await gp.send_image(dm, photo, "IMG_0001.jpg")
        seen = await bot.wait_for(lambda s: s.event_id == event_id and s.msgtype == "m.image",
                                  what="the GP's image, decrypted")
        assert "url" not in seen.content and seen.content["file"]["url"] == mxc
        assert await bot.download_image(seen) == photo
        # the server only ever held ciphertext
        raw = await nioclient.download_bytes(bot.client, mxc)
        assert raw is not None and raw != photo and photo[:64] not in raw

        # bot -> specialist in the encrypted room, in a thread
        root = await bot.say(room, "Referral R-TEST: question")
        await bot.say(room, "in thread", thread_root=root)
        got = await sp.wait_for(lambda s: s.room_id == room and s.body == "in thread",
                                what="the threaded message")
        assert got.thread_root == root
    finally:
        for p in (bot, gp, sp):
            await p.stop()
