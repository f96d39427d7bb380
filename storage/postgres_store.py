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
lock, and across processes (the bot and an ``export`` next to it) by a transaction-level
advisory lock taken first thing in every write transaction. A second *bot* on one database
is refused at start: it holds a session advisory lock (``exclusive=True``). That keeps the store's
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
    run_after_commit,
    to_text,
    utc_now,
)
from storage.instance import AlreadyRunning
from storage.seal import AnchorFile
from storage.interfaces import StoreError
from storage.keys import Keys
from storage.sqlite_store import SQLiteStore

__all__ = ["PgDatabase", "PgTx", "PostgresStore", "translate", "DIALECT"]

DIALECT = "postgres"
#: advisory lock key that serialises write transactions (any constant unique to this app)
WRITE_LOCK_KEY = 0x5245_4642  # "REFB"
#: session advisory lock held by the one bot process allowed on a database
INSTANCE_LOCK_KEY = 0x5245_4649  # "REFI"

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
        self.after_commit: list = []  # run once the transaction has committed (storage.db.Tx)

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
                    work = PgTx(conn)
                    yield work
                run_after_commit(work)

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[PgTx]:
        """A read-only snapshot (REPEATABLE READ, never blocks writers). Serialised with
        this process's write transactions, as on SQLite, so the store's view of its
        signed state (storage/seal.py) always matches the snapshot it checks rows in."""
        async with self._lock:
            async with self.pool.acquire() as conn:
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    yield PgTx(conn)

    async def checkpoint(self) -> bool:
        """SQLite flushes its WAL after a shred; PostgreSQL needs no equivalent here
        (dead tuples are reclaimed by autovacuum; see docs/operations.md)."""
        return True

    async def checkpoint_at_close(self) -> bool:
        return True

    async def vacuum_full(self, *tables: str) -> None:
        """Rewrite tables so dead row versions (old outbox JSON) leave the table files."""
        async with self._lock:
            async with self.pool.acquire() as conn:
                for table in tables:
                    await conn.execute(f"VACUUM FULL {table}")

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
        # read first, as on SQLite: an up-to-date database (the usual case) takes no write,
        # so a read-only one reaches the store's own, clearer, refusal
        current = await self.schema_version()
        if current == 0:
            async with self.transaction() as tx:
                await tx.execute(Q.CREATE_SCHEMA_VERSION)
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


def _read_only(where: str) -> str:
    return (f"{where} is read-only (a standby, or default_transaction_read_only is on), and the bot "
            "must write to it: point it at the primary")


def _safe_dsn(dsn: str) -> str:
    """The DSN without its password, for error messages."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", dsn)


class PostgresStore(SQLiteStore):
    """``storage.interfaces.Store`` on PostgreSQL: the SQLite store's logic on :class:`PgDatabase`."""

    _instance_conn: asyncpg.Connection | None = None

    @classmethod
    async def open(  # type: ignore[override]
        cls,
        dsn: str,
        keys: Keys,
        *,
        create: bool = True,
        anchor_path: str | None = None,
        exclusive: bool = False,
    ) -> "PostgresStore":
        """As :meth:`SQLiteStore.open`. ``anchor_path`` None: no anchor file (tests only;
        the bot's config always names one). ``exclusive``: hold a session advisory lock
        on a connection of its own, so a second bot on this database is refused."""
        instance = None
        if exclusive:
            try:
                instance = await asyncpg.connect(dsn, timeout=10.0)
            except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                raise StorageError(f"cannot connect to PostgreSQL ({_safe_dsn(dsn)}): {exc}") from None
            if not await instance.fetchval("SELECT pg_try_advisory_lock($1)", INSTANCE_LOCK_KEY):
                await instance.close()
                raise AlreadyRunning(
                    f"another referral-bot is already running on the PostgreSQL database {_safe_dsn(dsn)}; "
                    "stop it first, or give this one its own database"
                )
        try:
            db = await PgDatabase.open(dsn)
        except BaseException as exc:
            if instance is not None:
                await instance.close()
            if isinstance(exc, asyncpg.ReadOnlySQLTransactionError):  # a migration could not write
                raise StorageError(_read_only(f"the PostgreSQL database {_safe_dsn(dsn)}")) from None
            raise
        store = cls(db, keys, AnchorFile(anchor_path) if anchor_path is not None else None)  # type: ignore[arg-type]
        store._instance_conn = instance
        await store._start(f"the PostgreSQL database {_safe_dsn(dsn)}", probe_write=exclusive)
        return store

    def _is_read_only(self, exc: BaseException) -> bool:
        return isinstance(exc, asyncpg.ReadOnlySQLTransactionError) or super()._is_read_only(exc)

    @classmethod
    def _read_only_message(cls, where: str) -> str:
        return _read_only(where)

    async def _after_upgrade(self) -> None:
        await self.db.vacuum_full("outbox")  # type: ignore[attr-defined]

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            if self._instance_conn is not None:
                await self._instance_conn.close()  # ends the session: the advisory lock goes
                self._instance_conn = None

    @contextlib.asynccontextmanager
    async def transaction(self):  # type: ignore[override]
        try:
            async with super().transaction() as work:
                yield work
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise StoreError(f"database error: {type(exc).__name__}: {exc}") from exc
