"""Every Tick ends with the store's housekeeping (issue 9, finding 12: the SQLite store
retries a WAL truncation there), even when the tick itself failed."""
from __future__ import annotations

import pytest

from handlers import events as E

from .helpers import Harness


async def test_every_tick_runs_the_store_housekeeping():
    h = Harness()
    await h.tick()
    await h.tick()
    assert h.store.housekeeping_runs == 2


async def test_housekeeping_runs_even_when_the_tick_fails():
    h = Harness()

    async def broken(at):
        raise RuntimeError("an unreadable row")

    h.workflow._tick = broken
    with pytest.raises(RuntimeError):
        await h.workflow.handle(E.Tick(at=h.now))
    assert h.store.housekeeping_runs == 1
