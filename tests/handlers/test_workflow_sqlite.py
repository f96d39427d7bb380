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
    # the referral's row is sealed, and nothing of the free text is anywhere in the files
    # (the outbox copy of the thread root is sealed too since issue 9; the audit keeps codes)
    import sqlite3

    with sqlite3.connect(path) as db:
        row = db.execute("SELECT * FROM referrals WHERE referral_id = ?", (rid,)).fetchone()
    raw = b"".join(v if isinstance(v, bytes) else str(v).encode() for v in row)
    assert len(raw) > 100
    for word in (b"Zanzibarian", b"Quokkalike", b"Xylophonic", b"psoriasis", b"urgent"):
        assert word not in raw, word
    files = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("bot.sqlite3"))
    for word in (b"Zanzibarian", b"Quokkalike", b"Xylophonic", b"psoriasis"):
        assert word not in files, word


async def _two_referrals(h: Harness) -> tuple[str, str, str]:
    """One consent and two open referrals under it: (consent id, first, second)."""
    cid = consent_id_from(await h.say(GP, CONSENT_OK))
    first = referral_id_from(await h.say(GP, f"!refer dermatology {cid} First lesion?"))
    second = referral_id_from(await h.say(GP, f"!refer dermatology {cid} Second lesion?"))
    await h.drain()
    return cid, first, second


async def test_one_unreadable_referral_never_stops_the_others_expiring(tmp_path):
    """Reproduced in the review: one unreadable referral row made every tick raise, and a
    healthy referral 8 days past its 7-day lifetime stayed open with its image in the room.
    Now each referral is ticked in its own transaction; the unreadable one is set aside
    (audited, listed, alerted) and skipped from then on."""
    store = await SQLiteStore.open(tmp_path / "bot.sqlite3", _keys())
    h = Harness(store=store)
    try:
        _cid, broken, healthy = await _two_referrals(h)
        await h.send_image(GP, jpeg_with_metadata(), caption=healthy)
        await h.drain()
        assert len(h.chat) == 1
        async with store.db.transaction() as tx:  # a damaged row (a bad restore, a disk error)
            await tx.execute("UPDATE referrals SET doc = ? WHERE referral_id = ?", (b"\x00" * 40, broken))
        h.advance(days=8)
        await h.tick()
        await h.drain()
        assert (await _ref(store, healthy)).state is ReferralState.CLOSED and h.chat == {}
        (aside,) = await store.set_aside_referrals()
        assert (aside.referral_id, aside.reason) == (broken, "unreadable")
        audit = [e for e in await store.audit_entries() if e.action == "referral.set_aside"]
        assert [e.referral_id for e in audit] == [broken]
        assert await h.tick() == []  # skipped from now on: no error, no second alert
        assert len([e for e in await store.audit_entries() if e.action == "referral.set_aside"]) == 1
    finally:
        await store.close()


async def test_a_rules_bug_sets_one_referral_aside_but_a_store_failure_does_not(tmp_path, monkeypatch):
    """A tick that raises in the lifecycle rules for one referral's data sets that one
    aside and the others still expire; an I/O error (the machine, not the referral) sets
    nothing aside: the tick fails, rolls back, and the next one does the work."""
    from handlers import lifecycle as lc

    store = await SQLiteStore.open(tmp_path / "bot.sqlite3", _keys())
    h = Harness(store=store)
    try:
        cid, odd, fine = await _two_referrals(h)
        real_tick = lc.tick

        def buggy(ref, **kw):
            if ref.referral_id == odd:
                raise KeyError("a field this referral's data lacks")
            return real_tick(ref, **kw)

        monkeypatch.setattr(lc, "tick", buggy)
        h.advance(days=8)
        await h.tick()
        assert (await _ref(store, fine)).state is ReferralState.CLOSED
        assert [(s.referral_id, s.reason) for s in await store.set_aside_referrals()] == [(odd, "error (KeyError)")]

        from storage.sqlite_store import SQLiteTransaction

        monkeypatch.setattr(lc, "tick", real_tick)
        third = referral_id_from(await h.say(GP, f"!refer dermatology {cid} Third lesion?"))
        real_save = SQLiteTransaction.save_referral

        async def disk_full(self, referral):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(SQLiteTransaction, "save_referral", disk_full)
        h.advance(days=8)
        try:
            await h.tick()
        except OSError:
            pass
        assert [s.referral_id for s in await store.set_aside_referrals()] == [odd]  # not the third
        assert (await _ref(store, third)).state is not ReferralState.CLOSED  # rolled back
        monkeypatch.setattr(SQLiteTransaction, "save_referral", real_save)
        await h.tick()
        assert (await _ref(store, third)).state is ReferralState.CLOSED
    finally:
        await store.close()
