"""PostgreSQL-specific behaviour of storage/postgres_store.py, on a real server."""
from __future__ import annotations

import asyncio
import os
from datetime import datetime, timedelta, timezone

import asyncpg
import pytest

from handlers.actions import Reply
from handlers.events import DirectChat
from handlers.model import AuditEntry
from storage.db import StorageError, discover_migrations
from storage.interfaces import StoreError
from storage.keys import Keys
from storage.postgres_store import PgDatabase, PostgresStore, translate
from storage.vault import WrongKey

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)


@pytest.fixture
def keys() -> Keys:
    return Keys.from_master(os.urandom(32), source="test")


def test_translate_is_small_and_explicit():
    assert translate("INSERT INTO t (a, b) VALUES (?, ?)") == "INSERT INTO t (a, b) VALUES ($1, $2)"
    assert translate("SELECT '?' FROM t WHERE a = ?") == "SELECT '?' FROM t WHERE a = $1"
    assert translate("CREATE TABLE x (d BLOB NOT NULL)") == "CREATE TABLE x (d BYTEA NOT NULL)"
    assert "sqlite_master" not in translate(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'")


async def test_migrations_are_the_shared_numbered_files(pg_dsn):
    db = await PgDatabase.open(pg_dsn)
    try:
        expected = [m.version for m in discover_migrations(dialect="postgres")]
        assert await db.schema_version() == expected[-1]
        async with db.read() as tx:
            rows = await tx.fetchall("SELECT version, name FROM schema_version ORDER BY version")
            assert [r["version"] for r in rows] == expected
            kinds = {r["column_name"]: r["data_type"] for r in await tx.fetchall(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ?",
                ("vault_items",))}
        assert kinds["ciphertext"] == "bytea"
        assert await db.migrate() == []  # idempotent
    finally:
        await db.close()


async def test_audit_log_is_append_only_in_postgres_too(pg_dsn, keys):
    store = await PostgresStore.open(pg_dsn, keys)
    try:
        async with store.transaction() as tx:
            await tx.append_audit(AuditEntry(actor="@gp:example.org", action="consent.recorded", at=T0,
                                             consent_id="C-1", details={"purposes": "care"}))
            await tx.append_audit(AuditEntry(actor="@gp:example.org", action="referral.opened", at=T0,
                                             referral_id="R-1", consent_id="C-1"))
        result = await store.verify_audit()
        assert result.intact and result.entries == 2
        with pytest.raises(StoreError, match="append-only"):
            async with store.transaction() as tx:
                await tx._tx.execute("UPDATE audit_log SET actor = ? WHERE seq = 1", ("@mallory:example.org",))
        assert (await store.verify_audit()).intact
    finally:
        await store.close()


async def test_shred_leaves_no_key_or_ciphertext_and_wrong_key_is_refused(pg_dsn, keys):
    store = await PostgresStore.open(pg_dsn, keys)
    try:
        async with store.transaction() as tx:
            await tx.vault_put("img-1", b"\xff\xd8 secret pixels", "image/jpeg")
        async with store.transaction() as tx:
            assert await tx.vault_shred("img-1")
    finally:
        await store.close()
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT COUNT(*) FROM vault_keys") == 0
        row = await conn.fetchrow("SELECT nonce, ciphertext, shredded_at FROM vault_items")
        assert row["nonce"] is None and row["ciphertext"] is None and row["shredded_at"]
    finally:
        await conn.close()
    with pytest.raises(WrongKey):
        await PostgresStore.open(pg_dsn, Keys.from_master(os.urandom(32), source="other"))


async def test_state_survives_reopen(pg_dsn, keys):
    store = await PostgresStore.open(pg_dsn, keys)
    async with store.transaction() as tx:
        assert await tx.mark_processed("$ev1", T0)
        await tx.enqueue([Reply(key="$ev1/0", to=DirectChat("@gp:example.org"), text="hello")])
        await tx.vault_put("img-9", b"pixels", "image/png")
    await store.close()
    store = await PostgresStore.open(pg_dsn, keys)
    try:
        async with store.transaction() as tx:
            assert not await tx.mark_processed("$ev1", T0)
        (entry,) = await store.pending_actions()
        assert entry.action.text == "hello"
        assert await store.vault_get("img-9") == b"pixels"
    finally:
        await store.close()


async def test_two_instances_on_one_database_serialise_their_writes(pg_dsn, keys):
    """The bot and a tool (`export`) writing to one database: outbox ids stay unique and
    ordered because write transactions are serialised by an advisory lock, not only
    in-process; each follows the other's signed state."""
    a = await PostgresStore.open(pg_dsn, keys)
    b = await PostgresStore.open(pg_dsn, keys)
    try:
        async def writer(store, name):
            for i in range(15):
                async with store.transaction() as tx:
                    await tx.mark_processed(f"{name}-{i}", T0 + timedelta(seconds=i))
                    await tx.enqueue([Reply(key=f"{name}/{i}", to=DirectChat("@gp:example.org"), text=name)])
                    await asyncio.sleep(0.01)  # hold the transaction open: the other instance runs meanwhile
        await asyncio.gather(writer(a, "a"), writer(b, "b"))
        pending = await a.pending_actions(limit=100)
        assert len(pending) == 30
        assert len({p.outbox_id for p in pending}) == 30
    finally:
        await a.close()
        await b.close()


async def test_bad_dsn_is_a_clear_error_without_the_password(pg_server):
    dsn = f"postgresql://nobody:hunter2-secret@127.0.0.1:{pg_server.port}/no_such_db"
    with pytest.raises(StorageError) as info:
        await PgDatabase.open(dsn)
    assert "hunter2-secret" not in str(info.value)
    assert "cannot connect to PostgreSQL" in str(info.value)


async def test_a_second_bot_on_the_database_is_refused(pg_dsn, keys):
    """Issue 9, finding 13 on PostgreSQL: the bot holds a session advisory lock; `status`
    and `export` (not exclusive) still open the store next to it."""
    from storage.instance import AlreadyRunning

    bot = await PostgresStore.open(pg_dsn, keys, exclusive=True)
    try:
        with pytest.raises(AlreadyRunning, match="another referral-bot is already running on the PostgreSQL database"):
            await PostgresStore.open(pg_dsn, keys, exclusive=True)
        tool = await PostgresStore.open(pg_dsn, keys)
        await tool.close()
    finally:
        await bot.close()
    again = await PostgresStore.open(pg_dsn, keys, exclusive=True)  # the lock went with the session
    await again.close()


async def test_a_read_only_database_is_refused_at_start(pg_dsn, pg_server, keys):
    """Issue 9, finding 4: a read-only database (here default_transaction_read_only, as on
    a standby) is refused with one plain line, before the bot takes any event."""
    store = await PostgresStore.open(pg_dsn, keys)
    await store.close()
    name = pg_dsn.rsplit("/", 1)[1].split("?")[0]
    admin = await asyncpg.connect(pg_server.dsn("postgres"))
    try:
        await admin.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    finally:
        await admin.close()
    with pytest.raises(StorageError, match="is read-only .* and the bot must write to it") as info:
        await PostgresStore.open(pg_dsn, keys, exclusive=True)
    assert "\n" not in str(info.value)


async def test_a_replayed_consent_row_is_refused_after_a_restart_too(pg_dsn, keys):
    """Issue 9, finding 8 on PostgreSQL: the signed state does not match any more, so the
    store does not open (the running case is in the shared contract tests)."""
    from handlers.model import ConsentBasis, ConsentRecord, Purpose

    c = ConsentRecord(consent_id="C-1", patient_ref="hmac-sha256:" + "ab" * 32, practice="P", recorded_by="@gp:x",
                      recorded_at=T0, basis=ConsentBasis.PATIENT, purposes=frozenset({Purpose.CARE}),
                      identifiable=False, recorded_in_notes=True, retention=timedelta(days=90))
    store = await PostgresStore.open(pg_dsn, keys)
    try:
        async with store.transaction() as tx:
            await tx.save_consent(c)
        async with store.db.read() as tx:
            old = await tx.fetchone("SELECT version, doc FROM consents WHERE consent_id = 'C-1'")
        async with store.transaction() as tx:
            await tx.save_consent(ConsentRecord(**{**c.__dict__, "withdrawn_at": T0, "withdrawn_by": "@gp:x"}))
    finally:
        await store.close()
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute("UPDATE consents SET version = $1, doc = $2, withdrawn_at = NULL WHERE consent_id = 'C-1'",
                           old["version"], old["doc"])
    finally:
        await conn.close()
    with pytest.raises(StorageError, match="do not match the signed state"):
        await PostgresStore.open(pg_dsn, keys)
