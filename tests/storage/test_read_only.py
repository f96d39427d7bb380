"""Issue 9, finding 4 (the storage part): a read-only database is refused at start with
one plain line, instead of starting and then failing every GP's command (the review saw a
bot that answered nothing and lost the withdrawal). Made read-only for real with the
immutable flag (`chattr +i`), which stops even root; skipped where the filesystem or the
container does not allow setting it."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from storage.db import StorageError
from storage.sqlite_store import SQLiteStore


@pytest.fixture
def immutable():
    marked: list[str] = []

    def mark(path) -> None:
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot make a file immutable here: {done.stderr.strip()}")
        marked.append(str(path))

    yield mark
    for path in marked:
        subprocess.run(["chattr", "-i", path], check=False)


async def test_a_read_only_database_is_refused_at_start(tmp_path, keys, immutable):
    path = tmp_path / "bot.sqlite3"
    store = await SQLiteStore.open(path, keys)
    await store.close()
    immutable(path)
    with pytest.raises(StorageError, match="is read-only, and the bot must write to it"):
        await SQLiteStore.open(path, keys, exclusive=True)


async def test_status_reads_a_read_only_database(tmp_path, keys, immutable):
    """`status` and `export` (not ``exclusive``) only read a database that knows its key:
    they open an immutable file and see its referrals."""
    path = tmp_path / "bot.sqlite3"
    store = await SQLiteStore.open(path, keys)
    await store.close()
    immutable(path)
    store = await SQLiteStore.open(path, keys)
    try:
        async with store.read() as tx:
            assert await tx.all_referrals() == []
    finally:
        await store.close()


def test_run_refuses_a_read_only_database_with_one_line(tmp_path, key_file, immutable):
    import asyncio

    from storage.keys import load_key_file

    db = tmp_path / "bot.sqlite3"

    async def make():
        store = await SQLiteStore.open(db, load_key_file(key_file))
        await store.close()

    asyncio.run(make())
    (tmp_path / "config.toml").write_text(f"""
[matrix]
homeserver = "http://127.0.0.1:9"
user_id = "@bot:example.org"
password_env = "TEST_BOT_PASSWORD"
store_dir = "store"

[storage]
sqlite_path = "bot.sqlite3"
key_file = "{key_file}"

[directory]
allowed_servers = ["example.org"]
""")
    immutable(db)
    proc = subprocess.run([sys.executable, "-m", "bot.cli", "run", "--config", str(tmp_path / "config.toml")],
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, TEST_BOT_PASSWORD="x", PYTHONUNBUFFERED="1"))
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("referral-bot")]
    assert lines == [f"referral-bot run: could not start: the database {db} is read-only, and the bot must write "
                     "to it: check the file's owner and permissions, the disk's mount options and `lsattr` "
                     "(immutable)"], proc.stderr
    assert "Traceback" not in proc.stderr


async def test_status_opens_the_store_while_the_bot_holds_the_write_lock(tmp_path, keys):
    """main's da9b2a7 kept: `status` next to the running bot takes no write lock when it
    opens a store that knows its key (it failed 1 run in 3 with 'database is locked')."""
    import sqlite3
    import time

    path = tmp_path / "bot.sqlite3"
    store = await SQLiteStore.open(path, keys)
    await store.close()
    holder = sqlite3.connect(str(path), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the bot in the middle of a write
    try:
        t0 = time.monotonic()
        status = await SQLiteStore.open(path, keys)
        try:
            async with status.read() as tx:
                assert await tx.all_referrals() == []
        finally:
            await status.close()
        assert time.monotonic() - t0 < 2.0  # not after waiting out the busy timeout
    finally:
        holder.execute("ROLLBACK")
        holder.close()
