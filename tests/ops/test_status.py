"""`referral-bot status` shows what the bot gave up on (security review, issue 9): the
dead-letter list and the referrals set aside, and keeps working when a row is damaged."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys

from handlers import actions as A
from handlers import events as E
from storage.keys import generate_key_file, load_keys
from storage.sqlite_store import SQLiteStore
from tests.conftest import REPO_ROOT
from tests.handlers.helpers import CONSENT_OK, GP, Harness, consent_id_from, referral_id_from


def test_status_lists_dead_letters_and_referrals_set_aside(tmp_path):
    key = tmp_path / "bot.key"
    generate_key_file(key)
    config = tmp_path / "config.toml"
    config.write_text('[storage]\nsqlite_path = "bot.sqlite3"\nkey_file = "bot.key"\n')

    async def make_trouble() -> tuple[str, str]:
        store = await SQLiteStore.open(tmp_path / "bot.sqlite3", load_keys(key))
        h = Harness(store=store)
        try:
            cid = consent_id_from(await h.say(GP, CONSENT_OK))
            damaged = referral_id_from(await h.say(GP, f"!refer dermatology {cid} Changing mole?"))
            fine = referral_id_from(await h.say(GP, f"!refer dermatology {cid} Rash?"))
            root = next(e for e in await store.pending_actions() if isinstance(e.action, A.PostThreadRoot)
                        and e.action.referral_id == fine)
            await store.dead_letter(root.outbox_id, kind="PostThreadRoot", referral_id=fine,
                                    reason="I am not a member of the Dermatology advice room.", attempts=1,
                                    at=h.now)
            async with store.db.transaction() as tx:
                await tx.execute("UPDATE referrals SET doc = ? WHERE referral_id = ?", (b"\x01" * 60, damaged))
            h.advance(days=8)
            await h.workflow.handle(E.Tick(at=h.now))
            return damaged, fine
        finally:
            await store.close()

    damaged, fine = asyncio.run(make_trouble())
    run = [sys.executable, "-m", "bot.cli", "status", "--config", str(config)]
    out = subprocess.run(run + ["--json"], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["dead_letters_total"] == 1
    assert info["dead_letters"][0]["referral"] == fine and "not a member" in info["dead_letters"][0]["reason"]
    assert [a["referral"] for a in info["referrals_set_aside"]] == [damaged]
    assert info["referrals_unreadable"] == [damaged]
    text = subprocess.run(run, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT).stdout
    assert "gave up on (dead letters): 1" in text and "Referrals set aside" in text and damaged in text
    assert "mole" not in text.lower() and "rash" not in text.lower()


def test_status_lists_photos_held_for_the_gp_and_escalated_referrals(tmp_path):
    """An operator sees what waits on a person: a photo held for a face (the GP's !blur or
    !discard; destroyed when its held time is over) and a referral escalated to the lead
    with no opinion yet. Ids, states and times only: no question, no file content."""
    from datetime import datetime, timedelta, timezone

    from tests.handlers.helpers import face_jpeg, jpeg_with_metadata

    key = tmp_path / "bot.key"
    generate_key_file(key)
    config = tmp_path / "config.toml"
    config.write_text('[storage]\nsqlite_path = "bot.sqlite3"\nkey_file = "bot.key"\n')

    async def make_waiting() -> tuple[str, str, datetime]:
        store = await SQLiteStore.open(tmp_path / "bot.sqlite3", load_keys(key))
        h = Harness(store=store)
        try:
            cid = consent_id_from(await h.say(GP, CONSENT_OK))
            escalated = referral_id_from(await h.say(GP, f"!refer dermatology {cid} Itchy plaque on the shin?"))
            await h.send_image(GP, jpeg_with_metadata())
            await h.drain()
            h.now = h.now + timedelta(days=3)  # past 16 working hours
            await h.tick()
            held = referral_id_from(await h.say(GP, f"!refer dermatology {cid} Mole on the cheek?"))
            await h.send_image(GP, face_jpeg(), caption=f"{held} photo")
            return escalated, held, h.now + h.policy.held_photo_ttl
        finally:
            await store.close()

    escalated, held, destroyed_at = asyncio.run(make_waiting())
    run = [sys.executable, "-m", "bot.cli", "status", "--config", str(config)]
    out = subprocess.run(run + ["--json"], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert [(i["referral"], i["destroyed_at"]) for i in info["photos_held_for_gp"]] == [
        (held, destroyed_at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"))]
    assert [e["referral"] for e in info["escalated_without_opinion"]] == [escalated]
    text = subprocess.run(run, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT).stdout
    assert "held for the GP's decision (!blur or !discard): 1" in text and held in text
    assert "Escalated to the specialty lead, no opinion yet: 1" in text and escalated in text
    assert "plaque" not in text.lower() and "cheek" not in text.lower()
