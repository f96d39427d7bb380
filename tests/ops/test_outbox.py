"""The outbox loop every transport shares (bot/outbox.py), on the real workflow and the real
SQLite store: lanes, permanent failures, retry limits, the dead-letter list, and store
failures that must be retried instead of dropped (security review, issue 9, findings 3-4)."""
from __future__ import annotations

import asyncio
import os
from datetime import timedelta

import pytest

from bot.outbox import OutboxLoop, PermanentFailure, StoreUnavailable
from handlers import actions as A
from handlers import events as E
from handlers.model import ReferralState
from storage.keys import Keys
from storage.sqlite_store import SQLiteStore
from tests.handlers.helpers import (CONSENT_OK, GP, T0, Harness, consent_id_from, jpeg_with_metadata,
                                    referral_id_from)


class ScriptedLoop(OutboxLoop):
    """A transport whose chat server is scripted per action type."""

    def __init__(self, h: Harness, behaviour: dict[type, object] | None = None):
        super().__init__(h.store, h.workflow, lambda: h.now, tick_seconds=1.0)
        self.h = h
        self.behaviour = behaviour or {}
        self.ran: list[A.Action] = []

    async def _execute(self, action):
        what = self.behaviour.get(type(action))
        if isinstance(what, BaseException):
            raise what
        self.ran.append(action)
        return self.h._execute(action)  # the harness's well-behaved chat server


@pytest.fixture
async def h(tmp_path):
    store = await SQLiteStore.open(tmp_path / "bot.sqlite3", Keys.from_master(os.urandom(32)))
    harness = Harness(store=store)
    try:
        yield harness
    finally:
        await store.close()


async def _referral_with_image_posted(h: Harness) -> str:
    cid = consent_id_from(await h.say(GP, CONSENT_OK))
    rid = referral_id_from(await h.say(GP, f"!refer dermatology {cid} Changing mole, melanoma?"))
    await h.drain()
    await h.send_image(GP, jpeg_with_metadata())
    await h.drain()
    return rid


async def test_removals_and_replies_never_wait_behind_a_failing_post(h):
    """A post that keeps failing (here a 5xx-like error, counted against it) no longer
    holds up anything else: the removal of another referral's images and the GP's replies
    run in their own lanes."""
    old = await _referral_with_image_posted(h)
    h.advance(days=8)  # past the 7-day lifetime: its images must go
    loop = ScriptedLoop(h, {A.PostThreadRoot: RuntimeError("HTTP 500 for this request")})
    cid = consent_id_from(await h.say(GP, CONSENT_OK))
    await h.say(GP, f"!refer dermatology {cid} Another lesion?")   # its PostThreadRoot fails
    await loop.tick()   # the expiry of the old referral: a RemoveImages
    await h.say(GP, "!help")
    await loop.drain()
    kinds = [type(a).__name__ for a in loop.ran]
    assert "RemoveImages" in kinds and kinds.count("Reply") >= 2
    assert h.chat == {}  # the old referral's image is out of the room
    async with h.store.read() as tx:
        assert (await tx.get_referral(old)).state is ReferralState.CLOSED
    pending = await h.store.pending_actions()
    assert [type(e.action).__name__ for e in pending] == ["PostThreadRoot"]


async def test_a_permanent_failure_is_set_aside_at_once_and_the_gp_told(h):
    loop = ScriptedLoop(h, {A.PostThreadRoot: PermanentFailure("I am not a member of the Dermatology advice room.")})
    cid = consent_id_from(await h.say(GP, CONSENT_OK))
    rid = referral_id_from(await h.say(GP, f"!refer dermatology {cid} Rash?"))
    await loop.drain()
    assert [e.action for e in await h.store.pending_actions()] == []
    (dead,) = await h.store.dead_letters()
    assert (dead.kind, dead.referral_id, dead.attempts) == ("PostThreadRoot", rid, 1)
    assert dead.reason == "I am not a member of the Dermatology advice room."
    told = [a.text for a in loop.ran if isinstance(a, A.Notify)]
    assert told and rid in told[0] and "not a member" in told[0]
    assert loop.dead_lettered == 1


async def test_an_action_that_keeps_failing_is_set_aside_after_its_retry_limit(h):
    loop = ScriptedLoop(h, {A.PostThreadRoot: RuntimeError("HTTP 502")})
    loop.max_attempts = {"posts": 3, "messages": 20, "removals": 120}
    cid = consent_id_from(await h.say(GP, CONSENT_OK))
    rid = referral_id_from(await h.say(GP, f"!refer dermatology {cid} Rash?"))
    for _ in range(3):
        await loop.drain()
        loop._not_before.clear()  # as if its backoff had passed
    (dead,) = await h.store.dead_letters()
    assert dead.kind == "PostThreadRoot" and dead.attempts == 3 and "3 times" in dead.reason
    async with h.store.read() as tx:
        assert (await tx.get_referral(rid)).state is not ReferralState.POSTED


async def test_an_outage_backs_off_without_counting_against_the_action(h):
    loop = ScriptedLoop(h, {A.Reply: ConnectionRefusedError("homeserver down")})
    loop.max_attempts = {"posts": 1, "messages": 1, "removals": 1}
    await h.say(GP, "!help")
    for _ in range(3):
        loop._outage_until = 0.0
        await loop.drain()
    assert await h.store.dead_letters() == [] and len(await h.store.pending_actions()) == 1
    loop.behaviour = {}
    loop._outage_until = 0.0
    assert await loop.drain() == 1


