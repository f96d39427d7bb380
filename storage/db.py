"""The SQLite database: connection settings, numbered migrations, transactions.

* One aiosqlite connection per :class:`Database`, in autocommit mode; every
  write happens inside an explicit ``BEGIN IMMEDIATE ... COMMIT`` opened by
  :meth:`Database.transaction` (rolled back on any exception), serialised by
  an asyncio lock so two coroutines never interleave inside one transaction.
* Pragmas: WAL journal, ``foreign_keys=ON``, ``secure_delete=ON`` (deleted
  content is overwritten with zeros: needed for crypto-shredding),
  ``synchronous=FULL`` (a committed transition survives power loss).
* Migrations are files ``storage/migrations/NNN_name.sql`` (or
  ``NNN_name.<dialect>.sql`` for the few statements that can't be portable),
  applied in order, each in its own transaction together with its row in
  ``schema_version`` (the Synapse "numbered deltas" scheme).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterable, Sequence

import aiosqlite

from storage import queries as Q

log = logging.getLogger("referral_bot.storage")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
DIALECT = "sqlite"
BUSY_TIMEOUT_MS = 5000

_MIGRATION_NAME = re.compile(r"^(\d{3,})_([a-z0-9_]+?)(?:\.(sqlite|postgres))?\.sql$")


class StorageError(Exception):
    """A storage problem with a short, human-readable message."""


class SchemaTooNew(StorageError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    def statements(self) -> list[str]:
        return split_statements(self.path.read_text(encoding="utf-8"))


def render(sql: str, dialect: str = DIALECT) -> str:
    """Rewrite ``?`` placeholders for a dialect (``$1, $2 ...`` for PostgreSQL).

    Placeholders inside single-quoted literals are left alone.
    """
    if dialect == "sqlite":
        return sql
    if dialect != "postgres":
        raise ValueError(f"unknown SQL dialect {dialect!r}")
    out: list[str] = []
    n = 0
    in_quote = False
    for ch in sql:
        if ch == "'":
            in_quote = not in_quote
        if ch == "?" and not in_quote:
            n += 1
            out.append(f"${n}")
        else:
            out.append(ch)
    return "".join(out)


def split_statements(script: str) -> list[str]:
    """Split a migration script into complete statements (triggers included).

    ``sqlite3.Connection.executescript`` would COMMIT first, breaking the
    one-transaction-per-migration rule, so statements are run one by one.
    """
    statements: list[str] = []
    buf: list[str] = []
    for line in script.splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("--")):
            continue
        buf.append(line)
        candidate = "\n".join(buf)
        if sqlite3.complete_statement(candidate):
            statements.append(candidate.strip())
            buf = []
    tail = "\n".join(buf).strip()
    if tail and not all(l.strip().startswith("--") or not l.strip() for l in buf):
        raise StorageError(f"incomplete SQL statement at the end of a migration: {tail[:60]!r}")
    return statements


def discover_migrations(directory: Path = MIGRATIONS_DIR, dialect: str = DIALECT) -> list[Migration]:
    """The migrations for ``dialect``, in version order; refuses gaps and duplicates."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        m = _MIGRATION_NAME.match(path.name)
        if not m:
            raise StorageError(f"migration file name not understood: {path.name}")
        version, name, only_for = int(m.group(1)), m.group(2), m.group(3)
        if only_for is not None and only_for != dialect:
            continue
        if version in found:
            raise StorageError(f"two migrations numbered {version:03d}")
        found[version] = Migration(version, name, path)
    versions = sorted(found)
    if not versions:
        raise StorageError(f"no migrations found in {directory} (was the package installed without its data files?)")
    if versions != list(range(1, len(versions) + 1)):
        raise StorageError(f"migration numbers must run 1..N without gaps, found {versions}")
    return [found[v] for v in versions]


