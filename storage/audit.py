"""The append-only audit trail, chained with HMAC-SHA256 under its own key.

Each entry is ``(seq, at, actor, action, referral_id, consent_id, details)``.
Its hash is ``HMAC-SHA256(audit_key, prev_hash || canonical_json(entry))`` in
lowercase hex, where ``prev_hash`` is the previous entry's hash (64 zeros for
entry 1) and ``canonical_json`` is JSON with sorted keys, no insignificant
whitespace, UTF-8. ``audit_key`` is derived from the deployment secret under its
own label (:mod:`storage.keys`), so someone who can write to the database but
does not hold the key can neither re-hash a rewritten entry nor forge a new one:
changing, inserting or deleting any entry breaks the chain at that entry.
Entries cut off the *end* leave a valid shorter chain; the signed state
(:mod:`storage.seal`: in the database, and in the anchor file outside it) names
the head, which catches that.

Databases from before schema version 6 carry a plain SHA-256 chain. When the
store first opens such a database with the key it calls :func:`reanchor`: the
old chain is checked, then one ``audit.reanchored`` entry (``count`` = the
number of old entries) is appended whose HMAC covers the old head, so from then
on rewriting an old entry breaks the chain at the re-anchoring entry. The old
entries keep their SHA-256 hashes: the trail is never rewritten.

What may go in: who (a clinician's chat id or ``bot``), what (an action name),
when, and which referral / consent id. ``details`` takes only whitelisted keys
with short scalar values: never patient identifiers, consent free text, the
clinical question, the opinion or image bytes. Anything else is refused with a
:class:`AuditRefused` naming the key.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping

from storage import queries as Q
from storage.db import StorageError, Tx, from_text, to_text

GENESIS_HASH = "0" * 64
#: the entry that puts an old (pre-version-6) SHA-256 chain under the HMAC chain
REANCHOR_ACTION = "audit.reanchored"
BOT_ACTOR = "@referral-bot"
MAX_TEXT = 200
MAX_LIST = 50

# The only keys ``details`` may carry. Values are ids, counts, states, rule names.
ALLOWED_DETAIL_KEYS = frozenset(
    {
        "action_id",
        "bytes",
        "count",
        "consenter",
        "content_type",
        "event_id",
        "expires_at",
        "format",
        "from_state",
        "grace_seconds",
        "height",
        "identifiable",
        "image_id",
        "image_ids",
        "kind",
        "media_deleted",
        "outcome",
        "purpose",
        "purposes",
        "reason",
        "redacted",
        "retention_days",
        "role",
        "room",
        "rule",
        "shred_reason",
        "specialty",
        "state",
        "to_state",
        "transport",
        "warnings",
        "width",
        # used by handlers/lifecycle.py and the workflow
        "action_type",
        "attempt",
        "basis",
        "faces",
        "images",
        "on_behalf",
        "permanent",
        "recorded_in_notes",
        "removed",
        "retention_seconds",
        "shredded",
        # the conversation (issue 10): how a photo found its referral, what a relay did
        "routed_by",
        "extended_hours",
        "command",
        # filing and information governance (issue 13): user ids of the room's joined
        # members when an image was posted; the names of the filing sinks (config keys)
        "members",
        "sinks",
        # issue 11: how many text areas the identifiability check found (a count; never the text)
        "regions",
        # the clock as a safety net (issue 12 part 5): routine | urgent | 2ww
        "urgency",
    }
)
# Only used to give a sharper message for keys that are refused anyway.
_PHI_LOOKING = re.compile(
    r"patient|nhs|name|dob|birth|address|postcode|phone|email|text|question|opinion|note|"
    r"image(?!_ids?$)|photo|pixel|data|content(?!_type$)|body|caption|free",
    re.IGNORECASE,
)


class AuditRefused(StorageError):
    """An audit entry was refused because it could carry patient data."""


class AuditError(StorageError):
    pass


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at: datetime
    actor: str
    action: str
    referral_id: str | None
    consent_id: str | None
    details: Mapping[str, Any] = field(default_factory=dict)
    prev_hash: str = GENESIS_HASH
    hash: str = ""


@dataclass(frozen=True)
class VerifyResult:
    entries: int
    first_broken: int | None
    problem: str | None
    head_hash: str
    #: entries from before schema 6 (plain SHA-256), covered by the re-anchoring entry
    legacy_entries: int = 0

    @property
    def intact(self) -> bool:
        return self.first_broken is None


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def _body(seq: int, at_text: str, actor: str, action: str, referral_id: str | None, consent_id: str | None,
          details: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "seq": seq,
        "at": at_text,
        "actor": actor,
        "action": action,
        "referral_id": referral_id,
        "consent_id": consent_id,
        "details": dict(details),
    }


def entry_hash(key: bytes, prev_hash: str, body: Mapping[str, Any]) -> str:
    """The HMAC-SHA256 link of one entry (hex)."""
    return hmac.new(key, prev_hash.encode("ascii") + canonical_json(body), hashlib.sha256).hexdigest()


def legacy_entry_hash(prev_hash: str, body: Mapping[str, Any]) -> str:
    """The plain SHA-256 link of entries written before schema version 6."""
    return hashlib.sha256(prev_hash.encode("ascii") + canonical_json(body)).hexdigest()


def check_details(details: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate ``details`` against the whitelist; returns a plain dict copy."""
    if details is None:
        return {}
    if not isinstance(details, Mapping):
        raise AuditRefused("audit details must be a mapping")
    clean: dict[str, Any] = {}
    for key, value in details.items():
        if not isinstance(key, str) or key not in ALLOWED_DETAIL_KEYS:
            if isinstance(key, str) and _PHI_LOOKING.search(key):
                raise AuditRefused(
                    f"audit details key {key!r} looks like patient data; the audit trail never stores that"
                )
            raise AuditRefused(f"audit details key {key!r} is not on the audit whitelist")
        clean[key] = _check_value(key, value)
    return clean


