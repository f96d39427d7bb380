"""The whole Telegram flow with the PostgreSQL store underneath (real server, real workflow)."""
from __future__ import annotations

from datetime import timedelta

from bot.matrix.photo import make_photo
from handlers.model import ReferralState
from storage.postgres_store import PostgresStore
from tests.telegram.conftest import fake_api  # noqa: F401
from tests.telegram.world import DERM_CHAT, DERM_TG, GP_TG, World


async def test_full_flow_on_postgres(fake_api, pg_dsn, tmp_path):  # noqa: F811
    async def opener(keys):
        return await PostgresStore.open(pg_dsn, keys)

    world = await World.create(fake_api, tmp_path, allow_images=True, store_opener=opener)
    try:
        cid = await world.consent()
        rid = await world.refer(cid)
        fake_api.user_sends_photo(GP_TG, make_photo(640, 480))
        await world.step()
        assert len(world.images_in_group()) == 1
        topic = world.topic_of(rid)
        fake_api.user_sends_text(DERM_TG, "!opinion Tinea; terbinafine.", chat_id=DERM_CHAT, thread_id=topic)
        await world.step()
        assert any("terbinafine" in t for t in world.gp_texts())
        await world.advance(timedelta(hours=7))
        assert world.images_in_group() == []
        async with world.store.read() as tx:
            ref = await tx.get_referral(rid)
        assert ref.state in (ReferralState.OPINION_GIVEN, ReferralState.CLOSED)
        assert all(not i.state.in_chat for i in ref.images)
        assert (await world.store.verify_audit()).intact
    finally:
        await world.close()
