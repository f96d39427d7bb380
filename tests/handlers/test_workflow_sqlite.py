"""The same workflow over the real SQLite store (storage/sqlite_store.py): the path
through consent, referral, image, opinion, removal and withdrawal, and a restart
in the middle (the processed-event table and the outbox survive)."""
import os

from handlers import actions as A
from handlers import events as E
from handlers.model import ReferralState
from storage.keys import Keys
from storage.sqlite_store import SQLiteStore

from .helpers import CONSENT_OK, DERM, GP, Harness, consent_id_from, jpeg_with_metadata, referral_id_from, reply_text


def _keys() -> Keys:
    return Keys.from_master(os.urandom(32))


async def test_full_path_over_sqlite_with_a_restart(tmp_path):
    keys = _keys()
    path = tmp_path / "bot.sqlite3"
    store = await SQLiteStore.open(path, keys)
    h = Harness(store=store)
    try:
        cid = consent_id_from(await h.say(GP, CONSENT_OK))
        rid = referral_id_from(await h.say(GP, f"!refer dermatology {cid} Itchy plaque, psoriasis?"))
        await h.send_image(GP, jpeg_with_metadata(), event_id="$upload1")
        pending = await store.pending_actions()
        assert any(isinstance(e.action, A.PostThreadRoot) for e in pending)
    finally:
        await store.close()

    # restart: a new process opens the same database
    store = await SQLiteStore.open(path, keys)
    h.store = store
    h.workflow.store = store
    try:
        assert await h.send_image(GP, jpeg_with_metadata(), event_id="$upload1") == []  # already handled
        await h.drain()
        ref = await _ref(store, rid)
        assert ref.state is ReferralState.POSTED and len(h.chat) == 1
        image_id = ref.images[0].image_id
        assert await store.vault_get(image_id)  # encrypted at rest, readable by the bot

        await h.say(DERM, "!opinion Psoriasis; topical treatment.", place=E.SpecialtyThread("dermatology", None, f"$root-{rid}"))
        h.advance(hours=25)
        await h.tick()
        await h.drain()
        assert (await _ref(store, rid)).state is ReferralState.CLOSED and h.chat == {}

        text = reply_text(await h.say(GP, f"!withdraw {cid}"))
        assert "withdrawn" in text and "1 stored copy destroyed" in text
        assert await store.vault_get(image_id) is None
        result = await store.verify_audit()
        assert result.intact and result.entries >= 10
    finally:
        await store.close()


async def _ref(store, rid):
    async with store.transaction() as tx:
        return await tx.get_referral(rid)


async def test_referral_fields_are_sealed_with_the_referral(tmp_path):
    """Issue 12 part 1: site, duration, urgency and history survive a restart and are
    encrypted at rest like the question (no word of them in the database file)."""
    from handlers.model import ReferralDetails, Urgency

    keys = _keys()
    path = tmp_path / "bot.sqlite3"
    store = await SQLiteStore.open(path, keys)
    h = Harness(store=store)
    try:
        cid = consent_id_from(await h.say(GP, CONSENT_OK))
        rid = referral_id_from(await h.say(
            GP, f"!refer dermatology {cid} site=Zanzibarian forearm; duration=Quokkalike weeks; urgency=urgent; "
                "history=Xylophonic dermatitis; Itchy plaque, psoriasis?"))
    finally:
        await store.close()
    store = await SQLiteStore.open(path, keys)
    try:
        assert (await _ref(store, rid)).details == ReferralDetails(
            site="Zanzibarian forearm", duration="Quokkalike weeks", urgency=Urgency.URGENT,
            history="Xylophonic dermatitis")
    finally:
        await store.close()
    # the referral's row is sealed (the outbox copy of the thread root is issue 9's to seal)
    import sqlite3

    with sqlite3.connect(path) as db:
        row = db.execute("SELECT * FROM referrals WHERE referral_id = ?", (rid,)).fetchone()
    raw = b"".join(v if isinstance(v, bytes) else str(v).encode() for v in row)
    assert len(raw) > 100
    for word in (b"Zanzibarian", b"Quokkalike", b"Xylophonic", b"psoriasis", b"urgent"):
        assert word not in raw, word
