"""The HMAC-chained audit trail, its signed head, and `referral-bot audit verify`."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from bot.cli import main as cli_main
from storage import audit
from storage.audit import GENESIS_HASH, AuditRefused, canonical_json
from storage.db import Database
from storage.keys import Keys, generate_key_file
from storage.sqlite_store import SQLiteStore
from handlers.model import AuditEntry

from .conftest import T0

REPO = Path(__file__).resolve().parents[2]


def _master_b64(key_file) -> str:
    return [l for l in Path(key_file).read_text().splitlines() if l and not l.startswith("#")][0]


ACTIONS = ["consent.recorded", "referral.opened", "image.accepted", "image.posted", "opinion.given"]


def _entry(i: int) -> AuditEntry:
    return AuditEntry(
        actor="@gp:example.org" if i % 2 == 0 else "@referral-bot",
        action=ACTIONS[i % 5],
        at=T0 + timedelta(minutes=i),
        referral_id=None if i == 0 else "R-7K3QX9",
        consent_id="C-4F2A1B",
        details={"specialty": "dermatology", "count": i, "identifiable": False},
    )


async def _fill(db, key, n=5):
    """n entries straight through storage.audit (no store: the chain alone)."""
    for i in range(n):
        e = _entry(i)
        async with db.transaction() as tx:
            await audit.append(tx, key, at=e.at, actor=e.actor, action=e.action, referral_id=e.referral_id,
                               consent_id=e.consent_id, details=e.details)


async def _prepare(db_path, keys, n) -> str:
    """A store with n audit entries, written the way the bot writes them (signed state and
    anchor file included); returns the head hash."""
    store = await SQLiteStore.open(db_path, keys)
    try:
        for i in range(n):
            async with store.transaction() as tx:
                await tx.append_audit(_entry(i))
        return (await store.verify_audit()).head_hash
    finally:
        await store.close()


def _verify_cli(db_path, key_file, *extra) -> int:
    return cli_main(["audit", "verify", "--db", str(db_path), "--key-file", str(key_file), *extra])


def _sqlite(db_path) -> sqlite3.Connection:
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
    conn.execute("DROP TRIGGER IF EXISTS audit_log_no_delete")
    return conn


async def test_chain_links_and_hmac_formula(db, keys):
    await _fill(db, keys.audit_key, 3)
    async with db.read() as tx:
        entries = await audit.entries(tx)
        result = await audit.verify(tx, keys.audit_key)
    assert [e.seq for e in entries] == [1, 2, 3]
    assert entries[0].prev_hash == GENESIS_HASH
    assert entries[1].prev_hash == entries[0].hash and entries[2].prev_hash == entries[1].hash
    e = entries[0]
    body = {"seq": 1, "at": "2026-03-01T09:00:00.000000+00:00", "actor": e.actor, "action": e.action,
            "referral_id": None, "consent_id": "C-4F2A1B", "details": dict(e.details)}
    message = GENESIS_HASH.encode() + canonical_json(body)
    assert e.hash == hmac.new(keys.audit_key, message, hashlib.sha256).hexdigest()
    assert e.hash != hashlib.sha256(message).hexdigest()  # not the old, unkeyed chain
    assert result.intact and result.entries == 3 and result.head_hash == entries[2].hash


async def test_another_key_cannot_verify_or_extend_the_chain(db, keys):
    await _fill(db, keys.audit_key, 2)
    other = Keys.from_master(os.urandom(32))
    async with db.read() as tx:
        assert (await audit.verify(tx, other.audit_key)).first_broken == 1
    assert keys.audit_key not in (keys.records_key, keys.seal_key, keys.kek, keys.patient_ref_key)


async def test_empty_trail_is_intact(db, keys):
    async with db.read() as tx:
        result = await audit.verify(tx, keys.audit_key)
    assert result.intact and result.entries == 0


async def test_database_triggers_block_update_and_delete(db, db_path, keys):
    await _fill(db, keys.audit_key, 2)
    conn = sqlite3.connect(db_path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE audit_log SET actor = 'x' WHERE seq = 1")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM audit_log WHERE seq = 2")
    finally:
        conn.close()


@pytest.mark.parametrize(
    "tamper, broken",
    [
        ("UPDATE audit_log SET actor = '@mallory:example.org' WHERE seq = 3", 3),
        ("UPDATE audit_log SET details = '{\"count\":99,\"identifiable\":false,\"specialty\":\"dermatology\"}' WHERE seq = 2", 2),
        ("UPDATE audit_log SET at = '2026-03-01T08:00:00.000000+00:00' WHERE seq = 5", 5),
        ("UPDATE audit_log SET referral_id = NULL WHERE seq = 4", 4),
        ("DELETE FROM audit_log WHERE seq = 2", 2),
        ("UPDATE audit_log SET prev_hash = '" + "1" * 64 + "' WHERE seq = 4", 4),
        ("UPDATE audit_log SET details = 'not json' WHERE seq = 1", 1),
    ],
)
def test_tampering_with_one_row_is_detected_and_named(db_path, keys, key_file, tamper, broken, capsys):
    asyncio.run(_prepare(db_path, keys, 5))
    conn = _sqlite(db_path)
    conn.execute(tamper)
    conn.close()

    async def check():
        db = await Database.open(db_path)
        try:
            async with db.read() as tx:
                return await audit.verify(tx, keys.audit_key)
        finally:
            await db.close()

    result = asyncio.run(check())
    assert result.first_broken == broken

    assert _verify_cli(db_path, key_file) == 1
    out = capsys.readouterr().out
    assert f"audit chain broken at entry {broken}" in out


def _rehash(conn, seq_from: int, link) -> None:
    """Recompute every entry's hash from ``seq_from`` on with ``link(prev, body)``: what a
    forger with database access does after rewriting an entry."""
    rows = conn.execute("SELECT seq, at, actor, action, referral_id, consent_id, details FROM audit_log "
                        "ORDER BY seq").fetchall()
    prev = GENESIS_HASH
    for seq, at, actor, action, rid, cid, details in rows:
        if seq >= seq_from:
            body = {"seq": seq, "at": at, "actor": actor, "action": action, "referral_id": rid,
                    "consent_id": cid, "details": json.loads(details)}
            digest = link(prev, body)
            conn.execute("UPDATE audit_log SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, digest, seq))
        prev = conn.execute("SELECT hash FROM audit_log WHERE seq = ?", (seq,)).fetchone()[0]


@pytest.mark.parametrize("forger_key", [None, b"guessed key, not the deployment's"])
def test_rewriting_an_entry_and_rehashing_the_chain_is_detected(db_path, keys, key_file, forger_key, capsys):
    """Issue 9, finding 8: the opinion's actor changed to another user and the chain
    re-hashed (plain SHA-256 as before, or an HMAC under a guessed key) used to verify as
    intact. Without the deployment's audit key the rewritten entry breaks the chain."""
    asyncio.run(_prepare(db_path, keys, 5))
    conn = _sqlite(db_path)
    conn.execute("UPDATE audit_log SET actor = '@mallory:example.org' WHERE seq = 5")  # opinion.given
    if forger_key is None:
        _rehash(conn, 5, lambda prev, body: hashlib.sha256(prev.encode() + canonical_json(body)).hexdigest())
    else:
        _rehash(conn, 5, lambda prev, body: hmac.new(forger_key, prev.encode() + canonical_json(body),
                                                     hashlib.sha256).hexdigest())
    conn.close()
    assert _verify_cli(db_path, key_file) == 1
    assert "audit chain broken at entry 5: its contents do not match its HMAC" in capsys.readouterr().out


