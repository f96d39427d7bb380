"""A database written before schema version 6 (``data/v3-store.sqlite3``, made by the
program as it was, see ``data/make_v3_store.py``) is upgraded once when the bot opens it
with its key: migrations 004 to 007 run (006 scrubs done outbox payloads and adds versions); the store then
re-anchors the old SHA-256 audit chain under the HMAC chain, re-seals every record with
version 1, seals the pending outbox payloads and signs the state. Nothing is lost, and no
clinical text is left in clear."""
from __future__ import annotations

import asyncio
import base64
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from bot.cli import main as cli_main
from handlers import actions as A
from storage import audit
from storage.db import Database, StorageError, latest_version
from storage.keys import Keys
from storage.sqlite_store import SQLiteStore
from tests.handlers.helpers import Harness

DATA = Path(__file__).resolve().parent / "data"
NHS = b"9434765919"
QUESTION_1 = b"Spreading ring-shaped rash on the forearm"
QUESTION_2 = b"Pearly nodule on the left shin"
OPINION_1 = b"Discoid eczema: emollients"
SECRETS = (NHS, QUESTION_1, QUESTION_2, OPINION_1)


@pytest.fixture
def old_store(tmp_path):
    """(path, keys, key file) of a fresh copy of the version-3 database."""
    path = tmp_path / "bot.sqlite3"
    shutil.copy(DATA / "v3-store.sqlite3", path)
    master = base64.b64decode((DATA / "v3-store.key").read_text().strip())
    key_file = tmp_path / "bot.key"
    key_file.write_text(base64.b64encode(master).decode() + "\n")
    key_file.chmod(0o600)
    return path, Keys.from_master(master), key_file


def raw_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists())


def _legacy_entries(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT COUNT(*) FROM audit_log").fetchone()[0]
    finally:
        conn.close()


async def test_the_old_database_really_is_the_finding(old_store):
    """The fixture reproduces issue 9, finding 2 on the old program: clear text in the file."""
    path, _, _ = old_store
    raw = raw_bytes(path)
    assert all(s in raw for s in SECRETS)
    db = await Database.open(path, migrate=False)
    try:
        assert await db.schema_version() == 3
    finally:
        await db.close()


async def test_a_version_3_store_is_upgraded_once_and_keeps_working(old_store, capsys):
    path, keys, key_file = old_store
    old_entries = _legacy_entries(path)
    store = await SQLiteStore.open(path, keys)
    try:
        assert await store.db.schema_version() == latest_version() == 7
        chain = await store.verify_audit()
        assert chain.intact and chain.legacy_entries == old_entries and chain.entries == old_entries + 1
        last = (await store.audit_entries())[-1]
        assert last.action == audit.REANCHOR_ACTION and dict(last.details) == {"count": old_entries}
        # the pending actions are all still there, readable, in order
        pending = [e.action for e in await store.pending_actions()]
        assert [type(a).__name__ for a in pending] == ["Notify", "Reply", "PostThreadRoot", "Reply"]
        assert OPINION_1.decode() in pending[0].text and QUESTION_2.decode() in pending[2].text
        async with store.read() as tx:
            refs = await tx.all_referrals()
            consent = await tx.get_consent(refs[0].consent_id)  # re-sealed as version 1, readable
        assert sorted(r.state.value for r in refs) == ["opened", "opinion_given"]
        assert consent is not None and consent.withdrawn_at is None
    finally:
        await store.close()
    # nothing clinical is left in clear: done payloads were dropped, pending ones sealed
    raw = raw_bytes(path)
    for secret in SECRETS:
        assert secret not in raw, secret
    assert await asyncio.to_thread(cli_main, ["audit", "verify", "--db", str(path), "--key-file", str(key_file)]) == 0
    out = capsys.readouterr().out
    assert f"audit chain intact: {old_entries + 1} entries ({old_entries} from before signing, re-anchored)" in out

    # the second start upgrades nothing, and the workflow carries on where it stopped
    store = await SQLiteStore.open(path, keys)
    try:
        assert (await store.verify_audit()).entries == old_entries + 1
        h = Harness(store=store)
        done = await h.drain()
        assert any(isinstance(a, A.Notify) and OPINION_1.decode() in a.text for a in done)
        assert await store.pending_actions() == []
    finally:
        await store.close()
    for secret in SECRETS:
        assert secret not in raw_bytes(path), secret


def test_rewriting_an_old_entry_after_the_upgrade_breaks_the_chain(old_store, capsys):
    """The old entries keep their SHA-256 links, but the re-anchoring entry's HMAC covers
    their head: re-hashing them after a rewrite no longer passes."""
    path, keys, key_file = old_store
    n = _legacy_entries(path)

    async def upgrade():
        store = await SQLiteStore.open(path, keys)
        await store.close()

    asyncio.run(upgrade())
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER audit_log_no_update")
    conn.execute("UPDATE audit_log SET actor = '@mallory:example.org' WHERE seq = 2")
    prev = conn.execute("SELECT hash FROM audit_log WHERE seq = 1").fetchone()[0]
    for seq in range(2, n + 1):
        row = conn.execute("SELECT at, actor, action, referral_id, consent_id, details FROM audit_log WHERE seq = ?",
                           (seq,)).fetchone()
        body = {"seq": seq, "at": row[0], "actor": row[1], "action": row[2], "referral_id": row[3],
                "consent_id": row[4], "details": json.loads(row[5])}
        digest = audit.legacy_entry_hash(prev, body)
        conn.execute("UPDATE audit_log SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, digest, seq))
        prev = digest
    conn.close()
    assert cli_main(["audit", "verify", "--db", str(path), "--key-file", str(key_file)]) == 1
    assert (f"audit chain broken at entry {n + 1}: its link to the previous entry does not match"
            in capsys.readouterr().out)


async def test_an_old_chain_that_is_already_broken_is_not_signed(old_store):
    """Fail closed: the upgrade never signs a trail that was tampered with before."""
    path, keys, _ = old_store
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER audit_log_no_update")
    conn.execute("UPDATE audit_log SET actor = '@mallory:example.org' WHERE seq = 3")
    conn.close()
    with pytest.raises(StorageError, match="audit chain is broken at entry 3 .* not re-anchored"):
        await SQLiteStore.open(path, keys)
    db = await Database.open(path, migrate=False)
    try:  # the SQL migration ran, the keyed upgrade did not: it is still pending
        async with db.read() as tx:
            assert await tx.scalar("SELECT value FROM store_meta WHERE name = 'keyed_upgrade'") == "006"
            assert await tx.scalar("SELECT COUNT(*) FROM store_meta WHERE name = 'state_seal'") == 0
    finally:
        await db.close()
