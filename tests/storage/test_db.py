"""The database layer: pragmas, numbered migrations, transactions."""
from __future__ import annotations

import sqlite3
import stat

import pytest

from storage import audit
from storage import queries as Q
from storage.vault import Vault
from storage.db import (
    Database,
    SchemaTooNew,
    StorageError,
    discover_migrations,
    latest_version,
    render,
    split_statements,
)

from . import legacy
from .conftest import T0


async def test_fresh_database_is_at_latest_version_with_safe_pragmas(db, db_path):
    assert await db.schema_version() == latest_version() >= 2
    async with db.read() as tx:
        assert (await tx.scalar("PRAGMA journal_mode")).lower() == "wal"
        assert await tx.scalar("PRAGMA foreign_keys") == 1
        assert await tx.scalar("PRAGMA secure_delete") == 1
        rows = await tx.fetchall("SELECT version, name FROM schema_version ORDER BY version")
    assert [r["version"] for r in rows] == list(range(1, latest_version() + 1))
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600


async def test_reopening_applies_nothing_twice(db_path):
    first = await Database.open(db_path)
    await first.close()
    again = await Database.open(db_path)
    try:
        assert await again.migrate() == []
        assert await again.schema_version() == latest_version()
    finally:
        await again.close()


@pytest.mark.parametrize("start", range(0, latest_version()))
async def test_migrating_from_each_earlier_version_preserves_data(db_path, keys, start):
    """Rows written by the program of each earlier version survive the SQL migrations.
    (The keyed part of version 6, done by the store with the key, is tests/storage/test_upgrade.py.)"""
    old = await Database.open(db_path, target_version=start)
    assert await old.schema_version() == start
    vault = Vault(keys)
    if start >= 1:  # version 1: processed events, outbox, audit trail, vault
        async with old.transaction() as tx:
            await tx.execute(Q.MARK_PROCESSED, ("$ev1", "2026-03-01T09:00:00+00:00"))
            await tx.execute(Q.ENQUEUE_ACTION, (1, "2026-03-01T09:00:00+00:00", "Reply", '{"type":"Reply"}'))
            await tx.execute(Q.ENQUEUE_ACTION, (2, "2026-03-01T09:00:00+00:00", "Notify", '{"type":"Notify"}'))
            await tx.execute("UPDATE outbox SET done_at = '2026-03-01T09:01:00+00:00' WHERE id = 2")
            await legacy.audit_append(tx, at=T0, actor="@gp:example.org", action="consent.recorded", consent_id="C-1")
            await vault.put(tx, "img-1", b"pixels", "image/png", T0)
    if start >= 3:  # version 3: consents and referrals
        async with old.transaction() as tx:
            await tx.execute(legacy.CONSENT_UPSERT_V3, ("C-1", "Riverside", "2026-03-01T09:00:00+00:00", None, b"sealed"))
    await old.close()

    new = await Database.open(db_path)
    try:
        assert await new.schema_version() == latest_version()
        async with new.read() as tx:
            if start >= 1:
                assert await tx.scalar(Q.IS_PROCESSED, ("$ev1",)) == 1
                rows = await tx.fetchall(Q.PENDING_ACTIONS)
                assert [(r["id"], r["kind"]) for r in rows] == [(1, "Reply")]
                # version 6: a done action's payload is gone; a pending one waits for the key
                # (from 6 on the program itself drops it when the action is done)
                done = await tx.fetchone(Q.OUTBOX_ROW, (2,))
                assert done["done_at"] is not None and (start >= 6 or done["payload"] is None)
                result = await audit.verify(tx, keys.audit_key, allow_unsigned=True)
                assert result.intact and result.entries == 1 and result.legacy_entries == 1
                assert (await vault.get(tx, "img-1")).data == b"pixels"
            if start >= 3:
                row = await tx.fetchone(Q.CONSENT_GET, ("C-1",))
                assert row["doc"] == b"sealed" and row["version"] == 0  # re-sealed by the store, with the key
            assert await tx.scalar(Q.GET_META, ("keyed_upgrade",)) == "006"
        # and the new schema is usable at once
        async with new.transaction() as tx:
            await audit.append(tx, keys.audit_key, at=T0, actor="@referral-bot", action="migrated")
            assert await tx.execute(Q.MARK_PROCESSED, ("$ev2", "2026-03-01T09:00:00+00:00")) == 1
    finally:
        await new.close()


