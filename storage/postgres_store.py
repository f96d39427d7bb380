"""The same store on PostgreSQL (asyncpg), for deployments that outgrow one SQLite file.

Nothing about the records changes: the SQLite store's logic (sealed consent/referral
documents, the vault's envelope encryption, the audit hash chain, the outbox) is reused
as is (:class:`PostgresStore` subclasses :class:`storage.sqlite_store.SQLiteStore`); only
the database underneath differs. :class:`PgDatabase` offers the same small surface as
:class:`storage.db.Database` (``transaction()``, ``read()``, ``migrate()``,
``schema_version()``, ``checkpoint()``, ``close()``) and its transactions the same
``Tx`` helpers (``execute``/``fetchone``/``fetchall``/``scalar``).

The SQL is the SQLite store's own (``storage/queries.py`` and the numbered files in
``storage/migrations/``), passed through :func:`translate`, which makes the few dialect
changes PostgreSQL needs: ``?`` placeholders become ``$1, $2 …`` and ``BLOB`` becomes
``BYTEA``. A migration that cannot be portable ships a ``NNN_name.postgres.sql`` variant,
picked by :func:`storage.db.discover_migrations` with ``dialect="postgres"``.

Transactions are serialised like SQLite's ``BEGIN IMMEDIATE``: in-process by an asyncio
lock, and across processes (several bot instances on one database) by a transaction-level
advisory lock taken first thing in every write transaction. That keeps the store's
"one transaction at a time" contract, which the outbox numbering relies on.
"""
from __future__ import annotations

import asyncio
import contextlib
import re
from pathlib import Path
from typing import Any, AsyncIterator, Iterable, Sequence

import asyncpg

from storage import queries as Q
from storage.db import (
    MIGRATIONS_DIR,
    SchemaTooNew,
    StorageError,
    discover_migrations,
    render,
    to_text,
    utc_now,
)
from storage.interfaces import StoreError
from storage.keys import Keys
from storage.sqlite_store import SQLiteStore

__all__ = ["PgDatabase", "PgTx", "PostgresStore", "translate", "DIALECT"]

DIALECT = "postgres"
#: advisory lock key that serialises write transactions (any constant unique to this app)
WRITE_LOCK_KEY = 0x5245_4642  # "REFB"

_BLOB = re.compile(r"\bBLOB\b", re.IGNORECASE)
_SQLITE_TABLE_EXISTS = re.compile(
    r"SELECT\s+COUNT\(\*\)\s+FROM\s+sqlite_master\s+WHERE\s+type\s*=\s*'table'\s+AND\s+name\s*=\s*'(\w+)'",
    re.IGNORECASE,
)
_STATUS_COUNT = re.compile(r"(\d+)$")


def translate(sql: str) -> str:
    """SQLite-flavoured portable SQL -> PostgreSQL. Small and explicit on purpose."""
    sql = _SQLITE_TABLE_EXISTS.sub(r"SELECT COUNT(*) FROM pg_tables WHERE schemaname = current_schema() AND tablename = '\1'", sql)
    sql = _BLOB.sub("BYTEA", sql)
    return render(sql, DIALECT)


class PgTx:
    """One open transaction on one connection (same helpers as ``storage.db.Tx``)."""

    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        status = await self.conn.execute(translate(sql), *params)
        m = _STATUS_COUNT.search(status or "")
        return int(m.group(1)) if m else -1

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self.conn.executemany(translate(sql), [tuple(r) for r in rows])

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> asyncpg.Record | None:
        return await self.conn.fetchrow(translate(sql), *params)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[asyncpg.Record]:
        return list(await self.conn.fetch(translate(sql), *params))

    async def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return await self.conn.fetchval(translate(sql), *params)


