"""What every transport shares: hand domain events to the workflow, run the store's outbox
(with backoff when the chat server or the store fails), and tick the timers.

A transport subclasses :class:`OutboxLoop` and implements ``_execute(action)``, returning
the feedback event for the workflow (or None). See docs/ARCHITECTURE.md for the loop.

Reliability rules (security review, issue 9; docs/operations.md):

* **Lanes.** Removals (``RemoveImages``, ``RedactOriginalUpload``, ``RemovePreview``), posts to the
  specialists (``PostThreadRoot``, ``PostImage``) and messages to people (``Reply``,
  ``Notify``, ``ExportReferral``) run in three independent lanes, so a removal never
  waits behind a post and a stuck post never keeps a GP's ``!help`` unanswered.
  Inside a lane an action waits only for earlier actions with the same ordering key
  (the same referral, the same chat), so one failing action does not hold up the others.
  One courtesy remains: while a post is actually being sent (not while one is failing or
  backing off), the other lanes give way for at most ``post_first_seconds``, because
  the image reaching the thread is the latency the specialist sees and the other lanes'
  requests (redacting the GP's upload, deleting its media, the "Removed: ..." reply)
  would compete with it on the homeserver.
* **Three kinds of failure.** ``PermanentFailure`` (403, not in the room, unknown room:
  it can never work as it is): the action is set aside at once. An outage
  (``transient_errors``: the server cannot be reached): everything backs off, nothing is
  counted against the action. Anything else (a 5xx for this request, a bug): retried
  with backoff up to ``max_attempts`` for its lane, then set aside. An action set aside
  goes to the store's dead-letter list (``referral-bot status``, the
  ``referral_bot_outbox_dead_letters`` metric, an ERROR log line), and the workflow
  hears ``ActionFailed(permanent=True)`` so it tells the GP.
* **Store failures** (disk full, lock timeout) are never swallowed: the event was not
  handled, so ``_handle`` raises :class:`StoreUnavailable`; the transport does not
  acknowledge the chat event (Matrix: the sync token is not advanced) and retries it,
  and an action whose outcome could not be recorded is not completed (its outcome is
  kept and recorded on the next try). Each failure is logged and counted
  (``store_errors``, the ``referral_bot_store_errors_total`` metric).
"""
from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import Any, Callable

from handlers import actions as A
from handlers import events as E
from handlers.actions import Action
from storage.interfaces import RecordUnreadable, StoreError

log = logging.getLogger("referral_bot.outbox")

#: the lanes, and which actions run in each (anything else is a message)
LANES = ("posts", "removals", "messages")  # posts start first (see post_first_seconds)
_LANE_OF = {A.RemoveImages: "removals", A.RedactOriginalUpload: "removals", A.RemovePreview: "removals",
            A.PostThreadRoot: "posts", A.PostImage: "posts"}


def lane_of(action: Action) -> str:
    return _LANE_OF.get(type(action), "messages")


def ordering_key(action: Action) -> str:
    """Actions with the same key run in outbox order; different keys do not wait for
    each other (a failing post for one referral does not hold up another referral)."""
    referral_id = getattr(action, "referral_id", None)
    if referral_id:
        return f"referral:{referral_id}"
    if isinstance(action, A.RedactOriginalUpload):
        return f"upload:{action.upload_ref}"
    to = getattr(action, "to", None) or getattr(action, "reply_to", None)
    if isinstance(to, E.DirectChat):
        return f"person:{to.user_id}"
    if isinstance(action, A.Notify):
        return f"person:{action.user_id}"
    if isinstance(to, E.SpecialtyThread):
        return f"room:{to.specialty}"
    return f"action:{action.key}"


class PermanentFailure(Exception):
    """The action can never succeed as it is (the server answered 403, the bot is not in
    the room, the room does not exist...). str() is one plain sentence for the GP and the
    operator, without patient data."""


class StoreUnavailable(Exception):
    """The workflow's store failed (disk full, lock timeout): the event was NOT handled
    and nothing was marked handled. Retry it later; never acknowledge it."""


