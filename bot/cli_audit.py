"""`referral-bot audit verify --db PATH`: check the hash-chained audit trail.

Exit 0 and "audit chain intact: N entries" when every link holds; exit 1 and
"audit chain broken at entry N: ..." naming the first broken entry; exit 2 for
bad input (no such database, not a referral-bot database).
"""
from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="audit_command", metavar="ACTION")
    verify = sub.add_parser("verify", help="prove the audit chain is intact, or name the first broken entry")
    verify.add_argument("--db", required=True, metavar="PATH", help="the bot's SQLite database")
    verify.add_argument(
        "--expect-head",
        metavar="HASH",
        help="also require the last entry's hash to equal HASH (recorded earlier, e.g. from a previous run), "
        "which detects entries cut off the end",
    )


def run(args: argparse.Namespace) -> int:
    if getattr(args, "audit_command", None) != "verify":
        print("usage: referral-bot audit verify --db PATH", file=sys.stderr)
        return 2
    import asyncio

    return asyncio.run(_verify(args.db, args.expect_head))


async def _verify(path: str, expect_head: str | None) -> int:
    from storage import audit
    from storage.db import Database, StorageError

    try:
        db = await Database.open(path, create=False, migrate=False)
    except StorageError as exc:
        print(f"referral-bot audit: {exc}", file=sys.stderr)
        return 2
    try:
        try:
            if await db.schema_version() < 1:
                print(f"referral-bot audit: {path} has no audit trail (not a referral-bot database?)", file=sys.stderr)
                return 2
            async with db.read() as tx:
                result = await audit.verify(tx)
        except StorageError as exc:
            print(f"referral-bot audit: {exc}", file=sys.stderr)
            return 2
        except Exception as exc:  # sqlite3.DatabaseError and friends: unreadable file
            print(f"referral-bot audit: cannot read {path}: {exc}", file=sys.stderr)
            return 2
    finally:
        await db.close()
    if not result.intact:
        print(f"audit chain broken at entry {result.first_broken}: {result.problem}")
        return 1
    if expect_head is not None and expect_head.strip().lower() != result.head_hash:
        print(
            f"audit chain broken at entry {result.entries + 1}: the chain ends at entry {result.entries} "
            f"whose hash is not the expected head (entries were removed from the end?)"
        )
        return 1
    print(f"audit chain intact: {result.entries} entries")
    print(f"head hash: {result.head_hash}")
    return 0
