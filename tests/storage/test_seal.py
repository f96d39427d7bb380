"""Issue 9, finding 8: the store's signed state and its anchor file (storage/seal.py).

The replayed consent of the review, through the workflow and across a restart; a whole
database put back as it was earlier (caught by the anchor file); the anchor file removed
(recreated, loudly); and the signed head in the operator log."""
from __future__ import annotations

import asyncio
import logging
import shutil
import sqlite3
from pathlib import Path

import pytest

from bot.cli import main as cli_main
from storage.db import StorageError
from storage.seal import AnchorFile, head_for_log, head_from_text
from storage.sqlite_store import SQLiteStore
from tests.handlers.helpers import CONSENT_OK, GP, Harness, consent_id_from, referral_id_from, reply_text


async def _consent_then_withdraw(path, keys) -> tuple[str, tuple]:
    """A consent, a copy of its row, then its withdrawal; returns (id, old row)."""
    store = await SQLiteStore.open(path, keys)
    try:
        h = Harness(store=store)
        cid = consent_id_from(await h.say(GP, CONSENT_OK))
        await h.drain()
        conn = sqlite3.connect(path)
        conn.row_factory = sqlite3.Row
        old = dict(conn.execute("SELECT * FROM consents WHERE consent_id = ?", (cid,)).fetchone())  # the whole row
        conn.close()
        assert "withdrawn" in reply_text(await h.say(GP, f"!withdraw {cid}"))
        await h.drain()
    finally:
        await store.close()
    return cid, old


