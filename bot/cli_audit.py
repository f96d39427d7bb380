"""`referral-bot audit verify`: check the signed audit chain and the store's signed state.

    referral-bot audit verify --db PATH [--key-file PATH] [--anchor PATH | --no-anchor] [--expect-head HASH]
    referral-bot audit verify --config FILE

The chain is an HMAC chain, so checking it needs the deployment key (``--key-file``, or
``REFERRAL_BOT_KEK``; with ``--config`` the configured key file). It checks every link,
then that the signed state in the database names the chain's last entry and matches the
consent and referral rows, then that the anchor file outside the database (default
``<db>.anchor``) is this state or an earlier one whose head is still in the chain.

Exit 0 and "audit chain intact: N entries" when all of that holds; exit 1 and one line
naming the first problem ("audit chain broken at entry N: ..." for the chain, entries cut
off the end included); exit 2 for bad input (no such database, no key, wrong key).
Reads only: it never writes to the database or the anchor file.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="audit_command", metavar="ACTION")
    verify = sub.add_parser("verify", help="prove the audit chain is intact, or name the first broken entry")
    where = verify.add_mutually_exclusive_group(required=True)
    where.add_argument("--db", metavar="PATH", help="the bot's SQLite database")
    where.add_argument("--config", "-c", metavar="FILE", help="the bot's config file (SQLite or PostgreSQL)")
    verify.add_argument("--key-file", metavar="PATH",
                        help="the deployment key (default: REFERRAL_BOT_KEK, or the config's key_file)")
    anchor = verify.add_mutually_exclusive_group()
    anchor.add_argument("--anchor", metavar="PATH",
                        help="the anchor file (default: <db>.anchor, or the config's anchor_file)")
    anchor.add_argument("--no-anchor", action="store_true",
                        help="skip the anchor file (a restored backup is older than it by design)")
    verify.add_argument(
        "--expect-head",
        metavar="HASH",
        help="also require the last entry's hash to equal HASH (hex as printed here, or the operator "
        "log's head=... form)",
    )


def run(args: argparse.Namespace) -> int:
    if getattr(args, "audit_command", None) != "verify":
        print("usage: referral-bot audit verify --db PATH [--key-file PATH]", file=sys.stderr)
        return 2
    import asyncio

    return asyncio.run(_verify(args))


def _fail(message: str) -> int:
    print(f"referral-bot audit: {message}", file=sys.stderr)
    return 2


async def _verify(args: argparse.Namespace) -> int:
    from storage.db import Database, StorageError
    from storage.keys import KeyProblem, load_keys
    from storage.seal import head_for_log, head_from_text

    dsn = None
    if args.config:
        from bot.config import ConfigError, load_config

        try:
            config = load_config(args.config, need_matrix=False)
        except ConfigError as exc:
            return _fail(str(exc))
        key_file = args.key_file or (config.storage.key_file if config.storage.key_file.exists() else None)
        anchor = args.anchor or config.storage.anchor_file
        if config.storage.backend == "postgres":
            dsn, path = config.storage.dsn, None
        else:
            path = config.storage.sqlite_path
    else:
        path, key_file = Path(args.db), args.key_file
        anchor = args.anchor or Path(str(path) + ".anchor")
    try:
        keys = load_keys(key_file)
    except KeyProblem as exc:
        return _fail(f"the audit chain is signed, so checking it needs the deployment key: {exc}")

    try:
        if dsn is not None:
            from storage.postgres_store import PgDatabase

            db = await PgDatabase.open(dsn, migrate=False)
        else:
            db = await Database.open(path, create=False, migrate=False)
    except StorageError as exc:
        return _fail(str(exc))
    try:
        report = await _check(db, keys, None if args.no_anchor else anchor, str(path or "the database"))
    except StorageError as exc:
        return _fail(str(exc))
    except Exception as exc:  # sqlite3.DatabaseError and friends: an unreadable file
        return _fail(f"cannot read {path or 'the database'}: {exc}")
    finally:
        await db.close()
    if isinstance(report, int):
        return report
    if args.no_anchor and report.ok:
        report.notes.append("anchor file not checked (--no-anchor): entries cut off after the last signed "
                            "state was saved cannot be detected")
    if not report.ok:
        print(report.problem)
        return 1
    result = report.chain
    if args.expect_head is not None and head_from_text(args.expect_head) != result.head_hash:
        print(
            f"audit chain broken at entry {result.entries + 1}: the chain ends at entry {result.entries} "
            f"whose hash is not the expected head (entries were removed from the end?)"
        )
        return 1
    legacy = f" ({result.legacy_entries} from before signing, re-anchored)" if result.legacy_entries else ""
    print(f"audit chain intact: {result.entries} entries{legacy}")
    print(f"head hash: {result.head_hash} (in the operator log: head={head_for_log(result.head_hash)})")
    for note in report.notes or []:
        print(note)
    return 0


async def _check(db, keys, anchor, where: str):
    from storage import queries as Q
    from storage.seal import UPGRADE_ROW, AnchorFile, verify_store

    if await db.schema_version() < 1:
        return _fail(f"{where} has no audit trail (not a referral-bot database?)")
    signed = await db.schema_version() >= 4
    async with db.read() as tx:
        stored = await tx.scalar(Q.VAULT_META_GET, ("kek_fingerprint",))
        if stored is not None and stored != keys.fingerprint:
            return _fail(f"the key from {keys.source} (fingerprint {keys.fingerprint}) is not this database's key "
                         f"(fingerprint {stored})")
        if signed and await tx.scalar(Q.GET_META, (UPGRADE_ROW,)) is not None:
            signed = False
        return await verify_store(tx, keys.audit_key, keys.seal_key, AnchorFile(anchor) if anchor else None,
                                  signed=signed)
