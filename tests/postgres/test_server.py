"""The test PostgreSQL server really runs, on loopback, as an unprivileged user."""
import asyncpg


async def test_server_answers_on_loopback_as_unprivileged_user(pg_server, pg_dsn):
    conn = await asyncpg.connect(pg_dsn)
    try:
        version = await conn.fetchval("SHOW server_version")
        assert version.split(".")[0].isdigit()
        addr = await conn.fetchval("SELECT inet_server_addr()::text")
        assert addr.startswith("127.0.0.1")
        assert await conn.fetchval("SELECT 1 + 1") == 2
    finally:
        await conn.close()
    # The server's data directory belongs to a non-root user.
    assert pg_server.datadir.stat().st_uid != 0 or pg_server._run_as is None
