"""What the workflow needs from storage (Protocols only; no SQL here).

Implementations: ``storage/memory.py`` (in-memory, the reference semantics and
fast tests) and the SQLite store (aiosqlite). ``handlers/`` imports only this
module from ``storage``.

Usage by the workflow (one transaction per handled event)::

    async with store.transaction() as tx:
        if not await tx.mark_processed(event.event_id, event.at):
            return []                       # already handled
        consent = await tx.get_consent("C-…")
        ...
        await tx.save_referral(referral)
        await tx.append_audit(AuditEntry(...))
        await tx.vault_put(image_id, clean_bytes, "image/jpeg")
        await tx.enqueue(actions)
    # leaving the block normally commits everything; an exception rolls ALL of it back
    # (processed mark, saves, audit, vault puts/shreds, outbox rows).

Usage by a transport (outside any handler transaction)::

    for entry in await store.pending_actions():
        ... execute entry.action (PostImage: data = await store.vault_get(image_id)) ...
        await workflow.handle(<feedback event>)       # if the action has feedback
        await store.complete_action(entry.outbox_id)

Serialisation: ``ConsentRecord.to_dict/from_dict``, ``Referral.to_dict/from_dict``,
``Action.to_dict`` / ``handlers.actions.action_from_dict``, ``AuditEntry.to_dict``
give plain JSON; stores may keep those as blobs plus indexed columns.

Semantics every implementation must keep (tests in tests/handlers/ run against
the memory store; storage tests should run the same contract against SQLite):

* ``mark_processed`` is atomic with the rest of the transaction: if the
  transaction rolls back, the event is not marked.
* Objects returned by ``get_*`` are immutable snapshots; changes are made only by
  ``save_*``. ``save_*`` is an upsert keyed by the id.
* ``enqueue`` keeps order: ``pending_actions`` returns actions in enqueue order
  (outbox ids increase). ``complete_action`` is idempotent.
* Vault: ``vault_put`` encrypts (AES-256-GCM, per-item data key) and
  ``vault_shred`` destroys the data key so the item can never be decrypted again;
  ``vault_get`` returns None for a shredded or unknown id. Shredding an unknown or
  already-shredded id returns False, never raises.
* Outbox: once ``complete_action`` ran, nothing of the action's content is kept (the
  SQL stores seal payloads under the records key and drop them when done).
* Audit: append-only. The store adds the HMAC chain; the entry has no patient data.
* Order: every list of referrals is in the order they were first saved (a sequence the
  store assigns), never by the wall-clock ``opened_at``, which can step back.
* A record that cannot be read raises ``RecordUnreadable`` (a ``StoreError``); any
  other ``StoreError`` means the store itself failed (disk full, lock timeout): the
  transport retries the event later instead of dropping it.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import AsyncContextManager, Protocol, Sequence, runtime_checkable

from handlers.actions import Action
from handlers.model import AuditEntry, ConsentRecord, Referral, UnassignedPhoto

__all__ = ["DeadLetter", "OutboxEntry", "RecordUnreadable", "SetAside", "Transaction", "Store",
           "StoreError"]


class StoreError(Exception):
    """Raised by a store for a failure the workflow cannot fix (disk full, corrupt row...)."""


class RecordUnreadable(StoreError):
    """One stored record cannot be read (altered, truncated, sealed under another key).
    Unlike other store errors this is about that row only, not the database: the
    workflow sets the record aside and carries on with the others."""

    def __init__(self, kind: str, ident: str, why: str = "wrong key, or the row was altered"):
        super().__init__(f"cannot read {kind} {ident}: {why}")
        self.kind = kind
        self.ident = ident


@dataclass(frozen=True)
class OutboxEntry:
    """A pending action. ``outbox_id`` increases with enqueue order."""

    outbox_id: int
    action: Action
    enqueued_at: datetime | None = None


@dataclass(frozen=True)
class DeadLetter:
    """An outbox action the transport gave up on (a permanent failure, or too many
    retries). ``reason`` is one plain sentence without patient data."""

    outbox_id: int
    at: datetime
    kind: str
    referral_id: str | None
    reason: str
    attempts: int


@dataclass(frozen=True)
class SetAside:
    """A referral the timers skip because its row cannot be read (see RecordUnreadable)."""

    referral_id: str
    at: datetime
    reason: str


@runtime_checkable
class Transaction(Protocol):
    """One atomic unit of work (see module docstring)."""

    async def mark_processed(self, event_id: str, at: datetime) -> bool:
        """Record *event_id* as handled. True if it was new, False if already handled."""
        ...

    # consents ---------------------------------------------------------------
    async def get_consent(self, consent_id: str) -> ConsentRecord | None:
        """The consent with this id (ids compare case-sensitively; the workflow
        upper-cases user input), or None."""
        ...

    async def save_consent(self, consent: ConsentRecord) -> None:
        """Insert or replace the consent with ``consent.consent_id``."""
        ...

    # referrals --------------------------------------------------------------
    async def get_referral(self, referral_id: str) -> Referral | None:
        ...

    async def save_referral(self, referral: Referral) -> None:
        """Insert or replace the referral with ``referral.referral_id``; re-index
        ``consent_id``, ``referrer``, ``thread_root_event_id`` and ``next_due_at()``."""
        ...

    async def referrals_by_consent(self, consent_id: str) -> list[Referral]:
        """All referrals (any state) opened under this consent, oldest first."""
        ...

    async def referrals_by_referrer(self, user_id: str) -> list[Referral]:
        """All referrals (any state) opened by this GP, oldest first."""
        ...

    async def open_referrals_by_referrer(self, user_id: str) -> list[Referral]:
        """This GP's referrals that are still open (``Referral.is_open``), oldest first.
        Indexed, so intake does not read the GP's whole history."""
        ...

    async def referral_by_thread(self, thread_root_event_id: str) -> Referral | None:
        """The referral whose ``thread_root_event_id`` is this event id, or None."""
        ...

    async def due_referrals(self, at: datetime) -> list[Referral]:
        """Referrals with ``next_due_at() is not None and next_due_at() <= at``,
        earliest first."""
        ...

    # photos waiting for the GP to say which referral they are for ------------
    async def save_unassigned_photo(self, photo: UnassignedPhoto) -> None:
        """Insert or replace the photo with ``photo.photo_id`` (its bytes are in the
        vault under the same id)."""
        ...

    async def unassigned_photos(self, user_id: str) -> list[UnassignedPhoto]:
        """This GP's unassigned photos, oldest first."""
        ...

    async def delete_unassigned_photo(self, photo_id: str) -> None:
        """Forget the photo (it was assigned or destroyed); unknown ids are ignored."""
        ...

    async def due_unassigned_photos(self, at: datetime) -> list[UnassignedPhoto]:
        """Unassigned photos with ``destroy_at <= at``, earliest first."""
        ...

    async def due_referral_ids(self, at: datetime) -> list[str]:
        """The ids of the referrals ``due_referrals(at)`` would return, without reading
        (decrypting) them, so one unreadable row cannot stop the others; referrals set
        aside are left out."""
        ...

    async def set_aside_referral(self, referral_id: str, reason: str, at: datetime) -> None:
        """Keep the timers away from this referral (its row cannot be read) until an
        operator repairs it. ``reason``: a plain phrase, no patient data."""
        ...

    # vault -----------------------------------------------------------------
    async def vault_put(self, image_id: str, data: bytes, media_type: str) -> None:
        """Encrypt and keep *data* under *image_id* (a new, unused id)."""
        ...

    async def vault_get(self, image_id: str) -> bytes | None:
        """Decrypted bytes, or None if unknown or shredded."""
        ...

    async def vault_shred(self, image_id: str) -> bool:
        """Destroy the data key of *image_id*. True if something was destroyed."""
        ...

    # patient references -------------------------------------------------------
    # The reference itself (e.g. an NHS number, for filing) is a vault item,
    # ``handlers.patientref.patient_ref_vault_id(consent_id)``; these say until when it
    # is kept. Stores without them cannot file records (docs/filing.md).
    async def patient_ref_keep(self, consent_id: str, until: datetime) -> None:
        """Keep the consent's patient reference at least until *until* (never shortens;
        no effect once shredded)."""
        ...

    async def patient_ref_info(self, consent_id: str) -> tuple[datetime, datetime | None] | None:
        """``(keep_until, shredded_at)``, or None for a consent recorded before references were kept."""
        ...

    async def patient_ref_shredded(self, consent_id: str, at: datetime, reason: str) -> None:
        """Record that the reference was shredded (the caller shreds the vault item)."""
        ...

    async def due_patient_refs(self, at: datetime) -> list[str]:
        """Consent ids whose reference is live and whose keep-until is at or before *at*."""
        ...

    # audit & outbox --------------------------------------------------------
    async def append_audit(self, entry: AuditEntry) -> None:
        """Append one audit entry (the store chains it)."""
        ...

    async def enqueue(self, actions: Sequence[Action]) -> list[int]:
        """Append actions to the outbox in order; returns their outbox ids."""
        ...


