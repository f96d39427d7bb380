"""The Store/Transaction contract, run against BOTH implementations so they can't drift.

``storage/memory.py`` is the reference semantics; ``storage/sqlite_store.py`` must
behave identically for everything in ``storage/interfaces.py``.
"""
from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from handlers.actions import PostImage, Reply, RemoveImages, PostedImageRef
from handlers.events import DirectChat, SpecialtyThread
from handlers.model import (
    AuditEntry,
    ConsentBasis,
    ConsentRecord,
    ImageItem,
    ImageState,
    Purpose,
    Referral,
    ReferralState,
    UnassignedPhoto,
)
from storage.interfaces import Store, StoreError, Transaction
from storage.memory import MemoryStore
from storage.sqlite_store import SQLiteStore

from .conftest import T0


@pytest.fixture(params=["memory", "sqlite"])
async def store(request, tmp_path, keys):
    if request.param == "memory":
        yield MemoryStore()
    else:
        s = await SQLiteStore.open(tmp_path / "bot.sqlite3", keys)
        try:
            yield s
        finally:
            await s.close()


def consent(cid="C-4F2A1B", **kw) -> ConsentRecord:
    base = dict(
        consent_id=cid,
        patient_ref="hmac-sha256:" + "ab" * 32,
        practice="Riverside Surgery",
        recorded_by="@gp:example.org",
        recorded_at=T0,
        basis=ConsentBasis.PARENT,
        purposes=frozenset({Purpose.CARE, Purpose.TEACHING}),
        identifiable=False,
        recorded_in_notes=True,
        retention=timedelta(days=90),
        age_out_at=T0 + timedelta(days=400),
        gillick_competent=False,
        best_interests_statement="Needed for urgent dermatology advice; parent agrees.",
    )
    base.update(kw)
    return ConsentRecord(**base)


def referral(rid="R-7K3QX9", cid="C-4F2A1B", referrer="@gp:example.org", opened=T0, **kw) -> Referral:
    base = dict(
        referral_id=rid,
        consent_id=cid,
        referrer=referrer,
        practice="Riverside Surgery",
        specialty="dermatology",
        question="Spreading ring-shaped rash on the forearm for 3 weeks. Tinea or eczema?",
        opened_at=opened,
        expires_at=opened + timedelta(days=7),
        reminder_at=opened + timedelta(days=6),
    )
    base.update(kw)
    return Referral(**base)


def image(iid="img-1", rid="R-7K3QX9", **kw) -> ImageItem:
    base = dict(
        image_id=iid,
        referral_id=rid,
        filename=f"{rid}-1.jpg",
        media_type="image/jpeg",
        received_at=T0,
        retention_until=T0 + timedelta(days=90),
        upload_ref="$upload:example.org",
    )
    base.update(kw)
    return ImageItem(**base)


async def test_implements_the_protocols(store):
    assert isinstance(store, Store)
    async with store.transaction() as tx:
        assert isinstance(tx, Transaction)


async def test_mark_processed_once(store):
    async with store.transaction() as tx:
        assert await tx.mark_processed("$e1", T0) is True
        assert await tx.mark_processed("$e1", T0) is False
    async with store.transaction() as tx:
        assert await tx.mark_processed("$e1", T0) is False
        assert await tx.mark_processed("$e2", T0) is True


async def test_rollback_undoes_everything_including_the_processed_mark(store):
    async with store.transaction() as tx:
        await tx.save_consent(consent())
        await tx.vault_put("img-0", b"keep", "image/png")
    with pytest.raises(RuntimeError):
        async with store.transaction() as tx:
            assert await tx.mark_processed("$e1", T0)
            await tx.save_consent(consent(withdrawn_at=T0, withdrawn_by="@gp:example.org"))
            await tx.save_referral(referral())
            await tx.append_audit(AuditEntry(actor="@gp:example.org", action="referral.opened", at=T0))
            await tx.vault_put("img-1", b"pixels", "image/jpeg")
            assert await tx.vault_shred("img-0")
            await tx.enqueue([Reply(key="$e1/0", to=DirectChat("@gp:example.org"), text="ok")])
            raise RuntimeError("crash in the middle of a transition")
    async with store.transaction() as tx:
        assert await tx.mark_processed("$e1", T0) is True  # not marked before
        assert (await tx.get_consent("C-4F2A1B")).withdrawn_at is None
        assert await tx.get_referral("R-7K3QX9") is None
        assert await tx.vault_get("img-1") is None
        assert await tx.vault_get("img-0") == b"keep"
    assert await store.pending_actions() == []