async def test_a_full_disk_is_retried_never_dropped(h):
    """Reproduced in the review: with the disk full the event was swallowed (and its sync
    token saved), so the command was lost. Here SQLite itself reports the full disk."""
    loop = ScriptedLoop(h)
    cid = consent_id_from(await h.say(GP, CONSENT_OK))
    referral_id_from(await h.say(GP, f"!refer dermatology {cid} {'Long history of a changing lesion. ' * 50}"))
    conn = h.store.db.conn
    pages = (await (await conn.execute("PRAGMA page_count")).fetchone())[0]
    await conn.execute(f"PRAGMA max_page_count = {pages}")
    event = E.CommandReceived(event_id="$second", actor=GP, at=h.now, place=E.DirectChat(GP.user_id),
                              text=f"!refer dermatology {cid} {'Another long history of a lesion. ' * 50}")
    with pytest.raises(StoreUnavailable):
        await loop._handle(event)
    assert loop.store_errors == 1
    async with h.store.read() as tx:  # nothing was marked handled, nothing half-saved
        assert await tx._tx.scalar("SELECT COUNT(*) FROM processed_events WHERE event_id = '$second'") == 0
        assert len(await tx.referrals_by_referrer(GP.user_id)) == 1
    await conn.execute("PRAGMA max_page_count = 1073741823")  # the disk was freed
    actions = await loop._handle(event)
    assert any("opened" in getattr(a, "text", "") for a in actions)


async def test_an_outcome_the_store_could_not_record_is_kept_not_executed_again(h):
    """Reproduced in the review with the write lock held while "image posted" came back:
    the action was completed anyway and the referral never learnt the image was in the
    room. Now the action stays in the outbox and its outcome is recorded on the next try."""
    loop = ScriptedLoop(h)
    cid = consent_id_from(await h.say(GP, CONSENT_OK))
    rid = referral_id_from(await h.say(GP, f"!refer dermatology {cid} Rash?"))
    await loop.drain()
    await h.send_image(GP, jpeg_with_metadata())
    real_handle = h.workflow.handle
    failing = {"on": True}

    async def handle(event):
        if failing["on"] and isinstance(event, E.ImagePosted):
            from storage.interfaces import StoreError
            raise StoreError("database is locked")
        return await real_handle(event)

    h.workflow.handle = handle
    await loop.drain()
    posts = [a for a in loop.ran if isinstance(a, A.PostImage)]
    assert len(posts) == 1
    assert any(isinstance(e.action, A.PostImage) for e in await h.store.pending_actions())
    failing["on"] = False
    loop._store_until = 0.0  # as if the store's backoff had passed
    await loop.drain()
    assert len([a for a in loop.ran if isinstance(a, A.PostImage)]) == 1  # not posted twice
    async with h.store.read() as tx:
        assert (await tx.get_referral(rid)).state is ReferralState.POSTED


async def test_tick_survives_a_store_failure(h):
    loop = ScriptedLoop(h)

    async def broken(event):
        from storage.interfaces import StoreError
        raise StoreError("disk I/O error")

    h.workflow.handle = broken
    await loop.tick()  # logged and counted, never raised
    assert loop.store_errors == 1


async def test_a_post_that_hangs_delays_a_removal_by_at_most_a_moment(h):
    """Other lanes give way to a post being sent, but only for post_first_seconds: a post
    stuck on the network never holds a removal back."""
    await _referral_with_image_posted(h)
    h.advance(days=8)
    gate = asyncio.Event()

    class HangingPosts(ScriptedLoop):
        async def _execute(self, action):
            if isinstance(action, A.PostThreadRoot):
                await gate.wait()  # the homeserver never answers this one
            return await super()._execute(action)

    loop = HangingPosts(h)
    cid = consent_id_from(await h.say(GP, CONSENT_OK))
    await h.say(GP, f"!refer dermatology {cid} Another lesion?")
    await loop._handle(E.Tick(at=h.now))
    started = asyncio.get_running_loop().time()
    draining = asyncio.create_task(loop.drain())
    while h.chat and asyncio.get_running_loop().time() - started < 5:
        await asyncio.sleep(0.05)
    assert h.chat == {}  # removed while the post still hangs
    assert asyncio.get_running_loop().time() - started < 2 * loop.post_first_seconds + 0.5
    assert not draining.done()
    gate.set()
    await draining


def test_every_removal_runs_in_the_removal_lane():
    """A preview taken out of the GP's chat (issue 11) is a removal: it must not wait
    behind a post or a message either (finding 3)."""
    from bot.outbox import lane_of

    rid = "R-ABC123"
    assert lane_of(A.RemovePreview(key="k1", user_id="@gp:x", referral_id=rid, image_id="I-1")) == "removals"
    assert lane_of(A.RemoveImages(key="k2", referral_id=rid, specialty="dermatology", thread_root_event_id="$r",
                                  images=(), placeholder="removed")) == "removals"
    assert lane_of(A.RedactOriginalUpload(key="k3", upload_ref="!r/$e", reason="x")) == "removals"
    assert lane_of(A.SendPreview(key="k4", user_id="@gp:x", referral_id=rid, image_id="I-1", filename="a.jpg",
                                 media_type="image/jpeg", text="PREVIEW")) == "messages"
