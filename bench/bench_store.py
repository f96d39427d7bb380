#!/usr/bin/env python3
"""What the store's protections cost per transition (issue 9: sealed outbox payloads,
versioned records, the signed state and its anchor file, the HMAC audit chain).

Times, on a real SQLite file (synchronous=FULL, the bot's settings), the medians of:
  * one whole transition: processed mark + referral save + audit entry + a 20 KB vault
    put + 2 outbox rows, one transaction (what an image intake writes);
  * draining one outbox action (read pending + complete);
  * `audit verify` over 300 entries (the chain walk);
  * with ``--checkpoint``: how long another process's small writes wait while the bot
    empties a WAL of ~16 MB (the tick's housekeeping after a shred), the bot's way
    (PASSIVE, TRUNCATE only when idle) side by side with a plain TRUNCATE (before).
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


async def checkpoint_stall(rounds: int = 7) -> None:
    """Writer stalls while the WAL is emptied: ours (Database.checkpoint) vs TRUNCATE."""
    import sqlite3
    import threading

    from storage.db import Database

    async def one(way: str) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "wal.sqlite3"
            db = await Database.open(path)
            await db.conn.execute("PRAGMA wal_autocheckpoint = 0")  # let the WAL grow, as under load
            await db.conn.execute("CREATE TABLE IF NOT EXISTS blob (id INTEGER PRIMARY KEY, b BLOB)")
            for i in range(40):
                async with db.transaction() as tx:
                    await tx.execute("INSERT INTO blob (b) VALUES (?)", (os.urandom(400_000),))
            waits: list[float] = []
            stop = threading.Event()

            def writer() -> None:  # another process's small commits (`export`, a second tool)
                conn = sqlite3.connect(path, isolation_level=None, timeout=10)
                conn.execute("PRAGMA synchronous = FULL")
                while not stop.is_set():
                    t0 = time.perf_counter()
                    conn.execute("BEGIN IMMEDIATE")
                    conn.execute("INSERT INTO blob (b) VALUES (x'00')")
                    conn.execute("COMMIT")
                    waits.append(time.perf_counter() - t0)
                    time.sleep(0.002)
                conn.close()

            th = threading.Thread(target=writer)
            th.start()
            await asyncio.sleep(0.05)
            if way == "ours":
                await db.checkpoint()
            else:  # the code before: TRUNCATE with a busy timeout of 0
                await db.conn.execute("PRAGMA busy_timeout = 0")
                async with db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)") as cur:
                    await cur.fetchone()
            await asyncio.sleep(0.05)
            stop.set()
            th.join()
            await db.close()
            return max(waits)

    ours, truncate = [], []
    for _ in range(rounds):  # alternate, so load changes hit both alike
        ours.append(await one("ours"))
        truncate.append(await one("truncate"))
    print(f"longest wait of another process's write while a ~16 MB WAL is emptied ({rounds} runs, median):")
    print(f"  PASSIVE, TRUNCATE only when idle (the tick's): {statistics.median(ours) * 1000:.1f} ms")
    print(f"  TRUNCATE at once (before):                     {statistics.median(truncate) * 1000:.1f} ms")


if __name__ == "__main__":
    if "--checkpoint" in sys.argv:
        asyncio.run(checkpoint_stall())
    else:
        asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 300))