async def test_consent_round_trip_and_upsert(store):
    c = consent()
    async with store.transaction() as tx:
        assert await tx.get_consent(c.consent_id) is None
        await tx.save_consent(c)
    async with store.transaction() as tx:
        assert await tx.get_consent(c.consent_id) == c
        assert await tx.get_consent("c-4f2a1b") is None  # case-sensitive ids
        await tx.save_consent(dataclasses.replace(c, withdrawn_at=T0 + timedelta(hours=1), withdrawn_by="@gp:example.org"))
    async with store.transaction() as tx:
        assert (await tx.get_consent(c.consent_id)).withdrawn


async def test_referral_round_trip_with_images_and_indexes(store):
    r1 = referral("R-1", opened=T0, thread_root_event_id="$root1")
    r1 = r1.with_image(image("img-1", "R-1", state=ImageState.POSTED, room_event_id="$ev", media_uri="mxc://x/y",
                             removed_metadata=("GPS", "Make"), faces=1))
    r2 = referral("R-2", opened=T0 + timedelta(minutes=5), referrer="@other:example.org")
    r3 = referral("R-3", cid="C-OTHER", opened=T0 - timedelta(minutes=5))
    async with store.transaction() as tx:
        for r in (r2, r1, r3):
            await tx.save_referral(r)
    async with store.transaction() as tx:
        assert await tx.get_referral("R-1") == r1
        # lists follow the order the referrals were opened (first saved) in, not opened_at
        assert [r.referral_id for r in await tx.referrals_by_consent("C-4F2A1B")] == ["R-2", "R-1"]
        assert [r.referral_id for r in await tx.referrals_by_referrer("@gp:example.org")] == ["R-1", "R-3"]
        assert (await tx.referral_by_thread("$root1")).referral_id == "R-1"
        assert await tx.referral_by_thread("$nothing") is None
        # re-index on save: the thread moves
        await tx.save_referral(dataclasses.replace(r1, thread_root_event_id="$root9"))
    async with store.transaction() as tx:
        assert await tx.referral_by_thread("$root1") is None
        assert (await tx.referral_by_thread("$root9")).referral_id == "R-1"


async def test_open_referrals_by_referrer_leaves_out_finished_ones(store):
    states = list(ReferralState)
    refs = [referral(f"R-{i}", opened=T0 + timedelta(minutes=i), state=st) for i, st in enumerate(states)]
    other = referral("R-X", opened=T0, referrer="@other:example.org")
    async with store.transaction() as tx:
        for r in refs + [other]:
            await tx.save_referral(r)
    async with store.transaction() as tx:
        got = await tx.open_referrals_by_referrer("@gp:example.org")
    assert [r.referral_id for r in got] == [r.referral_id for r in refs if r.is_open]
    assert {r.state for r in got} == {ReferralState.OPENED, ReferralState.IMAGES_RECEIVED,
                                      ReferralState.POSTED, ReferralState.DISCUSSED}