def _check_value(key: str, value: Any) -> Any:
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise AuditRefused(f"audit details {key!r} must be a finite number")
        return value
    if isinstance(value, str):
        if len(value) > MAX_TEXT or "\n" in value:
            raise AuditRefused(f"audit details {key!r} must be a short single-line value (at most {MAX_TEXT} chars)")
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise AuditRefused(f"audit details {key!r} is binary; image bytes never go in the audit trail")
    if isinstance(value, (list, tuple, frozenset, set)):
        items = sorted(value) if isinstance(value, (set, frozenset)) else list(value)
        if len(items) > MAX_LIST:
            raise AuditRefused(f"audit details {key!r} has more than {MAX_LIST} items")
        out = []
        for item in items:
            if isinstance(item, (list, tuple, set, frozenset, dict)):
                raise AuditRefused(f"audit details {key!r} must be a flat list")
            out.append(_check_value(key, item))
        return out
    raise AuditRefused(f"audit details {key!r} has an unsupported type {type(value).__name__}")


def _check_field(name: str, value: str | None, required: bool) -> None:
    if value is None:
        if required:
            raise AuditRefused(f"audit {name} is required")
        return
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT or "\n" in value:
        raise AuditRefused(f"audit {name} must be a short single-line string")


async def append(
    tx: Tx,
    key: bytes,
    *,
    at: datetime,
    actor: str,
    action: str,
    referral_id: str | None = None,
    consent_id: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> AuditEntry:
    """Append one entry inside the caller's transaction (BEGIN IMMEDIATE serialises writers)."""
    _check_field("actor", actor, True)
    _check_field("action", action, True)
    _check_field("referral_id", referral_id, False)
    _check_field("consent_id", consent_id, False)
    clean = check_details(details)
    head = await tx.fetchone(Q.AUDIT_HEAD)
    seq, prev = (1, GENESIS_HASH) if head is None else (int(head["seq"]) + 1, head["hash"])
    at_text = to_text(at)
    body = _body(seq, at_text, actor, action, referral_id, consent_id, clean)
    digest = entry_hash(key, prev, body)
    await tx.execute(
        Q.AUDIT_APPEND,
        (seq, at_text, actor, action, referral_id, consent_id, canonical_json(clean).decode("utf-8"), prev, digest),
    )
    return AuditEntry(seq, from_text(at_text), actor, action, referral_id, consent_id, clean, prev, digest)


def _row_entry(row: Any) -> AuditEntry:
    return AuditEntry(
        seq=int(row["seq"]),
        at=from_text(row["at"]),
        actor=row["actor"],
        action=row["action"],
        referral_id=row["referral_id"],
        consent_id=row["consent_id"],
        details=json.loads(row["details"]),
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )


async def entries(tx: Tx, referral_id: str | None = None) -> list[AuditEntry]:
    rows = await (tx.fetchall(Q.AUDIT_ALL) if referral_id is None else tx.fetchall(Q.AUDIT_FOR_REFERRAL, (referral_id,)))
    return [_row_entry(r) for r in rows]


async def verify(tx: Tx, key: bytes, *, allow_unsigned: bool = False) -> VerifyResult:
    """Walk the whole chain; report the first entry whose link or HMAC does not hold.

    Plain SHA-256 entries are accepted only as a prefix that an ``audit.reanchored``
    entry covers (see the module docstring). A chain with no signed entry at all is
    reported as broken unless ``allow_unsigned`` (a database not yet upgraded).
    """
    prev = GENESIS_HASH
    expected_seq = 1
    count = 0
    legacy = 0
    signed = False
    for row in await tx.fetchall(Q.AUDIT_ALL):
        count += 1
        seq = row["seq"]
        if not isinstance(seq, int) or seq != expected_seq:
            if isinstance(seq, int) and seq > expected_seq:
                return VerifyResult(count, expected_seq, f"entry {expected_seq} is missing", prev, legacy)
            return VerifyResult(count, expected_seq, f"entry {expected_seq} has a wrong sequence number", prev, legacy)
        if row["prev_hash"] != prev:
            return VerifyResult(count, seq, "its link to the previous entry does not match", prev, legacy)
        try:
            details = json.loads(row["details"])
            if not isinstance(details, dict):
                raise ValueError
            body = _body(seq, row["at"], row["actor"], row["action"], row["referral_id"], row["consent_id"], details)
            keyed = hmac.compare_digest(entry_hash(key, prev, body), str(row["hash"]))
            old = not signed and not keyed and legacy_entry_hash(prev, body) == row["hash"]
        except (ValueError, TypeError, AttributeError):
            return VerifyResult(count, seq, "its stored fields cannot be read", prev, legacy)
        if keyed:
            if not signed and seq > 1 and (row["action"] != REANCHOR_ACTION or details.get("count") != seq - 1):
                return VerifyResult(count, seq, "it follows unsigned entries but is not the entry that re-anchored them",
                                    prev, legacy)
            signed = True
        elif old:
            legacy += 1
        else:
            return VerifyResult(count, seq, "its contents do not match its HMAC", prev, legacy)
        prev = row["hash"]
        expected_seq += 1
    if legacy and not signed and not allow_unsigned:
        return VerifyResult(count, 1, f"entries 1-{legacy} are not signed with this deployment's audit key "
                            "(plain SHA-256, and no re-anchoring entry covers them)", prev, legacy)
    return VerifyResult(count, None, None, prev, legacy)


async def head(tx: Tx) -> tuple[int, str]:
    """(count, head hash) of the chain as stored: (0, genesis) when empty."""
    row = await tx.fetchone(Q.AUDIT_HEAD)
    return (0, GENESIS_HASH) if row is None else (int(row["seq"]), str(row["hash"]))


async def reanchor(tx: Tx, key: bytes, at: datetime) -> int:
    """Put an old plain SHA-256 chain under the HMAC chain (once, when upgrading).

    Refuses (``AuditError``) if the old chain is already broken: a broken trail is
    never signed as if it were whole. Returns how many old entries were anchored.
    """
    result = await verify(tx, key, allow_unsigned=True)
    if not result.intact:
        raise AuditError(
            f"the audit chain is broken at entry {result.first_broken} ({result.problem}), so it was not "
            "re-anchored under the signed chain; investigate with `referral-bot audit verify` before upgrading"
        )
    if result.legacy_entries and result.legacy_entries == result.entries:
        await append(tx, key, at=at, actor=BOT_ACTOR, action=REANCHOR_ACTION, details={"count": result.legacy_entries})
    return result.legacy_entries
