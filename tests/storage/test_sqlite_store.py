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
        async with store.transaction() as tx:
            await tx.vault_put("img-1", os.urandom(50_000), "image/jpeg")
        async with store.read() as tx:
            row = await tx._tx.fetchone("SELECT wrapped_key FROM vault_keys WHERE image_id = 'img-1'")
        wrapped = bytes(row[0])
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
        async with store.transaction() as tx:
            await tx.vault_put("img-1", os.urandom(50_000), "image/jpeg")
        async with store.read() as tx:
            wrapped = bytes((await tx._tx.fetchone("SELECT wrapped_key FROM vault_keys WHERE image_id = 'img-1'"))[0])
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
