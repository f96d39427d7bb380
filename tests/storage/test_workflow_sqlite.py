"""The real workflow (handlers/workflow.py, real sanitizer) on the SQLite store, checked
against the same story on the in-memory reference store: same actions, same final
records. Then the SQLite-only guarantees: audit chain intact, images shredded."""
from __future__ import annotations

import asyncio

from bot.cli import main as cli_main
from handlers import actions as A
from handlers import events as E
from handlers.model import ReferralState
from storage.memory import MemoryStore
from storage.sqlite_store import SQLiteStore
from tests.handlers.helpers import CONSENT_OK, DERM, GP, GP2, Harness, consent_id_from, jpeg_with_metadata, policy, referral_id_from


def thread(rid: str) -> E.SpecialtyThread:
    return E.SpecialtyThread("dermatology", None, f"$root-{rid}")


async def story(h: Harness) -> dict:
    """Consent, two referrals, images, opinion, grace period, withdrawal, export, retention."""
    trace: list = []

    async def say(actor, text, place=None):
        acts = await h.say(actor, text, place=place)
        trace.append([a.to_dict() for a in acts])
        return acts

    h.room_members = (DERM.user_id, "@bot:example.org")
    cid = consent_id_from(await say(GP, CONSENT_OK))
    rid1 = referral_id_from(await say(GP, f"!refer derm {cid} Is this a BCC?"))
    trace.append([a.to_dict() for a in await h.send_image(GP, jpeg_with_metadata(seed=1))])
    trace.append([a.to_dict() for a in await h.send_image(GP, jpeg_with_metadata(seed=2))])
    trace.append([a.to_dict() for a in await h.drain()])
    await h.workflow.handle(E.ThreadActivity(h.eid(), DERM, h.now, thread(rid1)))
    h.advance(hours=2)
    await say(DERM, "!opinion Seborrhoeic keratosis; reassure.", place=thread(rid1))
    trace.append([a.to_dict() for a in await h.drain()])
    await say(GP, f"!export {rid1}")
    trace.append([a.to_dict() for a in await h.drain()])
    h.advance(hours=25)
    trace.append([a.to_dict() for a in await h.tick()])
    trace.append([a.to_dict() for a in await h.drain()])

    rid2 = referral_id_from(await say(GP2, f"!refer dermatology {cid} lesion B"))
    trace.append([a.to_dict() for a in await h.send_image(GP2, jpeg_with_metadata(seed=3))])
    trace.append([a.to_dict() for a in await h.drain()])
    # the same chat event delivered twice is handled once
    dup = E.CommandReceived(event_id="$dup", actor=GP, at=h.now, text=f"!status {rid2}", place=E.DirectChat(GP.user_id))
    trace.append([a.to_dict() for a in await h.workflow.handle(dup)])
    trace.append([a.to_dict() for a in await h.workflow.handle(dup)])
    await say(GP, f"!withdraw {cid}")
    trace.append([a.to_dict() for a in await h.drain()])
    h.advance(days=200)
    trace.append([a.to_dict() for a in await h.tick()])

    async with h.store.transaction() as tx:
        refs = [await tx.get_referral(r) for r in (rid1, rid2)]
        consent = await tx.get_consent(cid)
        image_ids = [i.image_id for r in refs for i in r.images]
        vault = {i: await tx.vault_get(i) for i in image_ids}
    return {
        "trace": trace,
        "referrals": [r.to_dict() for r in refs],
        "consent": consent.to_dict(),
        "vault_live": sorted(i for i, v in vault.items() if v is not None),
        "pending": [e.action.to_dict() for e in await h.store.pending_actions()],
        "rids": (rid1, rid2),
    }


def _sqlite_harness(store: SQLiteStore) -> Harness:
    h = Harness(policy=policy(filing_enabled=True))
    h.store = store
    h.workflow.store = store
    return h


async def test_workflow_on_sqlite_matches_the_reference_store(tmp_path, keys, key_file, capsys):
    mem = Harness(policy=policy(filing_enabled=True))
    assert isinstance(mem.store, MemoryStore)
    expected = await story(mem)

    db_path = tmp_path / "bot.sqlite3"
    store = await SQLiteStore.open(db_path, keys)
    try:
        got = await story(_sqlite_harness(store))
        entries = await store.audit_entries()
        chain = await store.verify_audit()
    finally:
        await store.close()

    assert got == expected
    rid1, rid2 = got["rids"]
    r1, r2 = got["referrals"]
    assert r1["state"] == ReferralState.CLOSED.value and r1["filed_version"] == 3  # opinion, !export, withdrawal
    assert r2["state"] == ReferralState.CLOSED.value and r2["close_reason"] == "withdrawn"
    assert got["vault_live"] == [] and got["pending"] == []
    # any duplicate answer was empty
    assert [] in got["trace"]

    # the audit trail: intact, covers the story, carries no patient data
    assert chain.intact and chain.entries == len(entries) > 10
    actions = {e.action for e in entries}
    assert {"consent.recorded", "referral.opened", "image.accepted", "opinion.given", "record.filing_requested",
            "record.filed", "image.room_members", "record.copies_deleted", "patient_ref.shredded",
            "consent.withdrawn"} <= actions
    flat = repr([(e.actor, e.action, e.referral_id, e.consent_id, dict(e.details)) for e in entries])
    assert "9434765919" not in flat and "BCC" not in flat and "keratosis" not in flat
    assert await asyncio.to_thread(cli_main, ["audit", "verify", "--db", str(db_path), "--key-file", str(key_file)]) == 0
    assert f"audit chain intact: {chain.entries} entries" in capsys.readouterr().out


async def test_transport_redelivery_after_crash_is_a_no_op(tmp_path, keys):
    """Drain half, 'crash' (reopen the store), drain again: each action completes once."""
    db_path = tmp_path / "bot.sqlite3"
    store = await SQLiteStore.open(db_path, keys)
    h = _sqlite_harness(store)
    cid = consent_id_from(await h.say(GP, CONSENT_OK))
    referral_id_from(await h.say(GP, f"!refer derm {cid} Is this a BCC?"))
    await h.send_image(GP, jpeg_with_metadata(seed=1))
    pending = await store.pending_actions()
    assert len(pending) >= 2
    first = pending[0]
    feedback = h._execute(first.action)
    if feedback is not None:
        await h.workflow.handle(feedback)
        await h.workflow.handle(feedback)  # delivered twice: still one effect
    await store.complete_action(first.outbox_id)
    await store.close()

    store = await SQLiteStore.open(db_path, keys)
    try:
        h2 = _sqlite_harness(store)
        again = await store.pending_actions()
        assert first.outbox_id not in [p.outbox_id for p in again]
        assert [p.outbox_id for p in again] == [p.outbox_id for p in pending[1:]] + [
            p.outbox_id for p in again if p.outbox_id > pending[-1].outbox_id]
        done = await h2.drain()
        keys_done = [a.key for a in done]
        assert len(keys_done) == len(set(keys_done))
        assert sum(isinstance(a, A.PostImage) for a in done) == 1
        assert await store.pending_actions() == []
    finally:
        await store.close()