async def test_due_referrals_follow_next_due_at(store):
    a = referral("R-A", opened=T0)  # reminder at +6d
    b = referral("R-B", opened=T0 + timedelta(days=2))  # reminder at +8d
    closed = referral("R-C", opened=T0, state=ReferralState.CLOSED)
    async with store.transaction() as tx:
        for r in (a, b, closed):
            await tx.save_referral(r)
    async with store.transaction() as tx:
        assert await tx.due_referrals(T0 + timedelta(days=5)) == []
        assert [r.referral_id for r in await tx.due_referrals(T0 + timedelta(days=6))] == ["R-A"]
        assert [r.referral_id for r in await tx.due_referrals(T0 + timedelta(days=30))] == ["R-A", "R-B"]
        # the reminder went out: next due is expiry (+7d) for A
        await tx.save_referral(dataclasses.replace(a, reminder_sent=True))
    async with store.transaction() as tx:
        assert [r.referral_id for r in await tx.due_referrals(T0 + timedelta(days=6, hours=12))] == []
        assert [r.referral_id for r in await tx.due_referrals(T0 + timedelta(days=7))] == ["R-A"]
        assert [r.referral_id for r in await tx.due_referrals(T0 + timedelta(days=8))] == ["R-A", "R-B"]


async def test_unassigned_photos_round_trip_by_gp_and_by_due_time(store):
    def photo(pid, who, minutes):
        return UnassignedPhoto(photo_id=pid, referrer=who, received_at=T0 + timedelta(minutes=minutes),
                               destroy_at=T0 + timedelta(minutes=minutes + 10), media_type="image/jpeg",
                               extension="jpg", upload_ref=f"!dm/{pid}", candidates=("R-A", "R-B"), faces=1,
                               width=640, height=480, removed_metadata=("GPS",))
    a, b, c = photo("I-2", "@gp:example.org", 1), photo("I-1", "@gp:example.org", 0), photo("I-3", "@gp2:example.org", 5)
    async with store.transaction() as tx:
        for p in (a, b, c):
            await tx.save_unassigned_photo(p)
    async with store.transaction() as tx:
        assert await tx.unassigned_photos("@gp:example.org") == [b, a]  # oldest first, whole objects
        assert await tx.unassigned_photos("@nobody:example.org") == []
        assert await tx.due_unassigned_photos(T0 + timedelta(minutes=9)) == []
        assert [p.photo_id for p in await tx.due_unassigned_photos(T0 + timedelta(minutes=11))] == ["I-1", "I-2"]
        await tx.save_unassigned_photo(dataclasses.replace(a, destroy_at=T0 + timedelta(hours=1)))  # upsert
        await tx.delete_unassigned_photo("I-1")
        await tx.delete_unassigned_photo("I-unknown")  # ignored
    async with store.transaction() as tx:
        assert [p.photo_id for p in await tx.due_unassigned_photos(T0 + timedelta(minutes=30))] == ["I-3"]
        assert [p.destroy_at for p in await tx.unassigned_photos("@gp:example.org")] == [T0 + timedelta(hours=1)]
    with pytest.raises(RuntimeError):  # rolled back with the rest of the transaction
        async with store.transaction() as tx:
            await tx.delete_unassigned_photo("I-3")
            raise RuntimeError("boom")
    async with store.transaction() as tx:
        assert [p.photo_id for p in await tx.unassigned_photos("@gp2:example.org")] == ["I-3"]


async def test_lists_follow_the_opening_sequence_when_the_clock_steps_back(store):
    """Finding 10 of the security review: a referral opened after the clock stepped back
    has an earlier opened_at, but it is still the newer one everywhere."""
    first = referral("R-FIRST", opened=T0)
    later = referral("R-LATER", opened=T0 - timedelta(hours=1))  # the clock stepped back an hour
    async with store.transaction() as tx:
        await tx.save_referral(first)
    async with store.transaction() as tx:
        await tx.save_referral(later)
    async with store.transaction() as tx:
        # saving again (a state change) keeps the place in the sequence
        await tx.save_referral(dataclasses.replace(first, reminder_sent=True))
    async with store.transaction() as tx:
        order = ["R-FIRST", "R-LATER"]
        assert [r.referral_id for r in await tx.referrals_by_referrer("@gp:example.org")] == order
        assert [r.referral_id for r in await tx.open_referrals_by_referrer("@gp:example.org")] == order
        assert [r.referral_id for r in await tx.referrals_by_consent("C-4F2A1B")] == order