def _put_back(path, cid, old: dict) -> None:
    """Every column of the row as it was, as someone with write access to the file would."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"UPDATE consents SET {', '.join(f'{k} = ?' for k in old)} WHERE consent_id = ?", (*old.values(), cid))
    conn.close()


async def test_a_consent_put_back_as_before_its_withdrawal_no_longer_applies(tmp_path, keys, key_file, capsys):
    """The review's reproduction: the row saved before !withdraw was put back, and the GP
    could !refer under the withdrawn consent again. Now the bot that is running refuses the
    row (nothing is opened), a restarted bot refuses to start, and `audit verify` says so."""
    path = tmp_path / "bot.sqlite3"
    cid, old = await _consent_then_withdraw(path, keys)
    store = await SQLiteStore.open(path, keys)
    try:
        h = Harness(store=store)
        h.counter = 100  # new event ids
        _put_back(path, cid, old)  # while the bot runs
        text = reply_text(await h.say(GP, f"!refer dermatology {cid} Rash on the arm, eczema?"))
        assert "something went wrong" in text and "nothing was changed" in text
        async with store.db.read() as tx:
            assert await tx.scalar("SELECT COUNT(*) FROM referrals") == 0
    finally:
        await store.close()
    with pytest.raises(StorageError, match="do not match the signed state"):
        await SQLiteStore.open(path, keys)  # and a restart does not start on it
    code = await asyncio.to_thread(cli_main, ["audit", "verify", "--db", str(path), "--key-file", str(key_file)])
    assert code == 1
    assert "records do not match the signed state" in capsys.readouterr().out


async def test_the_whole_database_put_back_as_it_was_is_caught_by_the_anchor_file(tmp_path, keys, caplog):
    """A copy of the database from before the withdrawal is consistent with itself; only
    the anchor file outside it knows the store moved on. Moving the anchor aside (what an
    operator does after restoring a backup on purpose) lets it start, and that is recorded."""
    path = tmp_path / "bot.sqlite3"
    store = await SQLiteStore.open(path, keys)
    h = Harness(store=store)
    cid = consent_id_from(await h.say(GP, CONSENT_OK))
    await h.drain()
    await store.close()
    shutil.copy(path, tmp_path / "before.sqlite3")
    store = await SQLiteStore.open(path, keys)
    h.store = h.workflow.store = store
    await h.say(GP, f"!withdraw {cid}")
    await store.close()

    shutil.copy(tmp_path / "before.sqlite3", path)  # the whole file, as it was
    with pytest.raises(StorageError, match="older than its anchor file"):
        await SQLiteStore.open(path, keys)

    anchor = AnchorFile(f"{path}.anchor")
    anchor.path.rename(tmp_path / "anchor.kept")
    with caplog.at_level(logging.WARNING, logger="referral_bot.audit"):
        store = await SQLiteStore.open(path, keys)
    try:
        assert "no anchor file" in caplog.text
        assert (await store.audit_entries())[-1].action == "audit.anchor_recreated"
        assert anchor.read(keys.seal_key) == store._keeper.state  # written again, current
    finally:
        await store.close()


async def test_a_state_row_that_was_edited_is_refused(tmp_path, keys):
    path = tmp_path / "bot.sqlite3"
    store = await SQLiteStore.open(path, keys)
    h = Harness(store=store)
    consent_id_from(await h.say(GP, CONSENT_OK))
    await store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    value = conn.execute("SELECT value FROM store_meta WHERE name = 'state_seal'").fetchone()[0]
    conn.execute("UPDATE store_meta SET value = ? WHERE name = 'state_seal'",
                 (value.replace('"audit_count":', '"audit_count":1', 1),))
    conn.close()
    with pytest.raises(StorageError, match="fails its check"):
        await SQLiteStore.open(path, keys)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DELETE FROM store_meta WHERE name = 'state_seal'")
    conn.close()
    with pytest.raises(StorageError, match="no signed state"):
        await SQLiteStore.open(path, keys)


async def test_another_process_writing_is_followed_not_flagged(tmp_path, keys):
    """The `export` command writes next to the running bot: the bot checks the new state
    once and carries on (its view of the versions follows)."""
    path = tmp_path / "bot.sqlite3"
    bot = await SQLiteStore.open(path, keys)
    try:
        h = Harness(store=bot)
        cid = consent_id_from(await h.say(GP, CONSENT_OK))
        other = await SQLiteStore.open(path, keys)  # a second process's store
        try:
            h2 = Harness(store=other)
            h2.counter = 100
            rid = referral_id_from(await h2.say(GP, f"!refer dermatology {cid} Rash, eczema?"))
        finally:
            await other.close()
        async with bot.transaction() as tx:
            assert (await tx.get_referral(rid)).question == "Rash, eczema?"
            assert (await tx.get_consent(cid)).consent_id == cid
    finally:
        await bot.close()


async def test_the_signed_head_goes_to_the_operator_log_at_intervals(tmp_path, keys, caplog):
    path = tmp_path / "bot.sqlite3"
    with caplog.at_level(logging.INFO, logger="referral_bot.audit"):
        store = await SQLiteStore.open(path, keys)
        try:
            h = Harness(store=store)
            consent_id_from(await h.say(GP, CONSENT_OK))
            store.anchor_log_seconds = 3600
            await h.tick()  # changed, but the last line is younger than the interval
            assert sum("audit anchor:" in r.message for r in caplog.records) == 1
            store.anchor_log_seconds = 0
            await h.tick()  # the tick's housekeeping logs the new head
            state = store._keeper.state
            lines = [r.message for r in caplog.records if "audit anchor:" in r.message]
            assert lines[-1] == (f"audit anchor: generation={state.generation} entries={state.audit_count} "
                                 f"head={head_for_log(state.audit_head)}")
            assert head_from_text(head_for_log(state.audit_head)) == state.audit_head
            await h.tick()
            await h.tick()  # nothing new: no new line
            assert len([r for r in caplog.records if "audit anchor:" in r.message]) == len(lines)
        finally:
            await store.close()
    assert "9434765919" not in caplog.text


async def test_an_anchor_file_that_cannot_be_written_stops_the_start_with_one_line(tmp_path, keys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the anchor's folder should be")
    with pytest.raises(StorageError, match="cannot (read|write) the anchor file") as info:
        await SQLiteStore.open(tmp_path / "bot.sqlite3", keys, anchor_path=blocker / "bot.anchor")
    assert "\n" not in str(info.value)


async def test_a_tool_opening_while_the_bot_commits_never_sees_a_newer_anchor(tmp_path, keys, monkeypatch):
    """`status` next to the running bot: the bot commits and writes the anchor file while
    the tool is taking its snapshot. The tool reads the file before its snapshot, so the
    file can only be older, never newer, than what it checks (read the other way round,
    this refused `status` now and then)."""
    from storage import seal

    path = tmp_path / "bot.sqlite3"
    bot = await SQLiteStore.open(path, keys, exclusive=True)
    h = Harness(store=bot)
    consent_id_from(await h.say(GP, CONSENT_OK))
    await bot.housekeeping()  # the anchor is current
    real_sync = seal.StateKeeper.sync
    raced = []

    async def sync_while_the_bot_commits(self, tx):
        state = await real_sync(self, tx)
        if self is not bot._keeper and not raced:
            raced.append(state.generation)
            await h.say(GP, CONSENT_OK.replace("by=patient", "by=self"))  # the bot commits...
            await bot.housekeeping()  # ...and writes the anchor file, mid-snapshot
        return state

    monkeypatch.setattr(seal.StateKeeper, "sync", sync_while_the_bot_commits)
    try:
        tool = await SQLiteStore.open(path, keys)  # as `status` does
        await tool.close()
        assert raced and AnchorFile(f"{path}.anchor").read(keys.seal_key).generation > raced[0]
    finally:
        await bot.close()
