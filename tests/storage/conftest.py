"""Fixtures for the storage tests: a fresh master key, a database path, an open database."""
from __future__ import annotations

import os
from datetime import datetime, timezone

import pytest

from storage.db import Database
from storage.keys import Keys, generate_key_file, load_key_file

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)


@pytest.fixture
def key_file(tmp_path):
    """A real key file (0600): the audit CLI needs the key to check the HMAC chain."""
    return generate_key_file(tmp_path / "bot.key")


@pytest.fixture
def keys(key_file) -> Keys:
    return load_key_file(key_file)


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
