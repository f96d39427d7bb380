"""`referral-bot status --config FILE`: live images, next expiry, overdue items, photos held
for a GP's decision (a face or text found; the blurred preview is in the GP's direct chat),
referrals escalated to the specialty lead and still without an opinion, and what the bot
gave up on: actions set aside for good (the dead-letter list: the bot was removed from a
room, the server refused, too many retries) and referrals the timers skip because their row
cannot be read.

Reads the store (and the Matrix transport's media ledger when present); prints no
patient data: referral ids, states, counts, times and the plain reasons only.
"""
from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, metavar="FILE", help="TOML config file")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def _fmt(dt) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S UTC") if dt else "-"


def run(args: argparse.Namespace) -> int:
    import asyncio
    import json
    from datetime import datetime, timezone

    from bot.config import ConfigError, load_config

    try:
        config = load_config(args.config, need_matrix=False)
    except ConfigError as exc:
        print(f"referral-bot status: {exc}", file=sys.stderr)
        return 2

    async def collect() -> dict:
        from bot.app import open_store

        store, _keys = await open_store(config)
        try:
            reader = getattr(store, "read", store.transaction)
            async with reader() as tx:
                refs, unreadable = await tx.readable_referrals()
            pending = await store.pending_actions(limit=100_000)
            dead = await store.dead_letters(limit=20)
            dead_total = await store.dead_letter_count()
            set_aside = await store.set_aside_referrals()
        finally:
            await store.close()
        now = datetime.now(timezone.utc)
        live = []
        for r in refs:
            for i in r.images:
                if i.state.in_chat:
                    live.append({"referral": r.referral_id, "image": i.filename,
                                 "state": i.state.value, "specialty": r.specialty})
        due = [(r.next_due_at(), r) for r in refs if r.next_due_at() is not None]
        overdue = [{"referral": r.referral_id, "state": r.state.value, "due": _fmt(d),
                    "late_seconds": round((now - d).total_seconds())}
                   for d, r in sorted(due, key=lambda x: x[0]) if d <= now]
        upcoming = min((d for d, _ in due if d > now), default=None)
        ledger = None
        if config.matrix is not None:
            path = config.matrix.store_dir / "transport.sqlite3"
            if path.exists():
                from bot.matrix.state import TransportState

                st = TransportState(path)
                try:
                    ledger = len(st.live_media())
                finally:
                    st.close()
        from handlers.model import ImageState

        # a held photo waits for the GP's !blur or !discard and is destroyed at held_until
        held = [{"referral": r.referral_id, "image": i.filename, "preview": i.preview.value,
                 "destroyed_at": _fmt(i.held_until)}
                for r in refs for i in r.images if i.state is ImageState.HELD]
        escalated = [{"referral": r.referral_id, "specialty": r.specialty, "state": r.state.value,
                      "escalated_at": _fmt(r.escalated_at)}
                     for r in refs if r.is_open and r.escalated_at is not None]
        filing_failed = [{"referral": r.referral_id, "attempts": r.filing_failures,
                          "sinks_done": list(r.filed_to), "next_try": _fmt(r.filing_retry_at)}
                         for r in refs if r.awaiting_filing and r.filing_failures > 0]
        return {
            "filing_configured": config.policy().filing_enabled,
            "filing_pending": sum(1 for r in refs if r.awaiting_filing),
            "filing_failed": filing_failed,
            "referrals_open": sum(1 for r in refs if r.is_open),
            "referrals_total": len(refs),
            "images_live_in_chat": live,
            "photos_held_for_gp": held,
            "escalated_without_opinion": escalated,
            "next_due": _fmt(upcoming),
            "overdue": overdue,
            "outbox_pending": len(pending),
            "media_on_server_not_yet_deleted": ledger,
            "dead_letters_total": dead_total,
            "dead_letters": [{"at": _fmt(d.at), "action": d.kind, "referral": d.referral_id,
                              "reason": d.reason, "attempts": d.attempts} for d in dead],
            "referrals_set_aside": [{"referral": a.referral_id, "at": _fmt(a.at), "reason": a.reason}
                                    for a in set_aside],
            "referrals_unreadable": unreadable,
        }

    try:
        info = asyncio.run(collect())
    except Exception as exc:
        print(f"referral-bot status: cannot read the store: {str(exc).splitlines()[0][:200]}",
              file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"Referrals open: {info['referrals_open']} (of {info['referrals_total']})")
    print(f"Images live in chat: {len(info['images_live_in_chat'])}")
    for i in info["images_live_in_chat"]:
        print(f"  {i['referral']}  {i['image']}  {i['state']}  ({i['specialty']})")
    print(f"Photos held for the GP's decision (!blur or !discard): {len(info['photos_held_for_gp'])}")
    for i in info["photos_held_for_gp"]:
        print(f"  {i['referral']}  {i['image']}  preview {i['preview']}  destroyed at {i['destroyed_at']} if undecided")
    print(f"Escalated to the specialty lead, no opinion yet: {len(info['escalated_without_opinion'])}")
    for e in info["escalated_without_opinion"]:
        print(f"  {e['referral']}  {e['state']}  ({e['specialty']})  escalated {e['escalated_at']}")
    print(f"Next expiry or removal due: {info['next_due']}")
    print(f"Overdue: {len(info['overdue'])}")
    for o in info["overdue"]:
        print(f"  {o['referral']}  {o['state']}  due {o['due']} ({o['late_seconds']} s late)")
    print(f"Outbox actions pending: {info['outbox_pending']}")
    if not info["filing_configured"]:
        print("Filing: NOT CONFIGURED - records are not filed; vault copies are destroyed at the end of "
              "their retention (add [[filing.sink]], docs/filing.md)")
    else:
        print(f"Filing: {info['filing_pending']} referral(s) waiting to be filed, "
              f"{len(info['filing_failed'])} FAILING")
        for f in info["filing_failed"]:
            done = f", already in {', '.join(f['sinks_done'])}" if f["sinks_done"] else ""
            print(f"  {f['referral']}  {f['attempts']} failed attempt(s){done}; next try {f['next_try']}")
    if info["media_on_server_not_yet_deleted"] is not None:
        print(f"Media the bot still has to delete from the homeserver: "
              f"{info['media_on_server_not_yet_deleted']}")
    print(f"Actions the bot gave up on (dead letters): {info['dead_letters_total']}"
          + (" (newest first)" if info["dead_letters"] else ""))
    for d in info["dead_letters"]:
        print(f"  {d['at']}  {d['action']}  {d['referral'] or '-'}  after {d['attempts']} attempt(s): "
              f"{d['reason']}")
    print(f"Referrals set aside (their row cannot be read; timers stopped): "
          f"{len(info['referrals_set_aside'])}")
    for a in info["referrals_set_aside"]:
        print(f"  {a['referral']}  since {a['at']}: {a['reason']}")
    if info["referrals_unreadable"]:
        print(f"Referral rows that cannot be read: {', '.join(info['referrals_unreadable'])}")
    return 0
