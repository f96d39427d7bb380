"""`referral-bot audit verify`: check the signed audit chain and the store's signed state.
`referral-bot audit show R-… --db PATH`: a referral's audit trail, for a person to read
(who opened it, who was in the room at each image post, who discussed, who gave the
opinion, when it was filed and where, when the media were deleted).
`referral-bot audit show --patient REF --db PATH --key-file KEY`: a subject access
request: every referral under that patient's consents, and what was filed where.

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
    show = sub.add_parser("show", help="print a referral's audit trail, or every referral of a patient")
    show.add_argument("referral_id", nargs="?", metavar="R-ID", help="the referral, e.g. R-7K3QX9")
    show.add_argument("--patient", metavar="REF", help="a patient reference (e.g. the NHS number): subject access request")
    show.add_argument("--db", required=True, metavar="PATH", help="the bot's SQLite database")
    show.add_argument("--key-file", metavar="PATH", help="the bot's key file (needed with --patient); "
                      "default: the REFERRAL_BOT_KEK environment variable")


def run(args: argparse.Namespace) -> int:
    import asyncio

    command = getattr(args, "audit_command", None)
    if command == "show":
        if bool(args.referral_id) == bool(args.patient):
            print("usage: referral-bot audit show (R-ID | --patient REF) --db PATH", file=sys.stderr)
            return 2
        return asyncio.run(_show(args))
    if command != "verify":
        print("usage: referral-bot audit (verify | show) --db PATH ...", file=sys.stderr)
        return 2
    return asyncio.run(_verify(args))


_WORDS = {
    "referral.opened": "opened the referral",
    "thread.posted": "posted the question in the specialty room",
    "image.accepted": "sent an image (metadata removed)",
    "image.held": "sent an image that was held (faces, consent does not cover them)",
    "image.post_requested": "queued an image for the specialty thread",
    "image.posted": "posted an image in the specialty thread",
    "image.room_members": "in the room when the image was posted",
    "thread.discussed": "wrote in the thread",
    "opinion.given": "gave the opinion",
    "opinion.refused": "tried to give the opinion (not on the roster)",
    "image.removal_requested": "asked for the images to be removed from the chat",
    "image.removed": "removed images from the chat",
    "referral.cancelled": "cancelled the referral",
    "referral.expired": "expired the referral (no opinion in time)",
    "referral.withdrawn": "withdrew the consent for this referral",
    "referral.closed": "closed the referral",
    "referral.export_requested": "asked for the record to be filed (!export)",
    "referral.exported": "exported the record (referral-bot export)",
    "record.filing_requested": "asked for the record to be filed",
    "record.filed": "filed the record",
    "record.filing_failed": "could not file the record",
    "record.retention_warning": "warned that retention is near and the record is unfiled",
    "record.copies_deleted": "deleted files left in filing folders",
    "vault.retention_ended": "destroyed a vault copy (end of retention)",
    "image.discarded": "discarded an image (never shown)",
    "action.failed": "could not carry out an action",
}


def _line(e) -> str:
    d = dict(e.details)
    what = _WORDS.get(e.action, e.action)
    extra = []
    if e.action == "image.room_members":
        extra.append("members: " + ", ".join(d.get("members", [])))
    elif e.action in ("record.filed", "record.filing_failed"):
        extra.append("to " + ", ".join(d.get("sinks", [])))
    elif e.action == "image.removed":
        extra.append("media deleted from the server" if d.get("media_deleted") else "media NOT confirmed deleted")
    for key in ("image_id", "reason", "count", "attempt", "rule", "outcome"):
        if key in d and e.action != "image.room_members":
            extra.append(f"{key} {d[key]}")
    tail = f" ({'; '.join(extra)})" if extra else ""
    return f"{e.at.strftime('%Y-%m-%d %H:%M:%S')}  {e.actor}  {what}{tail}"


async def _open_db(path: str):
    from storage.db import Database

    db = await Database.open(path, create=False, migrate=False)
    return db


async def _show(args) -> int:
    from storage import audit
    from storage.db import StorageError

    if args.referral_id:
        rid = args.referral_id.strip().upper()
        try:
            db = await _open_db(args.db)
        except StorageError as exc:
            print(f"referral-bot audit: {exc}", file=sys.stderr)
            return 2
        try:
            async with db.read() as tx:
                entries = await audit.entries(tx, rid)
        finally:
            await db.close()
        if not entries:
            print(f"referral-bot audit: no audit entries for {rid}", file=sys.stderr)
            return 1
        print(f"Audit trail of {rid} ({len(entries)} entries; times UTC)")
        for e in entries:
            print("  " + _line(e))
        return 0
    return await _subject_access(args)


async def _subject_access(args) -> int:
    """Which referrals the bot holds for this patient, and what was filed where. The
    reference is hashed with the deployment key and compared with each consent's hash;
    it is never printed back or logged."""
    from storage import audit
    from storage.db import StorageError
    from storage.interfaces import StoreError
    from storage.keys import KeyProblem, load_keys
    from storage.sqlite_store import SQLiteStore

    try:
        keys = load_keys(args.key_file)
        store = await SQLiteStore.open(args.db, keys, create=False)
    except (KeyProblem, StorageError, StoreError) as exc:
        print(f"referral-bot audit: {exc}", file=sys.stderr)
        return 2
    try:
        try:
            wanted = keys.patient_ref_hasher().hash(args.patient)
        except ValueError:
            print("referral-bot audit: the patient reference is empty", file=sys.stderr)
            return 2
        async with store.read() as tx:
            consents = [c for c in await tx.all_consents() if c.patient_ref == wanted]
            referrals = {c.consent_id: await tx.referrals_by_consent(c.consent_id) for c in consents}
        async with store.db.read() as tx:
            trails = {r.referral_id: await audit.entries(tx, r.referral_id) for rs in referrals.values() for r in rs}
    finally:
        await store.close()
    if not consents:
        print("No consent or referral is held for that patient reference.")
        return 0
    print(f"Subject access: {len(consents)} consent(s), {sum(len(r) for r in referrals.values())} referral(s)")
    for c in consents:
        state = f"withdrawn {c.withdrawn_at:%Y-%m-%d}" if c.withdrawn_at else "in force"
        print(f"Consent {c.consent_id}: recorded {c.recorded_at:%Y-%m-%d} by {c.recorded_by} ({c.practice}); "
              f"purposes {', '.join(sorted(p.value for p in c.purposes))}; {state}")
        for r in referrals[c.consent_id]:
            filed = [e for e in trails[r.referral_id] if e.action == "record.filed"]
            where = sorted({s for e in filed for s in e.details.get("sinks", [])})
            print(f"  {r.referral_id} {r.specialty}: opened {r.opened_at:%Y-%m-%d} by {r.referrer}, {r.state.value}"
                  + (f" ({r.close_reason.value})" if r.close_reason else "")
                  + (f"; opinion by {r.opinion_by}" if r.opinion_by else "")
                  + (f"; filed to {', '.join(where)} (last {filed[-1].at:%Y-%m-%d %H:%M})" if filed else "; not filed")
                  + f"; images {len([i for i in r.images if i.state.value != 'discarded'])}, "
                  f"{sum(1 for i in r.images if not i.shredded)} still in the vault")
            seen = sorted({m for e in trails[r.referral_id] if e.action == "image.room_members"
                           for m in e.details.get("members", [])})
            if seen:
                print(f"    seen in the specialty room by: {', '.join(seen)}")
    return 0


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


#: the schema version from which the store keeps a signed state (migration 006)
SIGNED_SINCE = 6


async def _check(db, keys, anchor, where: str):
    from storage import queries as Q
    from storage.seal import UPGRADE_ROW, AnchorFile, read_anchor, verify_store

    if await db.schema_version() < 1:
        return _fail(f"{where} has no audit trail (not a referral-bot database?)")
    signed = await db.schema_version() >= SIGNED_SINCE
    anchor_file = AnchorFile(anchor) if anchor else None
    anchored = read_anchor(anchor_file, keys.seal_key)  # before the snapshot (see read_anchor)
    async with db.read() as tx:
        stored = await tx.scalar(Q.VAULT_META_GET, ("kek_fingerprint",))
        if stored is not None and stored != keys.fingerprint:
            return _fail(f"the key from {keys.source} (fingerprint {keys.fingerprint}) is not this database's key "
                         f"(fingerprint {stored})")
        if signed and await tx.scalar(Q.GET_META, (UPGRADE_ROW,)) is not None:
            signed = False
        return await verify_store(tx, keys.audit_key, keys.seal_key, anchor_file, anchored, signed=signed)