@runtime_checkable
class Store(Protocol):
    """The persistent store the workflow and transports share."""

    def transaction(self) -> AsyncContextManager[Transaction]:
        """``async with store.transaction() as tx:`` — commit on normal exit, roll back
        on exception. Transactions are serialised (one at a time)."""
        ...

    async def pending_actions(self, limit: int = 100) -> list[OutboxEntry]:
        """Not-yet-completed actions, in enqueue order."""
        ...

    async def complete_action(self, outbox_id: int) -> None:
        """Mark an outbox entry done (idempotent)."""
        ...

    async def vault_get(self, image_id: str) -> bytes | None:
        """Read a vault item outside a transaction (for ``PostImage``); None if shredded."""
        ...

    async def housekeeping(self) -> None:
        """Store upkeep the workflow runs after every ``Tick`` (outside any transaction):
        e.g. retry a WAL truncation a reader blocked after a shred. Never raises."""
        ...

    async def dead_letter(self, outbox_id: int, *, kind: str, referral_id: str | None,
                          reason: str, attempts: int, at: datetime) -> None:
        """Set an action aside for good: record it in the dead-letter list and complete
        it (it leaves ``pending_actions``), atomically. Idempotent."""
        ...

    async def dead_letters(self, limit: int = 50) -> list[DeadLetter]:
        """The dead-letter list, newest first."""
        ...

    async def dead_letter_count(self) -> int:
        ...

    async def set_aside_referrals(self) -> list[SetAside]:
        """Referrals the timers skip because they cannot be read, oldest first."""
        ...
