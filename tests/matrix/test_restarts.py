"""Crashes and outages: the bot killed (SIGKILL) mid-referral and restarted from its
store; Synapse restarted mid-referral. Nothing is lost, nothing is done twice, and
the media is gone from the server at the end."""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from handlers import actions as A
from tests.matrix import flow

pytestmark = pytest.mark.synapse


def _spawn_bot(w) -> subprocess.Popen:
    log = open(w.root / "bot-run.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "bot.cli", "run", "--config", str(w.config_path)],
                            stdout=log, stderr=log, start_new_session=True)


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


async def test_bot_killed_mid_referral_and_restarted(make_world):
    w = await make_world(start=False, policy={"grace_period_seconds": 3, "max_lifetime_hours": 72})
    proc = _spawn_bot(w)
    try:
        await w.wait_bot_joined(timeout=40)
        rid = await flow.refer(w, await flow.consent(w))
        # killed while the photo is being handled
        up = await flow.send_photo(w)
        await asyncio.sleep(0.3)
        _kill(proc)
        proc = _spawn_bot(w)
        img, clean_mxc = await flow.clean_image(w, timeout=40)
        thread = img.thread_root
        await flow.upload_redacted(w, up)
        # the opinion; then killed again before the grace period ends, and kept down past it
        await w.sp.say(w.derm_room, "!opinion Benign.", thread_root=thread)
        await flow.bot_reply(w, up.mark, "opinion on")
        _kill(proc)
        await asyncio.sleep(4)  # the removal fell due while the bot was down
        t_restart = time.monotonic()
        proc = _spawn_bot(w)
        await w.sp.wait_for(lambda s: s.event_id == img.event_id and s.redacted, 40, "the removal")
        assert time.monotonic() - t_restart < 20
        await flow.media_gone(w, [clean_mxc, *up.mxcs])
        await asyncio.sleep(1.5)
        # nothing twice: one image, one thread root, one "removed" reply, one opinion relay
        assert len(flow.bot_images_in_room(w)) == 1
        roots = [s for s in w.sp.messages(w.derm_room, w.bot_user.user_id)
                 if rid in s.body and "question" in s.body.lower()]
        assert len(roots) == 1
        gp_bot = [s.body for s in w.gp.messages(w.dm_room, w.bot_user.user_id)]
        assert sum(b.startswith("Removed:") for b in gp_bot) == 1, gp_bot
        assert sum("opinion on" in b.lower() for b in gp_bot) == 1, gp_bot
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=15)


async def test_a_post_that_reached_the_room_before_a_crash_is_recorded_before_replies_to_it(make_world):
    """The image reached the specialty room, then the bot died before recording that; the
    specialist saw it and gave the opinion while the bot was down. At the restart the
    unfinished post must be finished (recorded as posted) before the opinion is handled,
    or the specialist is told there is no image to give an opinion on, and the opinion
    is lost. (This is what test_bot_killed_mid_referral_and_restarted hit by chance.)"""
    w = await make_world(policy={"grace_period_seconds": 2, "max_lifetime_hours": 72})
    real_execute = w.app.transport._execute
    posted = asyncio.Event()

    async def dies_after_posting(action):
        outcome = await real_execute(action)
        if isinstance(action, A.PostImage):
            posted.set()
            await asyncio.Event().wait()  # frozen: the outcome is never recorded
        return outcome

    w.app.transport._execute = dies_after_posting
    await flow.refer(w, await flow.consent(w))
    up = await flow.send_photo(w)
    img, clean_mxc = await flow.clean_image(w)
    await asyncio.wait_for(posted.wait(), 20)
    await w.stop_bot()
    mark = time.monotonic()
    await w.sp.say(w.derm_room, "!opinion Benign.", thread_root=img.thread_root)
    await w.start_bot()
    await flow.bot_reply(w, up.mark, "opinion on", timeout=30)
    await w.sp.wait_for(lambda s: s.sender == w.bot_user.user_id and s.ts >= mark
                        and s.body.startswith("Opinion recorded"), 20, "the opinion recorded")
    said = [s.body for s in w.sp.messages(w.derm_room, w.bot_user.user_id)
            if s.ts >= mark and s.msgtype != "m.image"]
    assert said and all(b.startswith("Opinion recorded") for b in said), said  # no refusal
    assert len(flow.bot_images_in_room(w)) == 1
    await w.sp.wait_for(lambda s: s.event_id == img.event_id and s.redacted, 30, "the removal")
    await flow.media_gone(w, [clean_mxc, *up.mxcs])


