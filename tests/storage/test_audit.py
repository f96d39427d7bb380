"""The hash-chained audit trail and `referral-bot audit verify`."""
from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import subprocess
import sys
from datetime import timedelta

import pytest

from bot.cli import main as cli_main
from storage import audit
from storage.audit import GENESIS_HASH, AuditRefused, canonical_json
from storage.db import Database

from .conftest import T0

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


async def _fill(db, n=5):
    for i in range(n):
        async with db.transaction() as tx:
            await audit.append(
                tx,
                at=T0 + timedelta(minutes=i),
                actor="@gp:example.org" if i % 2 == 0 else "@referral-bot",
                action=["consent.recorded", "referral.opened", "image.accepted", "image.posted", "opinion.given"][i % 5],
                referral_id=None if i == 0 else "R-7K3QX9",
                consent_id="C-4F2A1B",
                details={"specialty": "dermatology", "count": i, "identifiable": False},
            )


async def _prepare(db_path, n) -> str:
    """Create a database with n audit entries; return the head hash."""
    db = await Database.open(db_path)
    try:
        await _fill(db, n)
        async with db.read() as tx:
            return (await audit.verify(tx)).head_hash
    finally:
        await db.close()


def _sqlite(db_path) -> sqlite3.Connection:
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("DROP TRIGGER audit_log_no_update")
    conn.execute("DROP TRIGGER audit_log_no_delete")
    return conn


async def test_chain_links_and_hash_formula(db):
    await _fill(db, 3)
    async with db.read() as tx:
        entries = await audit.entries(tx)
        result = await audit.verify(tx)
    assert [e.seq for e in entries] == [1, 2, 3]
    assert entries[0].prev_hash == GENESIS_HASH
    assert entries[1].prev_hash == entries[0].hash and entries[2].prev_hash == entries[1].hash
    e = entries[0]
    body = {"seq": 1, "at": "2026-03-01T09:00:00.000000+00:00", "actor": e.actor, "action": e.action,
            "referral_id": None, "consent_id": "C-4F2A1B", "details": dict(e.details)}
    assert e.hash == hashlib.sha256(GENESIS_HASH.encode() + canonical_json(body)).hexdigest()
    assert result.intact and result.entries == 3 and result.head_hash == entries[2].hash


async def test_empty_trail_is_intact(db):
    async with db.read() as tx:
        result = await audit.verify(tx)
    assert result.intact and result.entries == 0


async def test_database_triggers_block_update_and_delete(db, db_path):
    await _fill(db, 2)
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
def test_tampering_with_one_row_is_detected_and_named(db_path, tamper, broken, capsys):
    asyncio.run(_prepare(db_path, 5))
    conn = _sqlite(db_path)
    conn.execute(tamper)
    conn.close()

    async def check():
        db = await Database.open(db_path)
        try:
            async with db.read() as tx:
                return await audit.verify(tx)
        finally:
            await db.close()

    result = asyncio.run(check())
    assert result.first_broken == broken

    assert cli_main(["audit", "verify", "--db", str(db_path)]) == 1
    out = capsys.readouterr().out
    assert f"audit chain broken at entry {broken}" in out


async def test_rewriting_a_row_and_its_hash_breaks_at_the_next_entry(db_path):
    db = await Database.open(db_path)
    await _fill(db, 4)
    await db.close()
    conn = _sqlite(db_path)
    row = conn.execute("SELECT seq, at, actor, action, referral_id, consent_id, details, prev_hash FROM audit_log WHERE seq = 2").fetchone()
    import json

    body = {"seq": 2, "at": row[1], "actor": "@mallory:example.org", "action": row[3], "referral_id": row[4],
            "consent_id": row[5], "details": json.loads(row[6])}
    forged = hashlib.sha256(row[7].encode() + canonical_json(body)).hexdigest()
    conn.execute("UPDATE audit_log SET actor = ?, hash = ? WHERE seq = 2", ("@mallory:example.org", forged))
    conn.close()
    db = await Database.open(db_path)
    try:
        async with db.read() as tx:
            assert (await audit.verify(tx)).first_broken == 3
    finally:
        await db.close()


def test_cli_intact_and_expect_head(db_path, capsys):
    head = asyncio.run(_prepare(db_path, 5))
    assert cli_main(["audit", "verify", "--db", str(db_path)]) == 0
    assert "audit chain intact: 5 entries" in capsys.readouterr().out
    assert cli_main(["audit", "verify", "--db", str(db_path), "--expect-head", head]) == 0
    capsys.readouterr()
    # cut the last entry off: the chain alone still holds, the recorded head does not
    conn = _sqlite(db_path)
    conn.execute("DELETE FROM audit_log WHERE seq = 5")
    conn.close()
    assert cli_main(["audit", "verify", "--db", str(db_path)]) == 0
    capsys.readouterr()
    assert cli_main(["audit", "verify", "--db", str(db_path), "--expect-head", head]) == 1
    assert "audit chain broken at entry 5" in capsys.readouterr().out


def test_cli_bad_input_is_a_short_message(tmp_path, capsys):
    assert cli_main(["audit", "verify", "--db", str(tmp_path / "absent.sqlite3")]) == 2
    err = capsys.readouterr().err
    assert "no database at" in err and "Traceback" not in err
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"x" * 5000)
    assert cli_main(["audit", "verify", "--db", str(junk)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_cli_as_a_real_process(tmp_path):
    path = tmp_path / "bot.sqlite3"
    asyncio.run(_prepare(path, 3))
    proc = subprocess.run(
        [sys.executable, "-m", "bot.cli", "audit", "verify", "--db", str(path)],
        capture_output=True, text=True, cwd=REPO, timeout=60,
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
async def test_phi_looking_details_are_refused(db, details, match):
    with pytest.raises(AuditRefused, match=match):
        async with db.transaction() as tx:
            await audit.append(tx, at=T0, actor="@gp:example.org", action="x", details=details)
    async with db.read() as tx:
        assert (await audit.verify(tx)).entries == 0  # nothing half-written


async def test_allowed_details_round_trip(db):
    details = {"image_ids": ["img-1", "img-2"], "specialty": "dermatology", "media_deleted": True, "count": 2}
    async with db.transaction() as tx:
        entry = await audit.append(tx, at=T0, actor="@referral-bot", action="image.removed",
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


def test_editing_the_database_file_bytes_is_detected(db_path, capsys):
    """No SQL at all: change one byte of one entry in the file itself (triggers can't help)."""
    asyncio.run(_prepare(db_path, 5))  # closing the last connection checkpoints the WAL
    raw = db_path.read_bytes()
    target = b"image.posted"  # only entry 4 has this action
    assert raw.count(target) == 1
    db_path.write_bytes(raw.replace(target, b"image.pasted"))
    assert cli_main(["audit", "verify", "--db", str(db_path)]) == 1
    assert "audit chain broken at entry 4" in capsys.readouterr().out