def latest_version(directory: Path = MIGRATIONS_DIR) -> int:
    migrations = discover_migrations(directory)
    return migrations[-1].version if migrations else 0


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def to_text(at: datetime) -> str:
    """Timestamps are stored as ISO-8601 UTC text (portable, sorts correctly)."""
    if at.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware (UTC)")
    return at.astimezone(timezone.utc).isoformat(timespec="microseconds")


def from_text(value: str | None) -> datetime | None:
    if value is None:
        return None
    return datetime.fromisoformat(value)


class Tx:
    """One open transaction: thin helpers over the connection."""

    def __init__(self, conn: aiosqlite.Connection):
        self.conn = conn
        #: run (in order, still under the database's lock) once the transaction has committed
        self.after_commit: list[Callable[[], None]] = []

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        cur = await self.conn.execute(render(sql), tuple(params))
        try:
            return cur.rowcount
        finally:
            await cur.close()

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self.conn.executemany(render(sql), [tuple(r) for r in rows])

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        async with self.conn.execute(render(sql), tuple(params)) as cur:
            return await cur.fetchone()

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        async with self.conn.execute(render(sql), tuple(params)) as cur:
            return list(await cur.fetchall())

    async def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = await self.fetchone(sql, params)
        return None if row is None else row[0]