def test_rewriting_a_row_with_the_key_still_breaks_the_signed_head(db_path, keys, key_file, capsys):
    """Even re-hashed with the right key (someone who holds it), the signed state still
    names the old head: the rewrite shows up there."""
    asyncio.run(_prepare(db_path, keys, 4))
    conn = _sqlite(db_path)
    conn.execute("UPDATE audit_log SET actor = '@mallory:example.org' WHERE seq = 2")
    _rehash(conn, 2, lambda prev, body: audit.entry_hash(keys.audit_key, prev, body))
    conn.close()
    assert _verify_cli(db_path, key_file) == 1
    assert "audit chain broken at entry 4: it is not the entry the signed state names" in capsys.readouterr().out


def test_cutting_the_tail_is_detected_without_a_recorded_head(db_path, keys, key_file, capsys):
    """Issue 9, finding 8: truncating the tail used to leave a valid shorter chain."""
    head = asyncio.run(_prepare(db_path, keys, 5))
    assert _verify_cli(db_path, key_file) == 0
    out = capsys.readouterr().out
    assert "audit chain intact: 5 entries" in out and f"head hash: {head}" in out
    assert "consistent" in out  # the anchor file was checked too
    assert _verify_cli(db_path, key_file, "--expect-head", head) == 0
    capsys.readouterr()
    conn = _sqlite(db_path)
    conn.execute("DELETE FROM audit_log WHERE seq = 5")
    conn.close()
    assert _verify_cli(db_path, key_file) == 1
    assert "audit chain broken at entry 5" in capsys.readouterr().out
    assert _verify_cli(db_path, key_file, "--expect-head", head) == 1
    assert "audit chain broken at entry 5" in capsys.readouterr().out


