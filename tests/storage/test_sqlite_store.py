"""SQLite-specific guarantees of the store (beyond the shared contract)."""
from __future__ import annotations

import os

import pytest

from handlers.model import AuditEntry
from storage.interfaces import StoreError
from storage.keys import Keys
from storage.sqlite_store import SQLiteStore
from storage.vault import WrongKey

from .conftest import T0
from .test_contract import consent, image, referral


def _disk(db_path) -> bytes:
    return b"".join(p.read_bytes() for p in db_path.parent.glob(db_path.name + "*"))


async def _one_vault_key(store) -> bytes:
    """Store one image in the vault; its wrapped key, as it lies in the database."""
    async with store.transaction() as tx:
        await tx.vault_put("img-1", os.urandom(50_000), "image/jpeg")
    async with store.read() as tx:
        return bytes((await tx._tx.fetchone("SELECT wrapped_key FROM vault_keys WHERE image_id = 'img-1'"))[0])


async def test_clinical_free_text_is_not_on_disk_in_clear(tmp_path, keys):
    path = tmp_path / "bot.sqlite3"
    c = consent()
    r = referral(opinion="Looks like tinea corporis; topical terbinafine for 2 weeks.").with_image(image())
    async with await SQLiteStore.open(path, keys) as store:
        async with store.transaction() as tx:
            await tx.save_consent(c)
            await tx.save_referral(r)
        async with store.read() as tx:
            assert await tx.get_referral(r.referral_id) == r
    disk = _disk(path)
    for secret in (r.question, r.opinion, c.best_interests_statement, c.patient_ref):
        assert secret.encode() not in disk
    assert b"R-7K3QX9" in disk  # ids are in clear (they are what the tools search by)


async def test_reopen_with_the_same_key_keeps_everything(tmp_path, keys):
    path = tmp_path / "bot.sqlite3"
    async with await SQLiteStore.open(path, keys) as store:
        async with store.transaction() as tx:
            await tx.mark_processed("$e1", T0)
            await tx.save_consent(consent())
            await tx.vault_put("img-1", b"pixels", "image/png")
            await tx.append_audit(AuditEntry(actor="@gp:example.org", action="consent.recorded", at=T0))
    async with await SQLiteStore.open(path, keys) as store:
        async with store.transaction() as tx:
            assert await tx.mark_processed("$e1", T0) is False
            assert await tx.get_consent("C-4F2A1B") == consent()
            assert await tx.vault_get("img-1") == b"pixels"
        assert (await store.verify_audit()).entries == 1


async def test_opening_with_a_different_key_is_refused_clearly(tmp_path, keys):
    path = tmp_path / "bot.sqlite3"
    async with await SQLiteStore.open(path, keys) as store:
        async with store.transaction() as tx:
            await tx.vault_put("img-1", b"pixels", "image/png")
    wrong = Keys.from_master(os.urandom(32), source="key file /etc/referral-bot/other.key")
    with pytest.raises(WrongKey, match="not the key this database was created with"):
        await SQLiteStore.open(path, wrong)


async def test_audit_details_with_patient_data_roll_the_transition_back(tmp_path, keys):
    async with await SQLiteStore.open(tmp_path / "bot.sqlite3", keys) as store:
        with pytest.raises(StoreError, match="looks like patient data"):
            async with store.transaction() as tx:
                await tx.mark_processed("$e1", T0)
                await tx.save_consent(consent())
                await tx.append_audit(AuditEntry(actor="@gp:example.org", action="consent.recorded", at=T0,
                                                 details={"patient_ref": "hmac-sha256:ab"}))
        async with store.transaction() as tx:
            assert await tx.mark_processed("$e1", T0) is True
            assert await tx.get_consent("C-4F2A1B") is None


async def test_shred_in_a_transition_truncates_the_wal(tmp_path, keys):
    path = tmp_path / "bot.sqlite3"
    async with await SQLiteStore.open(path, keys) as store:
        wrapped = await _one_vault_key(store)
        assert wrapped in _disk(path)
        async with store.transaction() as tx:
            assert await tx.vault_shred("img-1")
        wal = path.with_name(path.name + "-wal")
        assert not wal.exists() or wal.stat().st_size == 0
        assert wrapped not in _disk(path)


async def test_a_reader_holding_a_snapshot_only_delays_the_wal_truncation(tmp_path, keys):
    """Issue 9, finding 12: while another connection (the `status` or `export` command, a
    backup) reads an older snapshot, the post-shred checkpoint cannot truncate the WAL,
    whose old page images still hold the wrapped key. It used to be tried once and
    forgotten; now every tick retries it (``housekeeping``) until it succeeds, without
    waiting on the reader meanwhile."""
    import sqlite3
    import time

    from handlers import events as E
    from tests.handlers.helpers import Harness

    path = tmp_path / "bot.sqlite3"
    async with await SQLiteStore.open(path, keys) as store:
        h = Harness(store=store)
        wrapped = await _one_vault_key(store)
        reader = sqlite3.connect(path, isolation_level=None)
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM vault_keys").fetchone()  # holds its snapshot from here
        try:
            t0 = time.monotonic()
            async with store.transaction() as tx:
                assert await tx.vault_shred("img-1")
            assert time.monotonic() - t0 < 2  # did not sit out the 5 s busy timeout
            assert wrapped in _disk(path)  # the WAL could not be truncated: the key is still there
            await h.workflow.handle(E.Tick(at=h.now))
            assert wrapped in _disk(path)  # still blocked: retried, not given up
        finally:
            reader.execute("ROLLBACK")
            reader.close()
        await h.workflow.handle(E.Tick(at=h.now))  # the next tick after the reader is gone
        wal = path.with_name(path.name + "-wal")
        assert not wal.exists() or wal.stat().st_size == 0
        assert wrapped not in _disk(path)


