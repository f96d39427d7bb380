from __future__ import annotations

import pytest

from tests.telegram.fakebotapi import FakeBotAPI


@pytest.fixture
async def fake_api():
    server = await FakeBotAPI().start()
    try:
        yield server
    finally:
        await server.stop()
