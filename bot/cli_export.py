"""`referral-bot export R-… --db PATH [--key-file PATH] [-o FILE]`.

Writes the referral as a validated FHIR R4 Bundle (JSON) for the operator, and
records that it was exported (the lifecycle's ``exported`` transition: audit
entry, ``exported_at``). Exporting destroys nothing (issue 13): the vault copies
go when their retention ends once the referral is filed (docs/filing.md), or at
once on withdrawal. The file is written with an unguessable temporary name
(``O_EXCL|O_NOFOLLOW``), mode 0600, fsynced and renamed into place.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("referral_id", metavar="R-ID", help="the referral to export, e.g. R-7K3QX9")
    parser.add_argument("--db", required=True, metavar="PATH", help="the bot's SQLite database")
    parser.add_argument(
        "--key-file", metavar="PATH",
        help="the bot's key file (mode 0600); default: the REFERRAL_BOT_KEK environment variable",
    )
    parser.add_argument("-o", "--output", metavar="FILE", help="write the bundle here (default: standard output)")
    parser.add_argument("--force", action="store_true", help="overwrite FILE if it exists")


def run(args: argparse.Namespace) -> int:
    import asyncio

    return asyncio.run(_run(args))


def _fail(message: str, code: int = 2) -> int:
    print(f"referral-bot export: {message}", file=sys.stderr)
    return code


async def _run(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from handlers import lifecycle
    from storage.db import StorageError
    from storage.fhir_export import ExportError, export_referral, write_private
    from storage.interfaces import StoreError
    from storage.keys import KeyProblem, load_keys
    from storage.sqlite_store import SQLiteStore

    referral_id = args.referral_id.strip().upper()
    if not referral_id.startswith("R-") or len(referral_id) > 64:
        return _fail(f"{args.referral_id!r} is not a referral id (they look like R-7K3QX9)")
    out = Path(args.output) if args.output else None
    if out is not None and out.exists() and not args.force:
        return _fail(f"{out} already exists (use --force to overwrite)")
    if out is not None and not out.parent.exists():
        return _fail(f"folder {out.parent} does not exist")
    try:
        keys = load_keys(args.key_file)
        store = await SQLiteStore.open(args.db, keys, create=False)
    except (KeyProblem, StorageError, StoreError) as exc:
        return _fail(str(exc))
    try:
        at = datetime.now(timezone.utc)
        try:
            result = await export_referral(store, referral_id, at=at)
        except (ExportError, StorageError, StoreError) as exc:
            return _fail(str(exc))
        text = result.json()
        if out is None:
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            try:
                write_private(out, text, overwrite=args.force)
            except OSError as exc:
                return _fail(f"cannot write {out}: {exc.strerror or exc}")
        try:
            async with store.transaction() as tx:
                ref = await tx.get_referral(referral_id)
                ref2, effects = lifecycle.exported(ref, at=at)
                for entry in effects.audit:
                    await tx.append_audit(entry)
                await tx.save_referral(ref2)
        except (lifecycle.IllegalTransition, StorageError, StoreError) as exc:
            return _fail(f"exported, but the export could not be recorded in the audit trail: {exc}", 1)
    finally:
        await store.close()

    report = sys.stderr if out is None else sys.stdout
    where = "standard output" if out is None else str(out)
    print(
        f"exported {referral_id} to {where}: FHIR R4 bundle with {len(result.images_included)} image(s)"
        + (", the opinion" if ref2.opinion is not None else ", no opinion yet")
        + " and the consent record",
        file=report,
    )
    print("nothing was destroyed: the vault copies stay until their retention ends once the referral is filed",
          file=report)
    if result.images_missing:
        print(f"already destroyed before this export (listed without image data): {', '.join(result.images_missing)}",
              file=report)
    return 0
