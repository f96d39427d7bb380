"""Fixtures for the storage tests: a fresh master key, a database path, an open database."""
from __future__ import annotations

import os
from datetime import datetime, timezone

import pytest

from storage.db import Database
from storage.keys import Keys

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)


@pytest.fixture
def keys() -> Keys:
    return Keys.from_master(os.urandom(32), source="test")


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "bot.sqlite3"


@pytest.fixture
async def db(db_path):
    database = await Database.open(db_path)
    try:
        yield database
    finally:
        await database.close()
