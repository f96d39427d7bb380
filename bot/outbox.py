"""What every transport shares: hand domain events to the workflow, run the store's outbox
in order (with backoff when the chat server is unreachable), and tick the timers.

A transport subclasses :class:`OutboxLoop` and implements ``_execute(action)``, returning
the feedback event for the workflow (or None). See docs/ARCHITECTURE.md for the loop.
"""
from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import Any, Callable

from handlers import events as E
from handlers.actions import Action

log = logging.getLogger("referral_bot.outbox")


class OutboxLoop:
    #: errors that mean "try this action again later" (the server is down, a timeout...)
    transient_errors: tuple[type[BaseException], ...] = (OSError, asyncio.TimeoutError)
    #: the longest wait between retries of a failing action, in seconds
    max_backoff: float = 10.0

    def __init__(self, store: Any, workflow: Any, clock: Callable[[], datetime], tick_seconds: float):
        self.store = store
        self.workflow = workflow
        self.clock = clock
        self.tick_seconds = tick_seconds
        self.on_action_done: Callable[[Action, Any], None] | None = None  # hooks for the notifier, tests, bench
        self._drain_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._backoff_until = 0.0
        self._failures = 0

    # ------------------------------------------------------------- for subclasses
    async def _execute(self, action: Action) -> Any:
        raise NotImplementedError

    def _on_new_actions(self, actions: list[Action]) -> None:
        """Called with the actions a handled event queued (before they run)."""

    def _next_batch(self, pending: list[Any]) -> list[Any]:
        """Which pending outbox entries to run now (default: all, in outbox order)."""
        return pending

    async def _on_idle(self) -> None:
        """Called when the outbox has been emptied."""

    def _retry_wait(self, exc: BaseException, wait: float) -> float:
        """How long to wait before retrying after ``exc`` (default: the backoff)."""
        return wait

    # ------------------------------------------------------------- the loop
    async def _handle(self, event: Any) -> list:
        """Give one domain event to the workflow; a bug there is logged, never raised."""
        t0 = time.perf_counter()
        try:
            result = await self.workflow.handle(event)
            log.debug("handled %s in %.1f ms", type(event).__name__, (time.perf_counter() - t0) * 1000)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the workflow failed on a %s", type(event).__name__)
            return []
        if result:
            self._on_new_actions(result)
            self._wake.set()  # new outbox work: drain now rather than at the next tick
        return result or []

    async def tick(self) -> None:
        """Run the timers that are due, then whatever they queued."""
        await self._handle(E.Tick(at=self.clock()))
        await self.drain()

    async def drain(self) -> int:
        """Execute pending outbox actions; returns how many completed. On a transient
        failure stop and back off: the action stays pending and runs again later."""
        if time.monotonic() < self._backoff_until:
            return 0
        done = 0
        async with self._drain_lock:
            while True:
                pending = await self.store.pending_actions()
                if not pending:
                    await self._on_idle()
                    break
                for entry in self._next_batch(pending):
                    t0 = time.perf_counter()
                    try:
                        outcome = await self._execute(entry.action)
                    except asyncio.CancelledError:
                        raise
                    except self.transient_errors as exc:
                        self._failures += 1
                        wait = min(0.5 * 2 ** (self._failures - 1), self.max_backoff)
                        wait = self._retry_wait(exc, wait)
                        self._backoff_until = time.monotonic() + wait
                        log.warning("action %s failed (%s); retrying in %.1f s",
                                    type(entry.action).__name__, type(exc).__name__, wait)
                        return done
                    self._failures = 0
                    if outcome is not None:
                        await self._handle(outcome)
                    await self.store.complete_action(entry.outbox_id)
                    log.debug("completed %s in %.1f ms", type(entry.action).__name__,
                              (time.perf_counter() - t0) * 1000)
                    done += 1
                    if self.on_action_done:
                        self.on_action_done(entry.action, outcome)
        return done

    async def _tick_loop(self) -> None:
        """Drain the outbox as soon as there is work; Tick the timers every tick_seconds."""
        last_tick = time.monotonic()
        while not self._stopping.is_set():
            wait = max(0.0, last_tick + self.tick_seconds - time.monotonic())
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.drain()
                if time.monotonic() - last_tick >= self.tick_seconds:
                    last_tick = time.monotonic()
                    if await self._handle(E.Tick(at=self.clock())):
                        await self.drain()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the timer die
                log.exception("tick/drain failed")
                await asyncio.sleep(1)

    async def _stop_tasks(self) -> None:
        self._stopping.set()
        self._wake.set()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks = []
