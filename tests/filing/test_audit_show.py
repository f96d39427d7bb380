"""`referral-bot audit show R-…` and `audit show --patient REF` on a real SQLite store."""
from __future__ import annotations

import asyncio

from bot.cli import main as cli_main
from handlers.events import SpecialtyThread, ThreadActivity
from storage.keys import generate_key_file, load_key_file
from storage.sqlite_store import SQLiteStore
from tests.handlers.helpers import (
    CONSENT_OK, DERM, DERM2, GP, Harness, consent_id_from, jpeg_with_metadata, policy, referral_id_from)


async def _story(db_path, key_file) -> tuple[str, str]:
    keys = load_key_file(key_file)
    store = await SQLiteStore.open(db_path, keys)
    try:
        h = Harness(policy=policy(filing_enabled=True))
        h.store = store
        h.workflow.store = store
        h.workflow.hasher = keys.patient_ref_hasher()  # as the bot does
        h.room_members = ("@bot:example.org", DERM.user_id, DERM2.user_id)
        cid = consent_id_from(await h.say(GP, CONSENT_OK))
        rid = referral_id_from(await h.say(GP, f"!refer derm {cid} rash on the shin"))
        await h.drain()
        await h.send_image(GP, jpeg_with_metadata())
        await h.drain()
        await h.workflow.handle(ThreadActivity(h.eid(), DERM2, h.now, SpecialtyThread("dermatology", rid)))
        await h.say(DERM, "!opinion eczema", place=SpecialtyThread("dermatology", rid))
        await h.drain()
        h.advance(days=2)
        await h.tick()
        await h.drain()
        return cid, rid
    finally:
        await store.close()


def test_audit_show_reads_like_a_story_and_answers_a_subject_access_request(tmp_path, capsys):
    key_file = generate_key_file(tmp_path / "bot.key")
    db = tmp_path / "bot.sqlite3"
    cid, rid = asyncio.run(_story(db, key_file))
    assert cli_main(["audit", "show", rid.lower(), "--db", str(db)]) == 0
    out = capsys.readouterr().out
    for words in ("@gp:example.org  opened the referral",
                  "in the room when the image was posted (members: @bot:example.org, @derm2:example.org, @derm:example.org",
                  "@derm2:example.org  wrote in the thread",
                  "@derm:example.org  gave the opinion",
                  "filed the record (to inbox",
                  "removed images from the chat (media deleted from the server"):
        assert words in out, words
    assert "9434765919" not in out

    assert cli_main(["audit", "show", "--patient", "943 476 5919", "--db", str(db), "--key-file", str(key_file)]) == 0
    out = capsys.readouterr().out
    assert f"Consent {cid}" in out and rid in out and "filed to inbox" in out and "opinion by @derm:example.org" in out
    assert "seen in the specialty room by: @bot:example.org, @derm2:example.org, @derm:example.org" in out
    assert "9434765919" not in out and "943 476 5919" not in out
    assert cli_main(["audit", "show", "--patient", "4010232137", "--db", str(db), "--key-file", str(key_file)]) == 0
    assert "No consent or referral is held" in capsys.readouterr().out
    assert cli_main(["audit", "show", "--db", str(db)]) == 2


def test_status_and_metrics_show_failing_filings(tmp_path, capsys):
    """The operator's alert: `referral-bot status` lists a referral whose filing fails,
    and the referral_bot_filing_failed gauge counts it."""
    from bot.metrics import Metrics

    key_file = generate_key_file(tmp_path / "bot.key")
    db = tmp_path / "bot.sqlite3"

    async def story():
        store = await SQLiteStore.open(db, load_key_file(key_file))
        try:
            h = Harness(policy=policy(filing_enabled=True))
            h.store = store
            h.workflow.store = store
            h.fail_filing = "the PACS did not answer."
            cid = consent_id_from(await h.say(GP, CONSENT_OK))
            rid = referral_id_from(await h.say(GP, f"!refer derm {cid} rash"))
            await h.drain()
            await h.say(GP, f"!cancel {rid}")
            await h.drain()
            m = Metrics(store, clock=lambda: h.now)
            await m.refresh()
            return rid, m.exposition().decode()
        finally:
            await store.close()

    rid, exposition = asyncio.run(story())
    assert "referral_bot_filing_failed 1.0" in exposition
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\nsqlite_path = "{db}"\nkey_file = "{key_file}"\n'
                      f'[[filing.sink]]\nname = "pacs"\ntype = "dicomweb"\nurl = "http://127.0.0.1:9/dicom-web"\n')
    assert cli_main(["status", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "1 FAILING" in out and f"{rid}  1 failed attempt(s)" in out
