"""In-memory implementation of ``storage.interfaces.Store`` (the reference semantics).

Real logic, no persistence: a transaction works on a copy of the state and
swaps it in on commit, so a rollback (exception inside ``async with``) leaves
nothing behind — including processed marks, vault puts/shreds and outbox rows.
The vault keeps bytes in memory; "shredding" drops them (the SQLite store does
real envelope encryption). Used by tests/handlers/ and as a fast default for demos.
"""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import AsyncIterator, Sequence

from handlers.actions import Action
from handlers.model import AuditEntry, ConsentRecord, Referral, UnassignedPhoto
from storage.audit import check_details
from storage.interfaces import DeadLetter, OutboxEntry, SetAside

__all__ = ["MemoryStore"]


@dataclass
class _State:
    processed: dict[str, datetime] = field(default_factory=dict)
    consents: dict[str, ConsentRecord] = field(default_factory=dict)
    referrals: dict[str, Referral] = field(default_factory=dict)
    unassigned: dict[str, UnassignedPhoto] = field(default_factory=dict)
    vault: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    shredded: set[str] = field(default_factory=set)
    audit: list[AuditEntry] = field(default_factory=list)
    outbox: list[OutboxEntry] = field(default_factory=list)
    next_outbox_id: int = 1
    seq: dict[str, int] = field(default_factory=dict)  # referral id -> order of first save
    set_aside: dict[str, SetAside] = field(default_factory=dict)
    patient_refs: dict[str, tuple[datetime, datetime | None]] = field(default_factory=dict)

    def clone(self) -> "_State":
        # model objects are frozen: shallow copies of the containers are enough
        return _State(
            processed=dict(self.processed),
            consents=dict(self.consents),
            referrals=dict(self.referrals),
            unassigned=dict(self.unassigned),
            vault=dict(self.vault),
            shredded=set(self.shredded),
            audit=list(self.audit),
            outbox=list(self.outbox),
            next_outbox_id=self.next_outbox_id,
            seq=dict(self.seq),
            set_aside=dict(self.set_aside),
            patient_refs=dict(self.patient_refs),
        )


class _MemoryTransaction:
    def __init__(self, state: _State):
        self._s = state

    async def mark_processed(self, event_id: str, at: datetime) -> bool:
        if event_id in self._s.processed:
            return False
        self._s.processed[event_id] = at
        return True

    async def get_consent(self, consent_id: str) -> ConsentRecord | None:
        return self._s.consents.get(consent_id)

    async def save_consent(self, consent: ConsentRecord) -> None:
        self._s.consents[consent.consent_id] = consent

    async def get_referral(self, referral_id: str) -> Referral | None:
        return self._s.referrals.get(referral_id)

    async def save_referral(self, referral: Referral) -> None:
        self._s.referrals[referral.referral_id] = referral
        self._s.seq.setdefault(referral.referral_id, len(self._s.seq) + 1)

    def _sorted(self, items: list[Referral]) -> list[Referral]:
        # the order of opening, never the wall clock (which can step back)
        return sorted(items, key=lambda r: self._s.seq[r.referral_id])

    async def referrals_by_consent(self, consent_id: str) -> list[Referral]:
        return self._sorted([r for r in self._s.referrals.values() if r.consent_id == consent_id])

    async def referrals_by_referrer(self, user_id: str) -> list[Referral]:
        return self._sorted([r for r in self._s.referrals.values() if r.referrer == user_id])

    async def open_referrals_by_referrer(self, user_id: str) -> list[Referral]:
        return [r for r in await self.referrals_by_referrer(user_id) if r.is_open]

    async def referral_by_thread(self, thread_root_event_id: str) -> Referral | None:
        for r in self._s.referrals.values():
            if r.thread_root_event_id == thread_root_event_id:
                return r
        return None

    async def due_referrals(self, at: datetime) -> list[Referral]:
        due = []
        for r in self._s.referrals.values():
            nd = r.next_due_at()
            if nd is not None and nd <= at:
                due.append((nd, r.referral_id, r))
        due.sort(key=lambda t: (t[0], self._s.seq[t[1]]))
        return [r for _, _, r in due]

    async def save_unassigned_photo(self, photo: UnassignedPhoto) -> None:
        self._s.unassigned[photo.photo_id] = photo

    async def unassigned_photos(self, user_id: str) -> list[UnassignedPhoto]:
        mine = [p for p in self._s.unassigned.values() if p.referrer == user_id]
        return sorted(mine, key=lambda p: (p.received_at, p.photo_id))

    async def delete_unassigned_photo(self, photo_id: str) -> None:
        self._s.unassigned.pop(photo_id, None)

    async def due_unassigned_photos(self, at: datetime) -> list[UnassignedPhoto]:
        due = [p for p in self._s.unassigned.values() if p.destroy_at <= at]
        return sorted(due, key=lambda p: (p.destroy_at, p.photo_id))

    async def due_referral_ids(self, at: datetime) -> list[str]:
        return [r.referral_id for r in await self.due_referrals(at) if r.referral_id not in self._s.set_aside]

    async def set_aside_referral(self, referral_id: str, reason: str, at: datetime) -> None:
        self._s.set_aside.setdefault(referral_id, SetAside(referral_id, at, reason))

    async def vault_put(self, image_id: str, data: bytes, media_type: str) -> None:
        if image_id in self._s.vault or image_id in self._s.shredded:
            raise ValueError(f"vault id {image_id} already used")
        self._s.vault[image_id] = (bytes(data), media_type)

    async def vault_get(self, image_id: str) -> bytes | None:
        item = self._s.vault.get(image_id)
        return item[0] if item else None

    async def vault_shred(self, image_id: str) -> bool:
        if image_id in self._s.vault:
            del self._s.vault[image_id]
            self._s.shredded.add(image_id)
            return True
        return False

    async def patient_ref_keep(self, consent_id: str, until: datetime) -> None:
        old = self._s.patient_refs.get(consent_id)
        if old is None:
            self._s.patient_refs[consent_id] = (until, None)
        elif old[1] is None and until > old[0]:
            self._s.patient_refs[consent_id] = (until, None)

    async def patient_ref_info(self, consent_id: str) -> tuple[datetime, datetime | None] | None:
        return self._s.patient_refs.get(consent_id)

    async def patient_ref_shredded(self, consent_id: str, at: datetime, reason: str) -> None:
        old = self._s.patient_refs.get(consent_id)
        if old is not None and old[1] is None:
            self._s.patient_refs[consent_id] = (old[0], at)

    async def due_patient_refs(self, at: datetime) -> list[str]:
        due = sorted((keep, cid) for cid, (keep, gone) in self._s.patient_refs.items() if gone is None and keep <= at)
        return [cid for _, cid in due]

    async def append_audit(self, entry: AuditEntry) -> None:
        check_details(entry.details)  # the same whitelist as the real audit chain
        self._s.audit.append(entry)

    async def enqueue(self, actions: Sequence[Action]) -> list[int]:
        ids = []
        for action in actions:
            oid = self._s.next_outbox_id
            self._s.next_outbox_id += 1
            # round-trip through the JSON form, as a real outbox would
            stored = Action.from_dict(action.to_dict())
            self._s.outbox.append(OutboxEntry(outbox_id=oid, action=stored))
            ids.append(oid)
        return ids


