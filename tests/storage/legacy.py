"""What the program wrote before schema version 6 (at version 3), for migration tests: the plain SHA-256
audit link and the version-3 consent upsert (no ``version`` column yet). A whole database
written by that program is ``data/v3-store.sqlite3`` (see ``data/make_v3_store.py``)."""
from __future__ import annotations

from storage import audit
from storage import queries as Q
from storage.db import Tx, to_text

CONSENT_UPSERT_V3 = (
    "INSERT INTO consents (consent_id, practice, recorded_at, withdrawn_at, doc) VALUES (?, ?, ?, ?, ?)"
)


async def audit_append(tx: Tx, *, at, actor, action, referral_id=None, consent_id=None, details=None) -> str:
    """One entry of the old, unkeyed chain; returns its hash."""
    head = await tx.fetchone(Q.AUDIT_HEAD)
    seq, prev = (1, audit.GENESIS_HASH) if head is None else (int(head["seq"]) + 1, head["hash"])
    clean = audit.check_details(details)
    body = {"seq": seq, "at": to_text(at), "actor": actor, "action": action, "referral_id": referral_id,
            "consent_id": consent_id, "details": clean}
    digest = audit.legacy_entry_hash(prev, body)
    await tx.execute(Q.AUDIT_APPEND, (seq, to_text(at), actor, action, referral_id, consent_id,
                                      audit.canonical_json(clean).decode(), prev, digest))
    return digest