async def test_the_ticks_checkpoint_never_takes_the_write_lock_while_others_work(tmp_path, keys):
    """Review caution on finding 12: the WAL checkpoint retried on every tick must not
    block writers or readers. A TRUNCATE holds the write lock while it copies the WAL
    into the main file; the tick therefore runs a PASSIVE checkpoint and truncates only
    when that left nothing to copy and nobody reads an older snapshot (the WAL is idle).
    Here another process writes (and another reads) while the tick's housekeeping runs:
    it issues no TRUNCATE, does not wait, and the writer commits; once both are gone, the
    next tick truncates and the shredded key is gone from the disk."""
    import sqlite3
    import time

    from handlers import events as E
    from tests.handlers.helpers import Harness

    path = tmp_path / "bot.sqlite3"
    async with await SQLiteStore.open(path, keys) as store:
        h = Harness(store=store)
        wrapped = await _one_vault_key(store)
        reader = sqlite3.connect(path, isolation_level=None)
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM vault_keys").fetchone()  # `status`, holding its snapshot
        async with store.transaction() as tx:
            assert await tx.vault_shred("img-1")
        assert wrapped in _disk(path)  # the reader stops the truncation
        writer = sqlite3.connect(path, isolation_level=None, timeout=0)
        writer.execute("BEGIN IMMEDIATE")  # `export` in the middle of a write
        writer.execute("INSERT INTO processed_events (event_id, processed_at) VALUES ('$other', '2026-03-01T09:00:00+00:00')")
        statements: list[str] = []
        await store.db.conn.set_trace_callback(statements.append)
        try:
            t0 = time.monotonic()
            await store.housekeeping()  # what every Tick ends with (the tick's own writes would wait)
            assert time.monotonic() - t0 < 1  # never sat out the busy timeout
            checkpoints = [s for s in statements if "wal_checkpoint" in s]
            assert checkpoints and all("PASSIVE" in s for s in checkpoints), checkpoints
            writer.execute("COMMIT")  # the writer was never blocked by the tick
            reader.execute("ROLLBACK")
            statements.clear()
            await h.workflow.handle(E.Tick(at=h.now))  # idle now: PASSIVE, then TRUNCATE
            assert [s for s in statements if "wal_checkpoint" in s] == [
                "PRAGMA wal_checkpoint(PASSIVE)", "PRAGMA wal_checkpoint(TRUNCATE)"]
        finally:
            await store.db.conn.set_trace_callback(None)
            writer.close()
            reader.close()
        wal = path.with_name(path.name + "-wal")
        assert not wal.exists() or wal.stat().st_size == 0
        assert wrapped not in _disk(path)


async def test_an_unreadable_outbox_row_is_dead_lettered_and_the_others_still_run(tmp_path, keys):
    """Issue 9, finding 3 with sealed payloads (finding 2): one altered outbox row used to
    make every read of the outbox fail, so nothing at all was sent or removed."""
    from handlers.actions import Reply
    from handlers.events import DirectChat

    async with await SQLiteStore.open(tmp_path / "bot.sqlite3", keys) as store:
        async with store.transaction() as tx:
            ids = await tx.enqueue([Reply(key=f"$e/{i}", to=DirectChat("@gp:example.org"), text=f"t{i}")
                                    for i in range(3)])
        async with store.db.transaction() as tx:  # a damaged row (disk error, bad restore)
            await tx.execute("UPDATE outbox SET payload = ? WHERE id = ?", (b"\x00" * 40, ids[1]))
        assert [e.outbox_id for e in await store.pending_actions()] == [ids[0], ids[2]]
        (dead,) = await store.dead_letters()
        assert dead.outbox_id == ids[1] and "cannot be read" in dead.reason
        assert [e.outbox_id for e in await store.pending_actions()] == [ids[0], ids[2]]  # once, not again
        async with store.read() as tx:
            assert await tx._tx.scalar("SELECT payload FROM outbox WHERE id = ?", (ids[1],)) is None


async def test_a_dead_letter_keeps_none_of_the_actions_content(tmp_path, keys):
    """Lanes and dead letters (finding 3) on the sealed outbox (finding 2): an action the
    transport gave up on leaves only its kind, times and a plain reason, like a done one."""
    from handlers.actions import Notify

    async with await SQLiteStore.open(tmp_path / "bot.sqlite3", keys) as store:
        async with store.transaction() as tx:
            (oid,) = await tx.enqueue([Notify(key="$e/0", user_id="@gp:example.org", text="Tinea incognito: stop the steroid")])
        async with store.read() as tx:
            sealed = await tx._tx.scalar("SELECT payload FROM outbox WHERE id = ?", (oid,))
        assert sealed and b"Tinea" not in bytes(sealed)
        await store.dead_letter(oid, kind="Notify", referral_id="R-1", reason="I am no longer in that chat.",
                                attempts=1, at=T0)
        assert await store.pending_actions() == []
        async with store.read() as tx:
            assert await tx._tx.scalar("SELECT payload FROM outbox WHERE id = ?", (oid,)) is None
        assert b"Tinea" not in _disk(tmp_path / "bot.sqlite3")