class MemoryStore:
    """``Store`` kept in memory. Transactions are serialised with an asyncio lock."""

    def __init__(self) -> None:
        self._state = _State()
        self._lock = asyncio.Lock()
        # completion is store-level (not rolled back with a handler transaction)
        self._completed: set[int] = set()
        self.housekeeping_runs = 0
        self._dead: dict[int, DeadLetter] = {}

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_MemoryTransaction]:
        async with self._lock:
            work = self._state.clone()
            yield _MemoryTransaction(work)
            self._state = work  # only reached when the block did not raise

    @asynccontextmanager
    async def read(self) -> AsyncIterator[_MemoryTransaction]:
        """A read-only snapshot with the transaction's getters (nothing is kept)."""
        yield _MemoryTransaction(self._state.clone())

    async def audit_entries(self, referral_id: str | None = None) -> list[AuditEntry]:
        return [e for e in self._state.audit if referral_id is None or e.referral_id == referral_id]

    async def pending_actions(self, limit: int = 100) -> list[OutboxEntry]:
        return [e for e in self._state.outbox if e.outbox_id not in self._completed][:limit]

    async def complete_action(self, outbox_id: int) -> None:
        self._completed.add(outbox_id)

    async def vault_get(self, image_id: str) -> bytes | None:
        item = self._state.vault.get(image_id)
        return item[0] if item else None

    async def housekeeping(self) -> None:
        """Nothing to tidy in memory (the SQLite store truncates its WAL here)."""
        self.housekeeping_runs += 1

    async def dead_letter(self, outbox_id: int, *, kind: str, referral_id: str | None,
                          reason: str, attempts: int, at: datetime) -> None:
        self._dead.setdefault(outbox_id, DeadLetter(outbox_id, at, kind, referral_id, reason, attempts))
        self._completed.add(outbox_id)

    async def dead_letters(self, limit: int = 50) -> list[DeadLetter]:
        return sorted(self._dead.values(), key=lambda d: -d.outbox_id)[:limit]

    async def dead_letter_count(self) -> int:
        return len(self._dead)

    async def set_aside_referrals(self) -> list[SetAside]:
        return sorted(self._state.set_aside.values(), key=lambda s: (s.at, s.referral_id))

    # --- inspection helpers for tests and the demo (not part of the Protocol) ---
    @property
    def audit(self) -> list[AuditEntry]:
        return list(self._state.audit)

    @property
    def all_actions(self) -> list[OutboxEntry]:
        return list(self._state.outbox)

    def consent(self, consent_id: str) -> ConsentRecord | None:
        return self._state.consents.get(consent_id)

    def referral(self, referral_id: str) -> Referral | None:
        return self._state.referrals.get(referral_id)

    def referrals(self) -> list[Referral]:
        return list(self._state.referrals.values())

    def unassigned(self) -> list[UnassignedPhoto]:
        return list(self._state.unassigned.values())

    def vault_ids(self) -> set[str]:
        return set(self._state.vault)

    def image_vault_ids(self) -> set[str]:
        """Vault ids of images (not the patient references kept for filing)."""
        from handlers.patientref import PATIENT_REF_MEDIA_TYPE

        return {k for k, (_, media_type) in self._state.vault.items() if media_type != PATIENT_REF_MEDIA_TYPE}

    def is_processed(self, event_id: str) -> bool:
        return event_id in self._state.processed