class OutboxLoop:
    #: errors that mean "the server cannot be reached": back off, retry, never give up
    transient_errors: tuple[type[BaseException], ...] = (OSError, asyncio.TimeoutError)
    #: the longest wait between retries, in seconds
    max_backoff: float = 10.0
    #: failures of one action (not outages) before it is set aside, per lane
    max_attempts: dict[str, int] = {"posts": 20, "messages": 20, "removals": 120}
    #: how long the other lanes give way to a post being sent (never longer)
    post_first_seconds: float = 0.5

    def __init__(self, store: Any, workflow: Any, clock: Callable[[], datetime], tick_seconds: float):
        self.store = store
        self.workflow = workflow
        self.clock = clock
        self.tick_seconds = tick_seconds
        self.on_action_done: Callable[[Action, Any], None] | None = None  # hooks for the notifier, tests, bench
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._lane_locks = {lane: asyncio.Lock() for lane in LANES}
        self._lane_tasks: dict[str, asyncio.Task] = {}
        self._again: set[str] = set()             # lanes asked to look again while running
        self._outage_until = 0.0                  # the server is unreachable: everyone waits
        self._outages = 0
        self._store_until = 0.0                   # the store failed: everyone waits
        self._store_failures = 0
        self._attempts: dict[int, int] = {}       # outbox id -> failures so far (this process)
        self._not_before: dict[int, float] = {}   # outbox id -> monotonic time of its next try
        # executed, but the outcome is not stored yet: (outcome, dead-letter reason, attempts)
        self._unrecorded: dict[int, tuple[Any, str | None, int]] = {}
        self._posts_sending = 0
        self._no_post_sending = asyncio.Event()
        self._no_post_sending.set()
        #: how often the store failed (for the metrics), and actions set aside in this process
        self.store_errors = 0
        self.dead_lettered = 0

    # ------------------------------------------------------------- for subclasses
    async def _execute(self, action: Action) -> Any:
        raise NotImplementedError

    def _on_new_actions(self, actions: list[Action]) -> None:
        """Called with the actions a handled event queued (before they run)."""

    async def _on_idle(self) -> None:
        """Called when no post is waiting (the post lane ran dry)."""

    def _retry_wait(self, exc: BaseException, wait: float) -> float:
        """How long to wait before retrying after ``exc`` (default: the backoff)."""
        return wait

    # ------------------------------------------------------------- events
    async def _handle(self, event: Any) -> list:
        """Give one domain event to the workflow. A bug there is logged, never raised; a
        store failure raises StoreUnavailable (the event must be retried, not dropped)."""
        t0 = time.perf_counter()
        try:
            result = await self.workflow.handle(event)
            log.debug("handled %s in %.1f ms", type(event).__name__, (time.perf_counter() - t0) * 1000)
        except asyncio.CancelledError:
            raise
        except StoreError as exc:
            if isinstance(exc, RecordUnreadable):
                log.error("a %s refers to a record that cannot be read; skipped", type(event).__name__)
                return []
            self._store_failed(f"handling a {type(event).__name__}", exc)
            raise StoreUnavailable(type(exc).__name__) from exc
        except Exception:
            log.exception("the workflow failed on a %s", type(event).__name__)
            return []
        self._store_failures = 0
        if result:
            self._on_new_actions(result)
            self._wake.set()  # new outbox work: drain now rather than at the next tick
        return result or []

    def _store_failed(self, what: str, exc: BaseException) -> float:
        """Count and log a store failure; returns how long to wait before the next try."""
        self.store_errors += 1
        self._store_failures += 1
        wait = min(0.5 * 2 ** (self._store_failures - 1), self.max_backoff)
        self._store_until = time.monotonic() + wait
        log.error("the store failed while %s (%s); nothing was lost, retrying in %.1f s",
                  what, str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__, wait)
        return wait

    async def tick(self) -> None:
        """Run the timers that are due, then whatever they queued."""
        try:
            await self._handle(E.Tick(at=self.clock()))
        except StoreUnavailable:
            pass  # logged and counted; the next tick runs it again
        await self.drain()

    # ------------------------------------------------------------- the outbox
    async def drain(self) -> int:
        """Run every lane until nothing in it can run now; returns how many actions
        finished (completed or set aside)."""
        counts = await asyncio.gather(*(self._drain_lane(lane, wait=True) for lane in LANES))
        return sum(counts)

    def _kick(self) -> None:
        """Start a worker for each idle lane (a busy one is asked to look again)."""
        for lane in LANES:
            if self._lane_locks[lane].locked():
                self._again.add(lane)
            else:
                task = asyncio.create_task(self._drain_lane(lane), name=f"outbox-{lane}")
                self._lane_tasks[lane] = task
                task.add_done_callback(self._lane_done)

    @staticmethod
    def _lane_done(task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("an outbox lane failed: %r", task.exception())

    async def _drain_lane(self, lane: str, wait: bool = False) -> int:
        lock = self._lane_locks[lane]
        if lock.locked() and not wait:
            self._again.add(lane)
            return 0
        done = 0
        async with lock:
            while True:
                self._again.discard(lane)
                n = await self._lane_pass(lane)
                done += n
                if lane not in self._again or self._stopping.is_set():
                    return done

    async def _lane_pass(self, lane: str) -> int:
        done = 0
        while not self._stopping.is_set():
            now = time.monotonic()
            if now < self._outage_until or now < self._store_until:
                return done
            try:
                pending = await self.store.pending_actions(limit=1000)
            except Exception as exc:
                self._store_failed("reading the outbox", exc)
                return done
            mine = [e for e in pending if lane_of(e.action) == lane]
            if not mine:
                if lane == "posts":
                    await self._on_idle()
                return done
            entry = self._next_runnable(mine, now)
            if entry is None:
                return done
            if lane != "posts" and not self._no_post_sending.is_set():
                try:  # a post is being sent right now: let it go first, briefly
                    await asyncio.wait_for(self._no_post_sending.wait(), self.post_first_seconds)
                except asyncio.TimeoutError:
                    pass
            if await self._run(lane, entry):
                done += 1
        return done

    def _next_runnable(self, entries: list, now: float) -> Any:
        """The first entry that is not backing off and has no earlier entry with its
        ordering key still waiting."""
        blocked: set[str] = set()
        for entry in entries:
            key = ordering_key(entry.action)
            if key in blocked:
                continue
            if self._not_before.get(entry.outbox_id, 0.0) > now:
                blocked.add(key)
                continue
            return entry
        return None

    async def _run(self, lane: str, entry: Any) -> bool:
        """Execute one action and record its outcome. True if it left the outbox."""
        action = entry.action
        oid = entry.outbox_id
        t0 = time.perf_counter()
        if oid in self._unrecorded:
            outcome, dead, attempts = self._unrecorded.pop(oid)
        else:
            dead = None
            attempts = self._attempts.get(oid, 0) + 1
            try:
                if lane == "posts":
                    self._posts_sending += 1
                    self._no_post_sending.clear()
                try:
                    outcome = await self._execute(action)
                finally:
                    if lane == "posts":
                        self._posts_sending -= 1
                        if self._posts_sending == 0:
                            self._no_post_sending.set()
            except asyncio.CancelledError:
                raise
            except PermanentFailure as why:
                dead = str(why)
                outcome = self._failure_event(action, dead)
            except self.transient_errors as exc:
                self._outages += 1
                wait = self._retry_wait(exc, min(0.5 * 2 ** (self._outages - 1), self.max_backoff))
                self._outage_until = time.monotonic() + wait
                log.warning("action %s failed (%s); the server seems unreachable, retrying in %.1f s",
                            type(action).__name__, type(exc).__name__, wait)
                return False
            except Exception as exc:
                n = attempts
                self._attempts[oid] = n
                if n < self.max_attempts.get(lane, 20):
                    wait = self._retry_wait(exc, min(0.5 * 2 ** (n - 1), self.max_backoff))
                    self._not_before[oid] = time.monotonic() + wait
                    log.warning("action %s failed (%s), attempt %d of %d; retrying in %.1f s",
                                type(action).__name__, _short(exc), n,
                                self.max_attempts.get(lane, 20), wait)
                    return False
                dead = (f"I tried {n} times and it kept failing ({type(exc).__name__}); "
                        f"your administrator has been told.")
                outcome = self._failure_event(action, dead)
            else:
                if isinstance(outcome, E.ActionFailed) and outcome.permanent:
                    dead = outcome.reason
            self._outages = 0
        try:
            if outcome is not None:
                await self._handle(outcome)
            if dead is not None:
                await self.store.dead_letter(
                    oid, kind=type(action).__name__, referral_id=getattr(action, "referral_id", None),
                    reason=dead, attempts=attempts, at=self.clock())
            else:
                await self.store.complete_action(oid)
        except StoreUnavailable:
            self._unrecorded[oid] = (outcome, dead, attempts)
            return False
        except Exception as exc:  # complete_action / dead_letter themselves failed
            self._unrecorded[oid] = (outcome, dead, attempts)
            self._store_failed(f"recording a {type(action).__name__}", exc)
            return False
        self._attempts.pop(oid, None)
        self._not_before.pop(oid, None)
        if dead is not None:
            self.dead_lettered += 1
            log.error("gave up on action %s%s: %s (listed by `referral-bot status`)",
                      type(action).__name__,
                      f" of {action.referral_id}" if getattr(action, "referral_id", None) else "", dead)
        log.debug("completed %s in %.1f ms", type(action).__name__, (time.perf_counter() - t0) * 1000)
        if self.on_action_done:
            self.on_action_done(action, outcome)
        return True

    def _failure_event(self, action: Action, reason: str) -> E.ActionFailed:
        """What the workflow hears about an action set aside: it audits it, and tells the
        GP where the action concerned a referral."""
        extra = {"image_id": action.image_id} if isinstance(action, A.PostImage) else {}
        return E.ActionFailed(event_id=f"done:{action.key}", at=self.clock(), action_key=action.key,
                              action_type=type(action).__name__, reason=reason,
                              referral_id=getattr(action, "referral_id", None), permanent=True, **extra)

    # ------------------------------------------------------------- the timer
    async def _tick_loop(self) -> None:
        """Start the lanes as soon as there is work; Tick the timers every tick_seconds."""
        last_tick = time.monotonic()
        while not self._stopping.is_set():
            wait = max(0.0, last_tick + self.tick_seconds - time.monotonic())
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                self._kick()
                if time.monotonic() - last_tick >= self.tick_seconds:
                    last_tick = time.monotonic()
                    if time.monotonic() >= self._store_until:
                        try:
                            if await self._handle(E.Tick(at=self.clock())):
                                self._kick()
                        except StoreUnavailable:
                            pass  # logged and counted; retried at the next tick
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the timer die
                log.exception("tick/drain failed")
                await asyncio.sleep(1)

    async def _stop_tasks(self) -> None:
        self._stopping.set()
        self._wake.set()
        for t in [*self._tasks, *self._lane_tasks.values()]:
            t.cancel()
        for t in [*self._tasks, *self._lane_tasks.values()]:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks = []
        self._lane_tasks = {}


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text.split("http", 1)[0][:160]
