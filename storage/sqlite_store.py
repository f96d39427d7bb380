"""The SQLite implementation of :mod:`storage.interfaces` (``Store`` / ``Transaction``).

Every handled event is one ``BEGIN IMMEDIATE ... COMMIT``: the processed-event
mark, consent/referral saves, audit entries, vault puts/shreds and outbox rows
commit together or not at all (``ROLLBACK`` on any exception). Consent and
referral rows are stored as AES-256-GCM sealed JSON documents plus the clear
columns the queries need (ids, state, times: never patient data).

Usage::

    store = await SQLiteStore.open("bot.sqlite3", load_keys("bot.key"))
    async with store.transaction() as tx:
        if await tx.mark_processed(event.event_id, event.at):
            ...
    await store.close()
"""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from handlers.actions import Action, action_from_dict
from handlers.model import AuditEntry, ConsentRecord, Referral, UnassignedPhoto
from storage import audit as audit_trail
from storage import queries as Q
from storage.db import Database, StorageError, Tx, from_text, to_text, utc_now
from storage.interfaces import OutboxEntry, StoreError
from storage.keys import Keys
from storage.vault import ImageNotFound, ImageShredded, Vault, VaultEntry, VaultImage

__all__ = ["SQLiteStore", "SQLiteTransaction"]

_NONCE = 12


class _Records:
    """Seal / open the JSON documents of consents and referrals."""

    def __init__(self, keys: Keys):
        self._aead = AESGCM(keys.records_key)

    @staticmethod
    def _aad(kind: str, ident: str) -> bytes:
        return json.dumps(["referral-bot record v1", kind, ident], separators=(",", ":")).encode("utf-8")

    def seal(self, kind: str, ident: str, doc: dict[str, Any]) -> bytes:
        nonce = os.urandom(_NONCE)
        plain = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return nonce + self._aead.encrypt(nonce, plain, self._aad(kind, ident))

    def open(self, kind: str, ident: str, blob: bytes) -> dict[str, Any]:
        blob = bytes(blob)
        try:
            plain = self._aead.decrypt(blob[:_NONCE], blob[_NONCE:], self._aad(kind, ident))
        except (InvalidTag, ValueError):
            raise StoreError(
                f"cannot read {kind} {ident}: wrong key for this database, or the row was altered"
            ) from None
        return json.loads(plain)