def test_cutting_the_tail_and_putting_back_the_old_signed_state_is_caught_by_the_anchor_file(
        db_path, keys, key_file, capsys):
    """The forger also keeps a copy of the signed state row from before the last entry and
    puts it back: the database is then consistent with itself, but older than the anchor
    file outside it. Removing the anchor file too is reported, not passed."""
    asyncio.run(_prepare(db_path, keys, 4))
    conn = _sqlite(db_path)
    old_state = conn.execute("SELECT value FROM store_meta WHERE name = 'state_seal'").fetchone()[0]
    conn.close()
    asyncio.run(_more(db_path, keys, 1))  # entry 5, signed state generation + 1
    conn = _sqlite(db_path)
    conn.execute("DELETE FROM audit_log WHERE seq = 5")
    conn.execute("UPDATE store_meta SET value = ? WHERE name = 'state_seal'", (old_state,))
    conn.close()
    assert _verify_cli(db_path, key_file) == 1
    assert ("audit chain broken at entry 5: the anchor file names entry 5 but the trail ends at entry 4"
            in capsys.readouterr().out)
    anchor = Path(str(db_path) + ".anchor")
    moved = anchor.rename(anchor.with_suffix(".kept"))
    assert _verify_cli(db_path, key_file) == 1
    out = capsys.readouterr().out
    assert "anchor file" in out and "is missing" in out
    assert _verify_cli(db_path, key_file, "--anchor", str(moved)) == 1
    assert "audit chain broken at entry 5" in capsys.readouterr().out
    # a restored backup is checked without the anchor (it is older than the anchor by design):
    # the chain and the signed state in it hold, and the output says what was not checked
    assert _verify_cli(db_path, key_file, "--no-anchor") == 0
    assert "anchor file not checked" in capsys.readouterr().out


async def _more(db_path, keys, n):
    store = await SQLiteStore.open(db_path, keys)
    try:
        for i in range(n):
            async with store.transaction() as tx:
                await tx.append_audit(_entry(10 + i))
    finally:
        await store.close()


def test_cli_bad_input_is_a_short_message(tmp_path, keys, key_file, monkeypatch, capsys):
    monkeypatch.delenv("REFERRAL_BOT_KEK", raising=False)
    assert _verify_cli(tmp_path / "absent.sqlite3", key_file) == 2
    err = capsys.readouterr().err
    assert "no database at" in err and "Traceback" not in err
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"x" * 5000)
    assert _verify_cli(junk, key_file) == 2
    assert "Traceback" not in capsys.readouterr().err
    path = tmp_path / "bot.sqlite3"
    asyncio.run(_prepare(path, keys, 2))
    assert cli_main(["audit", "verify", "--db", str(path)]) == 2  # no key: it cannot check an HMAC
    assert "needs the deployment key" in capsys.readouterr().err
    other = generate_key_file(tmp_path / "other.key")
    assert _verify_cli(path, other) == 2
    assert "is not this database's key" in capsys.readouterr().err