async def test_due_ids_leave_out_referrals_set_aside(store):
    a = referral("R-A", opened=T0)
    b = referral("R-B", opened=T0)
    async with store.transaction() as tx:
        await tx.save_referral(a)
        await tx.save_referral(b)
    at = T0 + timedelta(days=30)
    async with store.transaction() as tx:
        assert await tx.due_referral_ids(at) == ["R-A", "R-B"]
        await tx.set_aside_referral("R-A", "unreadable", at)
        await tx.set_aside_referral("R-A", "unreadable", at)  # idempotent
    async with store.transaction() as tx:
        assert await tx.due_referral_ids(at) == ["R-B"]
    assert [(s.referral_id, s.reason) for s in await store.set_aside_referrals()] == [("R-A", "unreadable")]


async def test_dead_letters_leave_the_outbox(store):
    async with store.transaction() as tx:
        ids = await tx.enqueue([Reply(key="$e/0", to=DirectChat("@gp:example.org"), text="a"),
                                Reply(key="$e/1", to=DirectChat("@gp:example.org"), text="b")])
    await store.dead_letter(ids[0], kind="Reply", referral_id="R-1", reason="I was removed from the room.",
                            attempts=3, at=T0)
    await store.dead_letter(ids[0], kind="Reply", referral_id="R-1", reason="again", attempts=4, at=T0)
    assert [e.outbox_id for e in await store.pending_actions()] == [ids[1]]
    (dead,) = await store.dead_letters()
    assert (dead.outbox_id, dead.kind, dead.referral_id, dead.attempts) == (ids[0], "Reply", "R-1", 3)
    assert dead.reason == "I was removed from the room." and dead.at == T0
    assert await store.dead_letter_count() == 1


async def test_vault_semantics(store):
    async with store.transaction() as tx:
        await tx.vault_put("img-1", b"\x89PNG pixels", "image/png")
        assert await tx.vault_get("img-1") == b"\x89PNG pixels"  # visible inside the transaction
    assert await store.vault_get("img-1") == b"\x89PNG pixels"
    async with store.transaction() as tx:
        assert await tx.vault_shred("img-1") is True
        assert await tx.vault_shred("img-1") is False
        assert await tx.vault_shred("unknown") is False
        assert await tx.vault_get("img-1") is None
        assert await tx.vault_get("unknown") is None
    assert await store.vault_get("img-1") is None
    with pytest.raises((ValueError, StoreError)):
        async with store.transaction() as tx:
            await tx.vault_put("img-1", b"reuse of a shredded id", "image/png")


async def test_outbox_order_round_trip_and_idempotent_completion(store):
    actions = [
        Reply(key="$e1/0", to=DirectChat("@gp:example.org"), text="Referral R-1 opened."),
        PostImage(key="$e1/1", referral_id="R-1", specialty="dermatology", thread_root_event_id="$root",
                  image_id="img-1", filename="R-1-1.jpg", media_type="image/jpeg", width=640, height=480),
        RemoveImages(key="$e1/2", referral_id="R-1", specialty="dermatology", thread_root_event_id="$root",
                     images=(PostedImageRef(image_id="img-1", room_event_id="$ev", media_uri="mxc://a/b"),),
                     placeholder="Image removed after the opinion."),
    ]
    async with store.transaction() as tx:
        ids = await tx.enqueue(actions[:2])
    async with store.transaction() as tx:
        ids += await tx.enqueue(actions[2:])
        assert await tx.enqueue([]) == []
    assert ids == sorted(ids) and len(set(ids)) == 3
    pending = await store.pending_actions()
    assert [p.outbox_id for p in pending] == ids
    assert [p.action for p in pending] == actions
    assert [p.action.key for p in await store.pending_actions(limit=2)] == ["$e1/0", "$e1/1"]
    await store.complete_action(ids[1])
    await store.complete_action(ids[1])
    assert [p.action.key for p in await store.pending_actions()] == ["$e1/0", "$e1/2"]
    async with store.transaction() as tx:
        later = await tx.enqueue([Reply(key="$e2/0", to=SpecialtyThread("dermatology", "R-1"), text="x")])
    assert later[0] > max(ids)