class SQLiteTransaction:
    """One handled event's worth of writes (see :class:`storage.interfaces.Transaction`)."""

    def __init__(self, store: "SQLiteStore", tx: Tx):
        self._store = store
        self._tx = tx
        self._at: datetime | None = None
        self.shredded = False

    def _now(self) -> datetime:
        # the event's time when the workflow gave one (mark_processed), else the clock
        return self._at or utc_now()

    # -- processed events ---------------------------------------------------------------
    async def mark_processed(self, event_id: str, at: datetime) -> bool:
        self._at = at
        return await self._tx.execute(Q.MARK_PROCESSED, (event_id, to_text(at))) == 1

    # -- consents -----------------------------------------------------------------------
    async def get_consent(self, consent_id: str) -> ConsentRecord | None:
        row = await self._tx.fetchone(Q.CONSENT_GET, (consent_id,))
        if row is None:
            return None
        return ConsentRecord.from_dict(self._store._records.open("consent", row["consent_id"], row["doc"]))

    async def save_consent(self, consent: ConsentRecord) -> None:
        doc = self._store._records.seal("consent", consent.consent_id, consent.to_dict())
        await self._tx.execute(
            Q.CONSENT_UPSERT,
            (
                consent.consent_id,
                consent.practice,
                to_text(consent.recorded_at),
                None if consent.withdrawn_at is None else to_text(consent.withdrawn_at),
                doc,
            ),
        )

    # -- referrals -------------------------------------------------------------------------
    def _referral(self, row: sqlite3.Row) -> Referral:
        return Referral.from_dict(self._store._records.open("referral", row["referral_id"], row["doc"]))

    async def get_referral(self, referral_id: str) -> Referral | None:
        row = await self._tx.fetchone(Q.REFERRAL_GET, (referral_id,))
        return None if row is None else self._referral(row)

    async def save_referral(self, referral: Referral) -> None:
        due = referral.next_due_at()
        doc = self._store._records.seal("referral", referral.referral_id, referral.to_dict())
        await self._tx.execute(
            Q.REFERRAL_UPSERT,
            (
                referral.referral_id,
                referral.consent_id,
                referral.referrer,
                referral.specialty,
                referral.state.value,
                to_text(referral.opened_at),
                referral.thread_root_event_id,
                None if due is None else to_text(due),
                doc,
            ),
        )

    async def referrals_by_consent(self, consent_id: str) -> list[Referral]:
        return [self._referral(r) for r in await self._tx.fetchall(Q.REFERRALS_BY_CONSENT, (consent_id,))]

    async def referrals_by_referrer(self, user_id: str) -> list[Referral]:
        return [self._referral(r) for r in await self._tx.fetchall(Q.REFERRALS_BY_REFERRER, (user_id,))]

    async def open_referrals_by_referrer(self, user_id: str) -> list[Referral]:
        return [self._referral(r) for r in await self._tx.fetchall(Q.OPEN_REFERRALS_BY_REFERRER, (user_id,))]

    async def referral_by_thread(self, thread_root_event_id: str) -> Referral | None:
        row = await self._tx.fetchone(Q.REFERRAL_BY_THREAD, (thread_root_event_id,))
        return None if row is None else self._referral(row)

    async def due_referrals(self, at: datetime) -> list[Referral]:
        return [self._referral(r) for r in await self._tx.fetchall(Q.REFERRALS_DUE, (to_text(at),))]

    async def all_referrals(self) -> list[Referral]:
        """Every referral, oldest first (for status and export tools; not in the Protocol)."""
        return [self._referral(r) for r in await self._tx.fetchall(Q.REFERRALS_ALL)]

    # -- photos waiting for the GP to name their referral -----------------------------------
    def _unassigned(self, row: sqlite3.Row) -> UnassignedPhoto:
        return UnassignedPhoto.from_dict(self._store._records.open("unassigned_photo", row["photo_id"], row["doc"]))

    async def save_unassigned_photo(self, photo: UnassignedPhoto) -> None:
        doc = self._store._records.seal("unassigned_photo", photo.photo_id, photo.to_dict())
        await self._tx.execute(
            Q.UNASSIGNED_UPSERT,
            (photo.photo_id, photo.referrer, to_text(photo.received_at), to_text(photo.destroy_at), doc),
        )

    async def unassigned_photos(self, user_id: str) -> list[UnassignedPhoto]:
        return [self._unassigned(r) for r in await self._tx.fetchall(Q.UNASSIGNED_BY_REFERRER, (user_id,))]

    async def delete_unassigned_photo(self, photo_id: str) -> None:
        await self._tx.execute(Q.UNASSIGNED_DELETE, (photo_id,))

    async def due_unassigned_photos(self, at: datetime) -> list[UnassignedPhoto]:
        return [self._unassigned(r) for r in await self._tx.fetchall(Q.UNASSIGNED_DUE, (to_text(at),))]

    # -- vault -------------------------------------------------------------------------------
    async def vault_put(self, image_id: str, data: bytes, media_type: str) -> None:
        if await self._store._vault.entry(self._tx, image_id) is not None:
            raise ValueError(f"vault id {image_id} already used")
        await self._store._vault.put(self._tx, image_id, data, media_type, self._now())

    async def vault_get(self, image_id: str) -> bytes | None:
        item = await self.vault_item(image_id)
        return None if item is None else item.data

    async def vault_item(self, image_id: str) -> VaultImage | None:
        """Bytes and media type, or None if unknown or shredded (not in the Protocol)."""
        try:
            return await self._store._vault.get(self._tx, image_id)
        except (ImageNotFound, ImageShredded):
            return None

    async def vault_entry(self, image_id: str) -> VaultEntry | None:
        return await self._store._vault.entry(self._tx, image_id)

    async def vault_shred(self, image_id: str, reason: str = "shredded by the workflow") -> bool:
        done = await self._store._vault.shred(self._tx, image_id, self._now(), reason)
        self.shredded = self.shredded or done
        return done

    # -- patient references (the reference is a vault item; this is its keep-until) ----------
    async def patient_ref_keep(self, consent_id: str, until: datetime) -> None:
        await self._tx.execute(Q.PATIENT_REF_KEEP, (consent_id, to_text(until)))

    async def patient_ref_info(self, consent_id: str) -> tuple[datetime, datetime | None] | None:
        row = await self._tx.fetchone(Q.PATIENT_REF_GET, (consent_id,))
        return None if row is None else (from_text(row["keep_until"]), from_text(row["shredded_at"]))

    async def patient_ref_shredded(self, consent_id: str, at: datetime, reason: str) -> None:
        await self._tx.execute(Q.PATIENT_REF_SHREDDED, (to_text(at), reason, consent_id))

    async def due_patient_refs(self, at: datetime) -> list[str]:
        return [r[0] for r in await self._tx.fetchall(Q.PATIENT_REFS_DUE, (to_text(at),))]

    async def all_consents(self) -> list[ConsentRecord]:
        """Every consent (for `audit show --patient`; not in the Protocol)."""
        rows = await self._tx.fetchall("SELECT consent_id, doc FROM consents ORDER BY recorded_at, consent_id")
        return [ConsentRecord.from_dict(self._store._records.open("consent", r["consent_id"], r["doc"])) for r in rows]

    # -- audit & outbox ---------------------------------------------------------------------
    async def append_audit(self, entry: AuditEntry) -> None:
        await audit_trail.append(
            self._tx,
            at=entry.at,
            actor=entry.actor,
            action=entry.action,
            referral_id=entry.referral_id,
            consent_id=entry.consent_id,
            details=entry.details,
        )

    async def enqueue(self, actions: Sequence[Action]) -> list[int]:
        ids: list[int] = []
        if not actions:
            return ids
        next_id = int(await self._tx.scalar(Q.NEXT_OUTBOX_ID))
        created = to_text(self._now())
        for action in actions:
            payload = action.to_dict()
            await self._tx.execute(
                Q.ENQUEUE_ACTION,
                (next_id, created, payload["type"], json.dumps(payload, sort_keys=True, separators=(",", ":"))),
            )
            ids.append(next_id)
            next_id += 1
        return ids


