"""One real Synapse per test session, shared by every Matrix test (start-up ~1-2 s)."""
from __future__ import annotations

import itertools
import secrets

import pytest

from bot.synapse_local import LocalSynapse

_counter = itertools.count()


@pytest.fixture(scope="session")
def synapse(tmp_path_factory):
    hs = LocalSynapse(tmp_path_factory.mktemp("synapse"))
    hs.start()
    try:
        yield hs
    finally:
        hs.stop()


@pytest.fixture
def unique():
    """A short unique suffix so each test registers its own users."""
    return f"{next(_counter)}{secrets.token_hex(2)}"


@pytest.fixture
async def make_world(synapse, tmp_path, unique):
    """Build a World (bot + GP + specialist + rooms) on the session Synapse; the bot runs."""
    from bot.matrix.world import World

    worlds = []

    async def make(start: bool = True, **kw):
        w = await World.create(synapse, tmp_path / f"w{len(worlds)}",
                               suffix=f"{unique}x{len(worlds)}", **kw)
        worlds.append(w)
        if start:
            await w.start_bot()
            await w.wait_bot_joined()
        return w

    yield make
    for w in worlds:
        await w.close()
