"""The storage contract (tests/storage/test_contract.py) run against PostgreSQL.

Every test of the shared contract is imported and re-run here with ``store`` bound to a
:class:`storage.postgres_store.PostgresStore` on a fresh database of the real server
started by ``tests/postgres/conftest.py``. Nothing is copied, so the contract can't drift.
"""
from __future__ import annotations

import os

import pytest

from storage.keys import Keys
from tests.storage import test_contract as _contract
from tests.storage.test_contract import *  # noqa: F401,F403  (the contract tests)

from storage.postgres_store import PostgresStore


@pytest.fixture
def keys() -> Keys:
    return Keys.from_master(os.urandom(32), source="test")


@pytest.fixture
async def store(pg_dsn, keys):  # noqa: F811  (replaces the contract's memory/sqlite store)
    s = await PostgresStore.open(pg_dsn, keys)
    try:
        yield s
    finally:
        await s.close()


def test_every_contract_test_is_collected_here():
    names = {n for n in dir(_contract) if n.startswith("test_")}
    assert names and names <= set(globals())