def test_cli_as_a_real_process(tmp_path, keys, key_file):
    path = tmp_path / "bot.sqlite3"
    asyncio.run(_prepare(path, keys, 3))
    proc = subprocess.run(
        [sys.executable, "-m", "bot.cli", "audit", "verify", "--db", str(path)],
        capture_output=True, text=True, cwd=REPO, timeout=60,
        env={**os.environ, "REFERRAL_BOT_KEK": _master_b64(key_file)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "audit chain intact: 3 entries" in proc.stdout


@pytest.mark.parametrize(
    "details, match",
    [
        ({"patient_ref": "hmac-sha256:ab"}, "looks like patient data"),
        ({"nhs_number": "9434765919"}, "looks like patient data"),
        ({"text": "rash on left cheek"}, "looks like patient data"),
        ({"question": "is this a melanoma?"}, "looks like patient data"),
        ({"opinion": "benign"}, "looks like patient data"),
        ({"image": "base64..."}, "looks like patient data"),
        ({"whatever": 1}, "not on the audit whitelist"),
        ({"reason": "x" * 500}, "short single-line"),
        ({"reason": "two\nlines"}, "short single-line"),
        ({"image_id": b"\xff\xd8"}, "binary"),
        ({"image_ids": [["nested"]]}, "flat list"),
    ],
)
async def test_phi_looking_details_are_refused(db, keys, details, match):
    with pytest.raises(AuditRefused, match=match):
        async with db.transaction() as tx:
            await audit.append(tx, keys.audit_key, at=T0, actor="@gp:example.org", action="x", details=details)
    async with db.read() as tx:
        assert (await audit.verify(tx, keys.audit_key)).entries == 0  # nothing half-written


async def test_allowed_details_round_trip(db, keys):
    details = {"image_ids": ["img-1", "img-2"], "specialty": "dermatology", "media_deleted": True, "count": 2}
    async with db.transaction() as tx:
        entry = await audit.append(tx, keys.audit_key, at=T0, actor="@referral-bot", action="image.removed",
                                   referral_id="R-1", details=details)
    async with db.read() as tx:
        (stored,) = await audit.entries(tx, referral_id="R-1")
    assert stored == entry and stored.details == details


def test_every_details_key_the_handlers_use_is_on_the_whitelist():
    """The store refuses unknown keys (fail closed), so the handlers' keys must all be allowed."""
    import ast

    from storage.audit import ALLOWED_DETAIL_KEYS

    used: dict[str, str] = {}
    for path in sorted((REPO / "handlers").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name == "_audit":
                for kw in node.keywords:
                    if kw.arg and kw.arg not in ("actor", "action", "at", "ref", "referral_id", "consent_id"):
                        used[kw.arg] = path.name
            if name == "AuditEntry":
                for kw in node.keywords:
                    if kw.arg == "details" and isinstance(kw.value, ast.Dict):
                        for k in kw.value.keys:
                            if isinstance(k, ast.Constant):
                                used[k.value] = path.name
    assert used, "no audit calls found in handlers/ (did the helper get renamed?)"
    missing = {k: f for k, f in used.items() if k not in ALLOWED_DETAIL_KEYS}
    assert not missing, f"audit details keys not on storage.audit.ALLOWED_DETAIL_KEYS: {missing}"


def test_editing_the_database_file_bytes_is_detected(db_path, keys, key_file, capsys):
    """No SQL at all: change one byte of one entry in the file itself (triggers can't help)."""
    asyncio.run(_prepare(db_path, keys, 5))  # closing the last connection checkpoints the WAL
    raw = db_path.read_bytes()
    target = b"image.posted"  # only entry 4 has this action
    assert raw.count(target) == 1
    db_path.write_bytes(raw.replace(target, b"image.pasted"))
    assert _verify_cli(db_path, key_file) == 1
    assert "audit chain broken at entry 4" in capsys.readouterr().out