async def test_synapse_restarted_mid_referral(make_world, synapse):
    w = await make_world(policy={"grace_period_seconds": 2, "max_lifetime_hours": 72})
    rid = await flow.refer(w, await flow.consent(w))
    up = await flow.send_photo(w)
    img, clean_mxc = await flow.clean_image(w)
    thread = img.thread_root
    # Synapse goes down and comes back between the image and the opinion
    await asyncio.to_thread(synapse.stop)
    await asyncio.sleep(2)
    await asyncio.to_thread(synapse.start)
    await w.sp.say(w.derm_room, "!opinion Benign.", thread_root=thread)
    await flow.bot_reply(w, up.mark, "opinion on", timeout=40)
    # and down again exactly when the removal falls due: it is retried with backoff
    await asyncio.to_thread(synapse.stop)
    await asyncio.sleep(4)
    await asyncio.to_thread(synapse.start)
    await w.sp.wait_for(lambda s: s.event_id == img.event_id and s.redacted, 40, "the removal")
    await flow.media_gone(w, [clean_mxc, *up.mxcs])
    assert len(flow.bot_images_in_room(w)) == 1
    gp_bot = [s.body for s in w.gp.messages(w.dm_room, w.bot_user.user_id)]
    assert sum("opinion on" in b.lower() for b in gp_bot) == 1, gp_bot


async def _pause_sync_loop(t) -> None:
    """Stop the transport's sync loop, so what is sent meanwhile waits on the server."""
    loop = next(task for task in t._tasks if task.get_name() == "matrix-sync")
    loop.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await loop
    t._tasks.remove(loop)


def _resume_sync_loop(t) -> None:
    t._tasks.append(asyncio.create_task(t._sync_loop(), name="matrix-sync"))


async def test_a_sync_made_outside_the_loop_loses_no_message(make_world):
    """Some steps sync outside the sync loop (a room nio does not know yet, keys missing to
    encrypt, a room just joined). nio moves its cursor past whatever that sync returned,
    so the loop's next sync starts after it: its messages must still be handled."""
    w = await make_world()
    t = w.app.transport
    await _pause_sync_loop(t)
    mark = time.monotonic()
    sent = await w.gp.say(w.dm_room, "!help")
    await w.gp.wait_for(lambda s: s.event_id == sent, what="its own message")
    await t._side_sync()  # what a send to a room nio does not know yet does
    _resume_sync_loop(t)
    await flow.bot_reply(w, mark, "!consent")


async def test_one_event_that_fails_costs_that_event_only_not_the_rest_of_its_batch(make_world):
    """A bug, or a refusal retrying cannot fix (a notice the server refuses), while handling
    one event must not drop the events after it in the same sync batch: the GP's command
    that arrived with it is still answered."""
    w = await make_world()
    t = w.app.transport
    await _pause_sync_loop(t)
    real = t._dispatch

    async def fails_on_boom(room_id, event_id, sender, etype, content, src):
        if content.get("body") == "boom":
            raise RuntimeError("a bug in handling this one event")
        return await real(room_id, event_id, sender, etype, content, src)

    t._dispatch = fails_on_boom
    mark = time.monotonic()
    await w.gp.say(w.dm_room, "boom")
    help_ = await w.gp.say(w.dm_room, "!help")  # after it, in the same room and batch
    await w.gp.wait_for(lambda s: s.event_id == help_, what="its own message")
    _resume_sync_loop(t)  # one batch: both messages
    await flow.bot_reply(w, mark, "!consent")
    assert t.failed_events == 1
