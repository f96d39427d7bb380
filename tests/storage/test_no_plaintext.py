"""Issue 9, finding 2: no clinical text and no patient identifier in clear in the database.

The whole path runs on the real store: a mistyped consent (whose refusal used to echo the
NHS number), consent, referral, image, discussion, opinion, removal; then a second
referral and a consent withdrawal. Issue 10's conversation runs on it too: the
specialist's question relayed to the GP, the GP's answer posted into the thread, a request
for more photos, an addendum, and a photo held because two referrals were open (its
document sealed in ``unassigned_photos``, destroyed by the withdrawal). After each part the raw bytes of the SQLite file, its
WAL and its shared-memory index are searched for the NHS number (as typed, and spaced),
the clinical questions, the opinion, the best-interests statement and the date of birth.
Before issue 9 the outbox kept every action's JSON in clear, done or not.
(tests/postgres/test_no_plaintext_postgres.py runs the same story on PostgreSQL and
searches every column of every table through SQL.)
"""
from __future__ import annotations

from pathlib import Path
from typing import Awaitable, Callable

from handlers import events as E
from tests.handlers.helpers import DERM, GP, Harness, consent_id_from, jpeg_with_metadata, referral_id_from, reply_text

NHS = "9434765919"
NHS_SPACED = "943 476 5919"
DOB = "2015-04-01"
STATEMENT = "Wanted for teaching registrars about tinea incognito; mother agrees"
QUESTION_1 = "Annular scaly plaque on the forearm, worse after steroid cream: tinea incognito?"
QUESTION_2 = "Second lesion behind the left ear, pearly with telangiectasia: BCC?"
OPINION = "Tinea incognito: stop the steroid, oral terbinafine for four weeks"
DISCUSSION = "Could you send a close-up with a ruler next to the plaque"
ANSWER = "Plaque has a raised scaly edge and central clearing for three weeks"
MORE_PHOTOS = "A close-up of the raised border please, with a ruler beside it"
ADDENDUM = "If no better in four weeks take scrapings for mycology culture"
QUESTION_3 = "Third lesion on the shin, target-like rings after a tick bite: erythema migrans?"
SECRETS = (NHS, NHS_SPACED, DOB, STATEMENT, QUESTION_1, QUESTION_2, OPINION, DISCUSSION, ANSWER, MORE_PHOTOS,
           ADDENDUM, QUESTION_3)


async def held_photos(store) -> int:
    async with store.read() as tx:
        return len(await tx.unassigned_photos(GP.user_id))


async def story(store, check: Callable[[str], Awaitable[None]]) -> None:
    """The whole path on ``store``; ``check(stage)`` searches the database after each part."""
    h = Harness(store=store)
    refusal = reply_text(await h.say(GP, f"!consent {NHS}"))
    assert NHS not in refusal
    await h.drain()
    cid = consent_id_from(await h.say(
        GP, f'!consent patient="{NHS_SPACED}" by=parent dob={DOB} purposes=care,teaching identifiable=no '
            f'notes=yes specialties=dermatology statement="{STATEMENT}"'))
    rid = referral_id_from(await h.say(GP, f"!refer dermatology {cid} {QUESTION_1}"))
    await h.send_image(GP, jpeg_with_metadata(seed=11))
    await h.drain()
    thread = E.SpecialtyThread("dermatology", None, f"$root-{rid}")
    await h.workflow.handle(E.ThreadActivity(h.eid(), DERM, h.now, thread, text=DISCUSSION))
    await h.drain()
    h.dm_event_of(DISCUSSION, GP.user_id)  # the question reached the GP
    assert ANSWER in reply_text(await h.say(GP, f"!reply {rid} {ANSWER}"))  # into the thread
    await h.say(DERM, f"!morephotos {MORE_PHOTOS}", place=thread)
    await h.drain()
    await h.send_image(GP, jpeg_with_metadata(seed=13))
    await h.drain()
    await h.say(DERM, f"!opinion {OPINION}", place=thread)
    await h.say(DERM, f"!addendum {ADDENDUM}", place=thread)
    await h.drain()
    h.advance(hours=25)  # past the grace period: the images are removed
    await h.tick()
    await h.drain()
    assert h.chat == {}
    await check("after the full flow")

    rid2 = referral_id_from(await h.say(GP, f"!refer dermatology {cid} {QUESTION_2}"))
    await h.send_image(GP, jpeg_with_metadata(seed=12))
    await h.drain()
    assert h.chat
    referral_id_from(await h.say(GP, f"!refer dermatology {cid} {QUESTION_3}"))
    assert "which referral" in reply_text(await h.send_image(GP, jpeg_with_metadata(seed=14))).lower()
    assert await held_photos(store) == 1
    await h.drain()
    assert "withdrawn" in reply_text(await h.say(GP, f"!withdraw {cid}"))
    await h.drain()
    await h.tick()
    assert h.chat == {} and rid2 and await held_photos(store) == 0
    await check("after the withdrawal")


def raw_database(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists())


def leaks(raw: bytes) -> list[str]:
    return [s for s in SECRETS if s.encode("utf-8") in raw]


async def test_no_clinical_text_or_identifier_in_the_sqlite_bytes(tmp_path, keys):
    from storage.sqlite_store import SQLiteStore

    path = tmp_path / "bot.sqlite3"
    store = await SQLiteStore.open(path, keys)
    seen: list[str] = []

    async def check(stage: str) -> None:
        assert Path(f"{path}-wal").exists()  # the WAL is searched too, while in use
        assert leaks(raw_database(path)) == [], stage
        seen.append(stage)

    try:
        await story(store, check)
        async with store.read() as tx:  # and the records still hold all of it, sealed
            refs = await tx.all_referrals()
        assert {r.question for r in refs} == {QUESTION_1, QUESTION_2, QUESTION_3}
        assert OPINION in {r.opinion for r in refs}
        assert any(ADDENDUM in str(r.to_dict()) for r in refs)
    finally:
        await store.close()
    assert seen == ["after the full flow", "after the withdrawal"]
    assert leaks(raw_database(path)) == []