async def test_audit_entries_are_kept(store):
    e = AuditEntry(actor="@gp:example.org", action="consent.recorded", at=T0, consent_id="C-1",
                   details={"purposes": "care,teaching", "identifiable": False})
    async with store.transaction() as tx:
        await tx.append_audit(e)
    if isinstance(store, SQLiteStore):
        (stored,) = await store.audit_entries()
        assert (stored.actor, stored.action, stored.at, stored.consent_id, dict(stored.details)) == (
            e.actor, e.action, e.at, e.consent_id, e.details)
        assert (await store.verify_audit()).intact
    else:
        assert store.audit == [e]


# --- issue 9: what the SQL stores add (SQLite here, PostgreSQL through the same tests) ---
async def test_housekeeping_runs_on_every_store_and_never_raises(store):
    for _ in range(2):
        await store.housekeeping()


async def test_a_completed_action_keeps_none_of_its_content(store):
    """Finding 2: pending payloads are sealed; a done action's payload is dropped."""
    text = "Opinion on R-1: tinea incognito, stop the steroid"
    async with store.transaction() as tx:
        (oid,) = await tx.enqueue([Reply(key="$e9/0", to=DirectChat("@gp:example.org"), text=text)])
    assert [p.action.text for p in await store.pending_actions()] == [text]
    if not isinstance(store, SQLiteStore):
        return  # the reference store keeps nothing on disk
    async with store.db.read() as tx:
        sealed = (await tx.fetchone("SELECT payload FROM outbox WHERE id = ?", (oid,)))["payload"]
    assert isinstance(sealed, bytes) and text.encode() not in sealed and b"Reply" not in sealed
    await store.complete_action(oid)
    async with store.db.read() as tx:
        row = await tx.fetchone("SELECT kind, payload, done_at FROM outbox WHERE id = ?", (oid,))
    assert (row["kind"], row["payload"]) == ("Reply", None) and row["done_at"] is not None


async def test_an_older_copy_of_a_record_put_back_is_refused_on_load(store):
    """Finding 8: a consent row saved before its withdrawal, put back over the withdrawn
    one, used to make the consent apply again. Its version no longer matches the one the
    signed state vouches for, so it is refused (and a blob moved to the newer version
    number fails its associated data)."""
    if not isinstance(store, SQLiteStore):
        pytest.skip("the reference store has no rows to put back")
    c = consent()
    async with store.transaction() as tx:
        await tx.save_consent(c)
    async with store.db.read() as tx:  # the whole row, every column, as it was
        before = dict(await tx.fetchone("SELECT * FROM consents WHERE consent_id = ?", (c.consent_id,)))
    withdrawn = dataclasses.replace(c, withdrawn_at=T0 + timedelta(hours=1), withdrawn_by="@gp:example.org")
    async with store.transaction() as tx:
        await tx.save_consent(withdrawn)
    async with store.db.read() as tx:
        after = dict(await tx.fetchone("SELECT * FROM consents WHERE consent_id = ?", (c.consent_id,)))

    async def put_back(row):
        async with store.db.transaction() as tx:  # underneath the store, as someone with database access
            await tx.execute(f"UPDATE consents SET {', '.join(f'{k} = ?' for k in row)} WHERE consent_id = ?",
                             (*row.values(), c.consent_id))

    await put_back(before)
    with pytest.raises(StoreError, match="not the copy the store's signed state vouches for"):
        async with store.transaction() as tx:
            await tx.get_consent(c.consent_id)
    with pytest.raises(StoreError, match="not the copy"):
        async with store.read() as tx:
            await tx.get_consent(c.consent_id)
    assert (before["version"], after["version"]) == (1, 2)
    await put_back({**before, "version": after["version"]})  # the old blob under the new number
    with pytest.raises(StoreError, match="wrong key for this database, or the row was altered"):
        async with store.transaction() as tx:
            await tx.get_consent(c.consent_id)
