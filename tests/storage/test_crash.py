"""A crash between steps loses nothing and repeats nothing.

A real child process does real store work and is killed with SIGKILL (no
cleanup, no rollback handler runs); then the database is reopened.
"""
from __future__ import annotations

import base64
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage.keys import ENV_VAR, Keys
from storage.sqlite_store import SQLiteStore

from .crash_child import T0, transition

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def master() -> bytes:
    return os.urandom(32)


def _spawn(mode: str, db_path: Path, master: bytes) -> subprocess.Popen:
    env = dict(os.environ, **{ENV_VAR: base64.b64encode(master).decode()})
    return subprocess.Popen(
        [sys.executable, "-m", "tests.storage.crash_child", mode, str(db_path)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _wait_for(proc: subprocess.Popen, line: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = proc.stdout.readline()
        if got.strip() == line:
            return
        if not got and proc.poll() is not None:
            raise AssertionError(f"child exited early: {proc.stderr.read()}")
    raise AssertionError(f"child never printed {line!r}")


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    proc.stdout.close()
    proc.stderr.close()


async def test_killed_inside_a_transaction_leaves_none_of_its_writes(tmp_path, master):
    db_path = tmp_path / "bot.sqlite3"
    proc = _spawn("mid-tx", db_path, master)
    _wait_for(proc, "IN-TX")
    _kill(proc)

    store = await SQLiteStore.open(db_path, Keys.from_master(master))
    try:
        async with store.read() as tx:
            assert await tx.get_referral("R-000001") is None
            assert await tx.vault_entry("img-1") is None
        assert await store.pending_actions() == []
        assert (await store.verify_audit()).entries == 0
        # the event was never marked, so its redelivery is handled in full, once
        async with store.transaction() as tx:
            await transition(tx, 1)
        assert [p.action.key for p in await store.pending_actions()] == ["$e1/0", "$e1/1"]
        assert await store.vault_get("img-1") == bytes([1]) * 20_000
    finally:
        await store.close()


async def test_killed_mid_drain_redelivers_unfinished_actions_exactly_once(tmp_path, master):
    db_path = tmp_path / "bot.sqlite3"
    proc = _spawn("mid-drain", db_path, master)
    _wait_for(proc, "MID-DRAIN")
    _kill(proc)

    store = await SQLiteStore.open(db_path, Keys.from_master(master))
    try:
        pending = await store.pending_actions()
        assert [p.action.key for p in pending] == ["$e1/1", "$e1/2"]  # the done one is not repeated
        # the transport redelivers the same chat event after the crash: a no-op
        async with store.transaction() as tx:
            assert await tx.mark_processed("$e1", T0) is False
        assert [p.action.key for p in await store.pending_actions()] == ["$e1/1", "$e1/2"]
        for p in pending:
            await store.complete_action(p.outbox_id)
        assert await store.pending_actions() == []
        async with store.read() as tx:
            assert (await tx.get_referral("R-000001")) is not None
            assert await tx.vault_get("img-1") == bytes([1]) * 20_000
    finally:
        await store.close()


@pytest.mark.parametrize("attempt", range(3))
async def test_killed_at_a_random_moment_every_transition_is_all_or_nothing(tmp_path, master, attempt):
    db_path = tmp_path / "bot.sqlite3"
    proc = _spawn("loop", db_path, master)
    _wait_for(proc, "5")
    time.sleep(random.uniform(0.0, 0.3))
    _kill(proc)

    store = await SQLiteStore.open(db_path, Keys.from_master(master))
    try:
        async with store.read() as tx:
            referrals = await tx.all_referrals()
            n = len(referrals)
            assert n >= 6
            assert [r.referral_id for r in referrals] == [f"R-{i:06d}" for i in range(n)]
            for i in range(n):
                assert await tx.vault_get(f"img-{i}") == bytes([i % 256]) * 20_000
            assert await tx.get_referral(f"R-{n:06d}") is None
            assert await tx.vault_entry(f"img-{n}") is None
        keys = [p.action.key for p in await store.pending_actions(limit=100_000)]
        assert keys == [f"$e{i}/{k}" for i in range(n) for k in range(2)]
        audit = await store.verify_audit()
        assert audit.intact and audit.entries == n
        async with store.transaction() as tx:
            for i in range(n):
                assert await tx.mark_processed(f"$e{i}", T0) is False
            assert await tx.mark_processed(f"$e{n}", T0) is True
    finally:
        await store.close()