async def test_a_failing_migration_leaves_the_previous_version_intact(db_path, tmp_path):
    mig = tmp_path / "migs"
    mig.mkdir()
    (mig / "001_a.sql").write_text("CREATE TABLE a (x INTEGER);\n")
    (mig / "002_b.sql").write_text("CREATE TABLE b (x INTEGER);\nCREATE TABLE a (x INTEGER);\n")  # 2nd fails
    with pytest.raises(StorageError, match="migration 002_b failed and was rolled back"):
        await Database.open(db_path, migrations_dir=mig)
    db = await Database.open(db_path, migrate=False)
    try:
        assert await db.schema_version() == 1
        async with db.read() as tx:
            names = {r[0] for r in await tx.fetchall("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "a" in names and "b" not in names  # 002 rolled back whole
    finally:
        await db.close()


async def test_a_database_newer_than_the_program_is_refused(db_path, tmp_path):
    db = await Database.open(db_path)
    async with db.transaction() as tx:
        await tx.execute(Q.RECORD_VERSION, (999, "future", "2030-01-01T00:00:00+00:00"))
    await db.close()
    with pytest.raises(SchemaTooNew, match="newer than this program"):
        await Database.open(db_path)


async def test_not_a_database_gets_a_clear_message(tmp_path):
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StorageError, match="not a usable referral-bot database"):
        await Database.open(junk)


async def test_missing_database_not_created_when_asked(tmp_path):
    with pytest.raises(StorageError, match="no database at"):
        await Database.open(tmp_path / "nope.sqlite3", create=False)
    assert not (tmp_path / "nope.sqlite3").exists()


async def test_transaction_rolls_back_everything_on_error(db):
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            await tx.execute(Q.MARK_PROCESSED, ("$ev", "t"))
            await tx.execute(Q.ENQUEUE_ACTION, (1, "t", "Reply", "{}"))
            raise RuntimeError("crash between steps")
    async with db.read() as tx:
        assert await tx.scalar(Q.IS_PROCESSED, ("$ev",)) is None
        assert await tx.fetchall(Q.PENDING_ACTIONS) == []


def test_migration_files_are_numbered_without_gaps():
    migs = discover_migrations()
    assert [m.version for m in migs] == list(range(1, len(migs) + 1))
    pg = discover_migrations(dialect="postgres")
    assert [m.version for m in pg] == [m.version for m in migs]


def test_missing_migrations_are_a_clear_error(tmp_path):
    with pytest.raises(StorageError, match="no migrations found"):
        discover_migrations(tmp_path)


def test_gap_in_numbering_is_refused(tmp_path):
    (tmp_path / "001_a.sql").write_text("CREATE TABLE a (x INTEGER);")
    (tmp_path / "003_c.sql").write_text("CREATE TABLE c (x INTEGER);")
    with pytest.raises(StorageError, match="without gaps"):
        discover_migrations(tmp_path)


def test_statement_splitter_keeps_triggers_whole():
    script = (
        "-- comment\nCREATE TABLE t (x INTEGER);\n"
        "CREATE TRIGGER tr BEFORE DELETE ON t\nBEGIN\n  SELECT RAISE(ABORT, 'no; really');\nEND;\n"
    )
    parts = split_statements(script)
    assert len(parts) == 2
    assert parts[1].startswith("CREATE TRIGGER") and parts[1].endswith("END;")
    conn = sqlite3.connect(":memory:")
    for p in parts:
        conn.execute(p)


def test_placeholders_render_for_postgres():
    assert render(Q.ENQUEUE_ACTION, "postgres").endswith("VALUES ($1, $2, $3, $4)")
    assert render("SELECT '?' , ?", "postgres") == "SELECT '?' , $1"
    assert render(Q.ENQUEUE_ACTION) == Q.ENQUEUE_ACTION


def test_every_query_renders_with_matching_parameter_count():
    for name in dir(Q):
        sql = getattr(Q, name)
        if isinstance(sql, str) and name.isupper():
            n = sql.count("?")
            assert render(sql, "postgres").count("$") == n, name


def test_timestamps_must_be_aware():
    from datetime import datetime

    from storage.db import from_text, to_text

    assert from_text(to_text(T0)) == T0
    with pytest.raises(ValueError):
        to_text(datetime(2026, 1, 1))


async def test_opening_an_up_to_date_database_takes_no_write_lock(db_path):
    """`referral-bot status` opens the store next to the running bot; a long write
    transaction of the bot must not make that open fail (it did: 'database is locked')."""
    import time

    first = await Database.open(db_path)
    await first.close()
    holder = sqlite3.connect(str(db_path), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process in the middle of a write
    try:
        t0 = time.monotonic()
        second = await Database.open(db_path)
        try:
            assert await second.schema_version() == latest_version()
        finally:
            await second.close()
        assert time.monotonic() - t0 < 2.0  # not after waiting out the busy timeout
    finally:
        holder.execute("ROLLBACK")
        holder.close()


async def test_migration_007_numbers_existing_referrals_in_their_old_order(db_path):
    old = await Database.open(db_path, target_version=3)
    insert = ("INSERT INTO referrals (referral_id, consent_id, referrer, specialty, state, opened_at,"
              " thread_root_event_id, next_due_at, doc) VALUES (?, 'C-1', '@gp:x', 'derm', 'opened', ?, NULL, NULL, ?)")
    async with old.transaction() as tx:
        for rid, opened in (("R-B", "2026-03-01T10:00:00+00:00"), ("R-A", "2026-03-01T10:00:00+00:00"),
                            ("R-C", "2026-03-01T09:00:00+00:00")):
            await tx.execute(insert, (rid, opened, b"sealed"))
    await old.close()
    new = await Database.open(db_path)
    try:
        async with new.read() as tx:
            rows = await tx.fetchall("SELECT referral_id, seq FROM referrals ORDER BY seq")
        assert [(r["referral_id"], r["seq"]) for r in rows] == [("R-C", 1), ("R-A", 2), ("R-B", 3)]
        async with new.transaction() as tx:  # a new referral comes after them, whatever its time
            await tx.execute(Q.REFERRAL_UPSERT, ("R-D", "C-1", "@gp:x", "derm", "opened",
                                                 "2020-01-01T00:00:00+00:00", None, None, 1, b"sealed"))
            assert await tx.scalar("SELECT seq FROM referrals WHERE referral_id = 'R-D'") == 4
    finally:
        await new.close()
