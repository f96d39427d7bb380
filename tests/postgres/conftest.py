"""Fixtures for tests against a real PostgreSQL server started by the test run."""
from __future__ import annotations

import uuid

import pytest

from tests.postgres.pgserver import PgServer, PostgresUnavailable


@pytest.fixture(scope="session")
def pg_server():
    try:
        server = PgServer.start()
    except PostgresUnavailable as exc:
        pytest.skip(f"no PostgreSQL server for these tests: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def pg_dsn(pg_server):
    """A fresh, empty database on the session server; dropped after the test."""
    asyncpg = pytest.importorskip("asyncpg")
    name = "t_" + uuid.uuid4().hex[:12]
    admin = await asyncpg.connect(pg_server.dsn("postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield pg_server.dsn(name)
    admin = await asyncpg.connect(pg_server.dsn("postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
