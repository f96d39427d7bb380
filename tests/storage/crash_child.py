"""A child process for the crash tests: does real store work, then gets SIGKILLed.

    python -m tests.storage.crash_child MODE DB_PATH

The key comes from REFERRAL_BOT_KEK. Modes:

* ``mid-tx``   - one transition's writes, then hang INSIDE the open transaction;
* ``mid-drain``- commit one transition with 3 actions, complete the first, hang;
* ``loop``     - commit transitions forever, printing each index after COMMIT.
"""
from __future__ import annotations

import asyncio
import sys
from datetime import datetime, timedelta, timezone

from handlers.actions import Reply
from handlers.events import DirectChat
from handlers.model import AuditEntry, Referral
from storage.keys import load_keys
from storage.sqlite_store import SQLiteStore

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)


def referral(i: int) -> Referral:
    opened = T0 + timedelta(seconds=i)
    return Referral(
        referral_id=f"R-{i:06d}",
        consent_id="C-1",
        referrer="@gp:example.org",
        practice="Riverside Surgery",
        specialty="dermatology",
        question="free text " * 20,
        opened_at=opened,
        expires_at=opened + timedelta(days=7),
        reminder_at=opened + timedelta(days=6),
    )


async def transition(tx, i: int, n_actions: int = 2) -> None:
    assert await tx.mark_processed(f"$e{i}", T0)
    await tx.save_referral(referral(i))
    await tx.append_audit(AuditEntry(actor="@gp:example.org", action="referral.opened", at=T0, referral_id=f"R-{i:06d}"))
    await tx.vault_put(f"img-{i}", bytes([i % 256]) * 20_000, "image/jpeg")
    await tx.enqueue([Reply(key=f"$e{i}/{n}", to=DirectChat("@gp:example.org"), text=f"step {n}") for n in range(n_actions)])


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


async def main(mode: str, path: str) -> None:
    store = await SQLiteStore.open(path, load_keys(None))
    if mode == "mid-tx":
        async with store.transaction() as tx:
            await transition(tx, 1)
            say("IN-TX")
            await asyncio.sleep(3600)
    elif mode == "mid-drain":
        async with store.transaction() as tx:
            await transition(tx, 1, n_actions=3)
        first = (await store.pending_actions())[0]
        await store.complete_action(first.outbox_id)
        say("MID-DRAIN")
        await asyncio.sleep(3600)
    elif mode == "loop":
        i = 0
        while True:
            async with store.transaction() as tx:
                await transition(tx, i)
            say(str(i))
            i += 1
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