class PgDatabase:
    """A PostgreSQL database at the latest (or a chosen) schema version."""

    def __init__(self, dsn: str, pool: asyncpg.Pool):
        self.dsn = dsn
        self.pool = pool
        self._lock = asyncio.Lock()

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        migrate: bool = True,
        target_version: int | None = None,
        migrations_dir: Path = MIGRATIONS_DIR,
        min_size: int = 1,
        max_size: int = 4,
        timeout: float = 10.0,
    ) -> "PgDatabase":
        try:
            pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, timeout=timeout)
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StorageError(f"cannot connect to PostgreSQL ({_safe_dsn(dsn)}): {exc}") from None
        db = cls(dsn, pool)
        try:
            if migrate:
                await db.migrate(target_version, migrations_dir=migrations_dir)
        except BaseException:
            await pool.close()
            raise
        return db

    async def close(self) -> None:
        await self.pool.close()

    async def __aenter__(self) -> "PgDatabase":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[PgTx]:
        """A serialised read-write transaction (commit on normal exit, roll back on error)."""
        async with self._lock:
            async with self.pool.acquire() as conn:
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK_KEY)
                    yield PgTx(conn)

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[PgTx]:
        """A read-only snapshot (REPEATABLE READ, never blocks writers)."""
        async with self.pool.acquire() as conn:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                yield PgTx(conn)

    async def checkpoint(self) -> None:
        """SQLite flushes its WAL after a shred; PostgreSQL needs no equivalent here
        (dead tuples are reclaimed by autovacuum; see docs/operations.md)."""
        return None

    async def schema_version(self) -> int:
        async with self.read() as tx:
            if not await tx.scalar(Q.SCHEMA_VERSION_TABLE_EXISTS):
                return 0
            return int(await tx.scalar(Q.CURRENT_VERSION))

    async def migrate(self, target_version: int | None = None, *, migrations_dir: Path = MIGRATIONS_DIR) -> list[int]:
        """Apply pending migrations, each in its own transaction with its version row."""
        migrations = discover_migrations(migrations_dir, dialect=DIALECT)
        latest = migrations[-1].version if migrations else 0
        target = latest if target_version is None else target_version
        if target > latest:
            raise StorageError(f"no migration {target:03d} (latest is {latest:03d})")
        async with self.transaction() as tx:
            await tx.execute(Q.CREATE_SCHEMA_VERSION)
        current = await self.schema_version()
        if current > latest:
            raise SchemaTooNew(
                f"database schema is version {current}, newer than this program knows ({latest}); upgrade referral-bot"
            )
        applied: list[int] = []
        for migration in migrations:
            if migration.version <= current or migration.version > target:
                continue
            script = translate_script(migration.path.read_text(encoding="utf-8"))
            async with self.transaction() as tx:
                # a whole script in one simple-protocol call: PostgreSQL splits it itself
                # (function bodies in $$ … $$ included)
                await tx.conn.execute(script)
                await tx.execute(Q.RECORD_VERSION, (migration.version, migration.name, to_text(utc_now())))
            applied.append(migration.version)
        return applied


def translate_script(script: str) -> str:
    """A migration file for PostgreSQL: types only (scripts have no placeholders)."""
    return _BLOB.sub("BYTEA", script)


def _safe_dsn(dsn: str) -> str:
    """The DSN without its password, for error messages."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", dsn)


class PostgresStore(SQLiteStore):
    """``storage.interfaces.Store`` on PostgreSQL: the SQLite store's logic on :class:`PgDatabase`."""

    @classmethod
    async def open(cls, dsn: str, keys: Keys, *, create: bool = True) -> "PostgresStore":  # type: ignore[override]
        db = await PgDatabase.open(dsn)
        store = cls(db, keys)  # type: ignore[arg-type]
        try:
            async with db.transaction() as tx:
                await store._vault.check_key(tx)  # type: ignore[arg-type]
        except BaseException:
            await db.close()
            raise
        return store

    @contextlib.asynccontextmanager
    async def transaction(self):  # type: ignore[override]
        try:
            async with super().transaction() as work:
                yield work
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise StoreError(f"database error: {type(exc).__name__}: {exc}") from exc