class Database:
    """An open SQLite database at the latest (or a chosen) schema version."""

    def __init__(self, path: Path, conn: aiosqlite.Connection):
        self.path = path
        self.conn = conn
        self._lock = asyncio.Lock()

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        migrate: bool = True,
        create: bool = True,
        target_version: int | None = None,
        migrations_dir: Path = MIGRATIONS_DIR,
    ) -> "Database":
        path = Path(path)
        if path.parent and not path.parent.exists():
            raise StorageError(f"database folder does not exist: {path.parent}")
        existed = path.exists()
        if not existed and not create:
            raise StorageError(f"no database at {path}")
        try:
            conn = await aiosqlite.connect(str(path), isolation_level=None)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open database {path}: {exc}") from None
        conn.row_factory = sqlite3.Row
        db = cls(path, conn)
        try:
            await db._configure()
            if not existed:
                _restrict_permissions(path)
            if migrate:
                await db.migrate(target_version, migrations_dir=migrations_dir)
        except sqlite3.DatabaseError as exc:
            await conn.close()
            raise StorageError(f"{path} is not a usable referral-bot database: {exc}") from None
        except BaseException:
            await conn.close()
            raise
        return db

    async def _configure(self) -> None:
        # busy_timeout first: switching to WAL takes a lock, and a second process (the
        # `status` command next to the running bot) must wait for it, not fail at once
        for pragma in (
            f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}",
            "PRAGMA journal_mode = WAL",
            "PRAGMA foreign_keys = ON",
            "PRAGMA secure_delete = ON",
            "PRAGMA synchronous = FULL",
        ):
            await self.conn.execute(pragma)

    async def close(self) -> None:
        await self.conn.close()

    async def __aenter__(self) -> "Database":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- transactions ---------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; ``ROLLBACK`` if the block raises."""
        async with self._lock:
            await self.conn.execute("BEGIN IMMEDIATE")
            work = Tx(self.conn)
            try:
                yield work
            except BaseException:
                if self.conn.in_transaction:  # SQLite may have rolled back already (disk full)
                    await self.conn.execute("ROLLBACK")
                raise
            else:
                try:
                    await self.conn.execute("COMMIT")
                except BaseException:
                    # a COMMIT that fails (disk full, busy) leaves the transaction open:
                    # close it, or every later BEGIN fails and the store never recovers
                    if self.conn.in_transaction:
                        await self.conn.execute("ROLLBACK")
                    raise
                run_after_commit(work)

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[Tx]:
        """A read-only snapshot (deferred transaction, always rolled back)."""
        async with self._lock:
            await self.conn.execute("BEGIN")
            try:
                yield Tx(self.conn)
            finally:
                await self.conn.execute("ROLLBACK")

    # -- migrations -------------------------------------------------------------------
    async def schema_version(self) -> int:
        async with self.read() as tx:
            if not await tx.scalar(Q.SCHEMA_VERSION_TABLE_EXISTS):
                return 0
            return int(await tx.scalar(Q.CURRENT_VERSION))

    async def migrate(self, target_version: int | None = None, *, migrations_dir: Path = MIGRATIONS_DIR) -> list[int]:
        """Apply every pending migration up to ``target_version`` (default: latest).

        Returns the versions applied. Each one runs in its own transaction with
        its ``schema_version`` row, so a failure leaves the previous version intact.
        """
        migrations = discover_migrations(migrations_dir)
        latest = migrations[-1].version if migrations else 0
        target = latest if target_version is None else target_version
        if target > latest:
            raise StorageError(f"no migration {target:03d} (latest is {latest:03d})")
        # read first: a database that is up to date (the usual case, and always for a
        # second process such as `status` next to the running bot) takes no write lock
        current = await self.schema_version()
        if current == 0:
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
            try:
                async with self.transaction() as tx:
                    for statement in migration.statements():
                        await tx.execute(statement)
                    await tx.execute(Q.RECORD_VERSION, (migration.version, migration.name, to_text(utc_now())))
            except sqlite3.Error as exc:
                raise StorageError(
                    f"migration {migration.version:03d}_{migration.name} failed and was rolled back: {exc}"
                ) from None
            applied.append(migration.version)
        return applied

    async def checkpoint(self) -> bool:
        """Empty the WAL, without ever blocking another connection: True if the WAL is now
        empty, False if it must be tried again later (``SQLiteStore.housekeeping``, on
        every tick). Used after shredding and scrubbing, whose old page images (key
        material included) would otherwise stay in the -wal file.

        First a PASSIVE checkpoint: it copies what it can into the main file and never
        takes the write lock or waits. Only if that left nothing to copy (no reader holds
        an older snapshot, no writer is adding frames: the WAL is idle) comes the
        TRUNCATE, which then holds the write lock just to cut the file, and with a busy
        timeout of 0 gives up at once if anybody else reads or writes. A TRUNCATE on a
        WAL with frames still to copy would hold the write lock for the whole copy and
        its fsync, stalling every writer (the bot's next event, `export`)."""
        async with self._lock:
            busy, frames, copied = await self._wal_checkpoint("PASSIVE")
            if busy or frames < 0 or copied < frames:
                return False
            busy, _, _ = await self._wal_checkpoint("TRUNCATE")
            return busy == 0

    async def checkpoint_at_close(self) -> bool:
        """The last chance before the connection closes (shutdown): TRUNCATE at once,
        never waiting for another connection. True if the WAL is now empty."""
        async with self._lock:
            busy, _, _ = await self._wal_checkpoint("TRUNCATE")
            return busy == 0

    async def _wal_checkpoint(self, mode: str) -> tuple[int, int, int]:
        """(busy, frames in the WAL, frames copied); busy = 1 when it was blocked. The
        busy timeout is 0 for it: a checkpoint never waits for another connection."""
        await self.conn.execute("PRAGMA busy_timeout = 0")
        try:
            async with self.conn.execute(f"PRAGMA wal_checkpoint({mode})") as cur:
                row = await cur.fetchone()
        finally:
            await self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if row is None:
            return 1, -1, -1
        return int(row[0]), int(row[1]), int(row[2])


def run_after_commit(tx: Any) -> None:
    """Run a committed transaction's hooks; a failing hook is logged, never raised (the
    transaction did commit, and the caller must not be told otherwise)."""
    for hook in tx.after_commit:
        try:
            hook()
        except Exception:
            log.exception("an after-commit step failed")


def _restrict_permissions(path: Path) -> None:
    """The database holds wrapped keys and ciphertext: owner-only, like the key file."""
    for suffix in ("", "-wal", "-shm"):
        p = Path(str(path) + suffix)
        with contextlib.suppress(OSError):
            if p.exists():
                os.chmod(p, 0o600)
