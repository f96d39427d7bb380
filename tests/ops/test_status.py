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