class SQLiteStore:
    """``storage.interfaces.Store`` on one SQLite file (aiosqlite)."""

    def __init__(self, db: Database, keys: Keys):
        self.db = db
        self.keys = keys
        self._vault = Vault(keys)
        self._records = _Records(keys)

    @classmethod
    async def open(cls, path: str | os.PathLike[str], keys: Keys, *, create: bool = True) -> "SQLiteStore":
        """Open (and migrate) the database; refuse a key that isn't this database's key."""
        db = await Database.open(Path(path), create=create)
        store = cls(db, keys)
        try:
            # read first: a database that already knows its key (always, for a second
            # process such as `status` next to the running bot) takes no write lock
            async with db.read() as tx:
                known = await store._vault.check_key(tx, record=False)
            if not known:
                async with db.transaction() as tx:
                    await store._vault.check_key(tx)
        except BaseException:
            await db.close()
            raise
        return store

    async def close(self) -> None:
        await self.db.close()

    async def __aenter__(self) -> "SQLiteStore":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[SQLiteTransaction]:
        shredded = False
        try:
            async with self.db.transaction() as tx:
                work = SQLiteTransaction(self, tx)
                yield work
                shredded = work.shredded
        except (StorageError, sqlite3.Error) as exc:
            if isinstance(exc, StoreError):
                raise
            raise StoreError(str(exc)) from exc
        if shredded:
            # push the zeroed pages into the main file and empty the WAL, so the old
            # page images holding the wrapped key don't linger in the -wal file
            await self.db.checkpoint()

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[SQLiteTransaction]:
        """A read-only view with the same getters (rolled back at the end)."""
        async with self.db.read() as tx:
            yield SQLiteTransaction(self, tx)

    async def pending_actions(self, limit: int = 100) -> list[OutboxEntry]:
        async with self.db.read() as tx:
            rows = await tx.fetchall(Q.PENDING_ACTIONS_LIMIT, (int(limit),))
        return [
            OutboxEntry(
                outbox_id=int(r["id"]),
                action=action_from_dict(json.loads(r["payload"])),
                enqueued_at=from_text(r["created_at"]),
            )
            for r in rows
        ]

    async def complete_action(self, outbox_id: int) -> None:
        async with self.db.transaction() as tx:
            await tx.execute(Q.COMPLETE_ACTION, (to_text(utc_now()), int(outbox_id)))

    async def vault_get(self, image_id: str) -> bytes | None:
        async with self.read() as tx:
            return await tx.vault_get(image_id)

    async def verify_audit(self) -> audit_trail.VerifyResult:
        async with self.db.read() as tx:
            return await audit_trail.verify(tx)

    async def audit_entries(self, referral_id: str | None = None) -> list[audit_trail.AuditEntry]:
        async with self.db.read() as tx:
            return await audit_trail.entries(tx, referral_id)
