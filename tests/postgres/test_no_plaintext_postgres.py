"""Issue 9, finding 2 on PostgreSQL: the same story as tests/storage/test_no_plaintext.py
(mistyped consent, consent, referral, image, opinion, removal; then a withdrawal), and
after each part every value of every column of every table, read through SQL, is searched
for the NHS number, the questions, the opinion, the statement and the date of birth. The
SQL is shared with SQLite, so what the SQLite test proves about the bytes holds for what
is written here; dead row versions are not visible through SQL (and never held clear text
to begin with, since nothing is written in clear)."""
from __future__ import annotations

import os

import pytest

from storage.keys import Keys
from storage.postgres_store import PostgresStore
from tests.storage.test_no_plaintext import OPINION, QUESTION_1, QUESTION_2, QUESTION_3, SECRETS, story


@pytest.fixture
def keys() -> Keys:
    return Keys.from_master(os.urandom(32), source="test")


async def _every_value(store) -> list[object]:
    values: list[object] = []
    async with store.db.read() as tx:
        tables = [r["table_name"] for r in await tx.fetchall(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
            " AND table_type = 'BASE TABLE'")]
        assert {"outbox", "consents", "referrals", "audit_log", "vault_items", "store_meta"} <= set(tables)
        for table in tables:
            for row in await tx.fetchall(f'SELECT * FROM "{table}"'):
                values.extend(row.values())
    return values


def _leaks(values: list[object]) -> list[str]:
    found = set()
    for value in values:
        if isinstance(value, (bytes, bytearray, memoryview)):
            blob = bytes(value)
            found.update(s for s in SECRETS if s.encode("utf-8") in blob)
        elif value is not None:
            text = str(value)
            found.update(s for s in SECRETS if s in text)
    return sorted(found)


async def test_no_clinical_text_or_identifier_in_any_postgres_column(pg_dsn, keys):
    store = await PostgresStore.open(pg_dsn, keys)
    seen: list[str] = []

    async def check(stage: str) -> None:
        values = await _every_value(store)
        assert len(values) > 100  # the search did read the data
        assert _leaks(values) == [], stage
        seen.append(stage)

    try:
        await story(store, check)
        async with store.read() as tx:
            refs = await tx.all_referrals()
        assert {r.question for r in refs} == {QUESTION_1, QUESTION_2, QUESTION_3} and OPINION in {r.opinion for r in refs}
    finally:
        await store.close()
    assert seen == ["after the full flow", "after the withdrawal"]
