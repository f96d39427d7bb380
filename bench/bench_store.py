#!/usr/bin/env python3
"""What the store's protections cost per transition (issue 9: sealed outbox payloads,
versioned records, the signed state and its anchor file, the HMAC audit chain).

Times, on a real SQLite file (synchronous=FULL, the bot's settings), the medians of:
  * one whole transition: processed mark + referral save + audit entry + a 20 KB vault
    put + 2 outbox rows, one transaction (what an image intake writes);
  * draining one outbox action (read pending + complete);
  * `audit verify` over 300 entries (the chain walk).
Run it on this checkout and on an older one to compare (the script only uses APIs both
have): `PYTHONPATH=<checkout> .venv/bin/python bench/bench_store.py`.
"""
from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from handlers.actions import Reply
from handlers.events import DirectChat
from handlers.model import AuditEntry, Referral
from storage.keys import Keys
from storage.sqlite_store import SQLiteStore

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)


def referral(i: int) -> Referral:
    return Referral(referral_id=f"R-{i:06d}", consent_id="C-1", referrer="@gp:example.org", practice="P",
                    specialty="dermatology", question="Annular scaly plaque on the forearm: tinea?",
                    opened_at=T0, expires_at=T0 + timedelta(days=7), reminder_at=T0 + timedelta(days=6))


async def main(n: int) -> None:
    keys = Keys.from_master(os.urandom(32))
    with tempfile.TemporaryDirectory() as tmp:
        store = await SQLiteStore.open(Path(tmp) / "bench.sqlite3", keys)
        image = os.urandom(20_000)
        transition, drain = [], []
        for i in range(n):
            t0 = time.perf_counter()
            async with store.transaction() as tx:
                await tx.mark_processed(f"$ev{i}", T0)
                await tx.save_referral(referral(i))
                await tx.append_audit(AuditEntry(actor="@gp:example.org", action="referral.opened", at=T0,
                                                 referral_id=f"R-{i:06d}", consent_id="C-1"))
                await tx.vault_put(f"img-{i}", image, "image/jpeg")
                await tx.enqueue([Reply(key=f"$ev{i}/{k}", to=DirectChat("@gp:example.org"), text="Referral opened.")
                                  for k in range(2)])
            transition.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            (first, *_) = await store.pending_actions(limit=1)
            await store.complete_action(first.outbox_id)
            drain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        result = await store.verify_audit()
        verify = time.perf_counter() - t0
        await store.close()
    ms = lambda xs: f"median {statistics.median(xs) * 1000:.2f} ms, p95 {sorted(xs)[int(len(xs) * .95)] * 1000:.2f} ms"
    print(f"one transition ({n}):      {ms(transition)}")
    print(f"drain one action ({n}):    {ms(drain)}")
    print(f"audit verify ({result.entries} entries): {verify * 1000:.1f} ms")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 300))
