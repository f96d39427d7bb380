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
import logging
import os
import sqlite3
import time
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
from storage.instance import InstanceLock
from storage.interfaces import DeadLetter, OutboxEntry, RecordUnreadable, SetAside, StoreError
from storage.keys import Keys
from storage.seal import (
    STATE_ROW,
    UPGRADE_ROW,
    AnchorFile,
    SignedState,
    StateChanges,
    StateKeeper,
    StateMismatch,
    check_anchor,
    current_versions,
    head_for_log,
    records_digest,
    write_state,
)
from storage.vault import ImageNotFound, ImageShredded, Vault, VaultEntry, VaultImage

__all__ = ["SQLiteStore", "SQLiteTransaction"]

log = logging.getLogger("referral_bot.storage")
#: the signed audit head, for the operator log (a copy of the anchor that leaves the host)
anchor_log = logging.getLogger("referral_bot.audit")

_NONCE = 12


class _Sealer:
    """Seal / open JSON documents under the records key (AES-256-GCM, random nonce).

    The associated data names what the blob is, so a blob moved to another row, another
    kind or another version fails to open:

    * a consent or referral: ``["referral-bot record v2", kind, id, version]``;
    * an outbox action: ``["referral-bot outbox v1", outbox id, action type]``;
    * a held photo (issue 10): ``["referral-bot record v1", "unassigned_photo", id]``, no
      version: its row is deleted once the photo is claimed or destroyed, and its bytes
      are shredded from the vault then, so a row put back brings no photo back;
    * (before schema 6) ``["referral-bot record v1", kind, id]``: read once, by the upgrade.
    """

    def __init__(self, keys: Keys):
        self._aead = AESGCM(keys.records_key)

    @staticmethod
    def _aad(parts: Sequence[Any]) -> bytes:
        return json.dumps(list(parts), separators=(",", ":")).encode("utf-8")

    def seal(self, aad: Sequence[Any], doc: dict[str, Any]) -> bytes:
        nonce = os.urandom(_NONCE)
        plain = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return nonce + self._aead.encrypt(nonce, plain, self._aad(aad))

    def open(self, aad: Sequence[Any], blob: bytes | None, what: tuple[str, str]) -> dict[str, Any]:
        try:
            blob = bytes(blob)  # type: ignore[arg-type]
            plain = self._aead.decrypt(blob[:_NONCE], blob[_NONCE:], self._aad(aad))
        except (InvalidTag, ValueError, TypeError):
            raise RecordUnreadable(*what, "wrong key for this database, or the row was altered") from None
        try:
            return json.loads(plain)
        except ValueError:
            raise RecordUnreadable(*what, "the document is not valid JSON") from None

    def record(self, kind: str, ident: str, version: int, doc: dict[str, Any]) -> bytes:
        return self.seal(["referral-bot record v2", kind, ident, int(version)], doc)

    def open_record(self, kind: str, ident: str, version: int, blob: bytes) -> dict[str, Any]:
        return self.open(["referral-bot record v2", kind, ident, int(version)], blob, (kind, ident))

    def open_legacy_record(self, kind: str, ident: str, blob: bytes) -> dict[str, Any]:
        return self.open(["referral-bot record v1", kind, ident], blob, (kind, ident))

    def held_photo(self, photo_id: str, doc: dict[str, Any]) -> bytes:
        return self.seal(["referral-bot record v1", "unassigned_photo", photo_id], doc)

    def open_held_photo(self, photo_id: str, blob: bytes) -> dict[str, Any]:
        return self.open(["referral-bot record v1", "unassigned_photo", photo_id], blob, ("held photo", photo_id))

    def action(self, outbox_id: int, kind: str, doc: dict[str, Any]) -> bytes:
        return self.seal(["referral-bot outbox v1", int(outbox_id), kind], doc)

    def open_action(self, outbox_id: int, kind: str, blob: bytes | None) -> dict[str, Any]:
        return self.open(["referral-bot outbox v1", int(outbox_id), kind], blob, ("outbox action", str(outbox_id)))


class SQLiteTransaction:
    """One handled event's worth of writes (see :class:`storage.interfaces.Transaction`)."""

    def __init__(self, store: "SQLiteStore", tx: Tx, changes: StateChanges | None = None):
        self._store = store
        self._tx = tx
        self._changes = changes  # None in a read-only view
        self._at: datetime | None = None
        self.shredded = False

    def _now(self) -> datetime:
        # the event's time when the workflow gave one (mark_processed), else the clock
        return self._at or utc_now()

    def _writable(self) -> StateChanges:
        if self._changes is None:
            raise StoreError("this is a read-only view of the store")
        return self._changes

    def _open(self, kind: str, row: Any) -> dict[str, Any]:
        """A record's document, refused unless its version is the one the signed state vouches for."""
        ident, version = row[0], int(row["version"])
        expected = (self._changes.expected(kind, ident) if self._changes is not None
                    else self._store._keeper.expected(kind, ident))
        if expected is None or version != expected:
            log.error("refused %s %s: version %s, the signed state says %s", kind, ident, version, expected)
            # RecordUnreadable: this row only, not the store; the timers set it aside
            # and events about it get an answer (not a retry forever, finding 3)
            raise RecordUnreadable(
                kind, ident,
                f"it is not the copy the store's signed state vouches for (version {version}, "
                f"expected {expected if expected is not None else 'none'}): the row was put back or altered outside "
                "the bot, so it is refused")
        return self._store._sealer.open_record(kind, ident, version, row["doc"])

    # -- processed events ---------------------------------------------------------------
    async def mark_processed(self, event_id: str, at: datetime) -> bool:
        self._at = at
        return await self._tx.execute(Q.MARK_PROCESSED, (event_id, to_text(at))) == 1

    # -- consents -----------------------------------------------------------------------
    async def get_consent(self, consent_id: str) -> ConsentRecord | None:
        row = await self._tx.fetchone(Q.CONSENT_GET, (consent_id,))
        if row is None:
            return None
        return ConsentRecord.from_dict(self._open("consent", row))

    async def save_consent(self, consent: ConsentRecord) -> None:
        version = self._writable().next_version("consent", consent.consent_id)
        doc = self._store._sealer.record("consent", consent.consent_id, version, consent.to_dict())
        await self._tx.execute(
            Q.CONSENT_UPSERT,
            (
                consent.consent_id,
                consent.practice,
                to_text(consent.recorded_at),
                None if consent.withdrawn_at is None else to_text(consent.withdrawn_at),
                version,
                doc,
            ),
        )

    # -- referrals -------------------------------------------------------------------------
    def _referral(self, row: Any) -> Referral:
        doc = self._open("referral", row)
        try:
            return Referral.from_dict(doc)
        except (KeyError, ValueError, TypeError):
            raise RecordUnreadable("referral", row["referral_id"], "the document does not fit the model") from None

    async def get_referral(self, referral_id: str) -> Referral | None:
        row = await self._tx.fetchone(Q.REFERRAL_GET, (referral_id,))
        return None if row is None else self._referral(row)

    async def save_referral(self, referral: Referral) -> None:
        due = referral.next_due_at()
        version = self._writable().next_version("referral", referral.referral_id)
        doc = self._store._sealer.record("referral", referral.referral_id, version, referral.to_dict())
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
                version,
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

    async def due_referral_ids(self, at: datetime) -> list[str]:
        return [r["referral_id"] for r in await self._tx.fetchall(Q.REFERRAL_IDS_DUE, (to_text(at),))]

    async def set_aside_referral(self, referral_id: str, reason: str, at: datetime) -> None:
        await self._tx.execute(Q.SET_ASIDE_REFERRAL, (referral_id, to_text(at), reason))

    async def referral_ids(self) -> list[str]:
        """Every referral id, in opening order (not in the Protocol)."""
        return [r["referral_id"] for r in await self._tx.fetchall(Q.REFERRAL_IDS_ALL)]

    async def all_referrals(self) -> list[Referral]:
        """Every referral, oldest first (for status and export tools; not in the Protocol)."""
        return [self._referral(r) for r in await self._tx.fetchall(Q.REFERRALS_ALL)]

    # -- photos waiting for the GP to name their referral -----------------------------------
    def _unassigned(self, row: sqlite3.Row) -> UnassignedPhoto:
        return UnassignedPhoto.from_dict(self._store._sealer.open_held_photo(row["photo_id"], row["doc"]))

    async def save_unassigned_photo(self, photo: UnassignedPhoto) -> None:
        doc = self._store._sealer.held_photo(photo.photo_id, photo.to_dict())
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

    async def readable_referrals(self) -> tuple[list[Referral], list[str]]:
        """Every referral that can be read, and the ids of those that cannot (for status
        and metrics, which must keep working when one row is damaged)."""
        good: list[Referral] = []
        bad: list[str] = []
        for row in await self._tx.fetchall(Q.REFERRALS_ALL):
            try:
                good.append(self._referral(row))
            except RecordUnreadable:
                bad.append(row["referral_id"])
        return good, bad

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
        rows = await self._tx.fetchall(Q.CONSENTS_ALL)
        return [ConsentRecord.from_dict(self._open("consent", r)) for r in rows]

    # -- audit & outbox ---------------------------------------------------------------------
    async def append_audit(self, entry: AuditEntry) -> None:
        changes = self._writable()
        written = await audit_trail.append(
            self._tx,
            self._store.keys.audit_key,
            at=entry.at,
            actor=entry.actor,
            action=entry.action,
            referral_id=entry.referral_id,
            consent_id=entry.consent_id,
            details=entry.details,
        )
        changes.audit_head = (written.seq, written.hash)

    async def enqueue(self, actions: Sequence[Action]) -> list[int]:
        ids: list[int] = []
        if not actions:
            return ids
        next_id = int(await self._tx.scalar(Q.NEXT_OUTBOX_ID))
        created = to_text(self._now())
        for action in actions:
            payload = action.to_dict()
            kind = payload["type"]
            sealed = self._store._sealer.action(next_id, kind, payload)
            await self._tx.execute(Q.ENQUEUE_ACTION, (next_id, created, kind, sealed))
            ids.append(next_id)
            next_id += 1
        return ids


class SQLiteStore:
    """``storage.interfaces.Store`` on one SQLite file (aiosqlite)."""

    #: how often the signed audit head goes to the operator log (when it changed)
    anchor_log_seconds: float = 3600.0

    def __init__(self, db: Database, keys: Keys, anchor: AnchorFile | None = None):
        self.db = db
        self.keys = keys
        self._vault = Vault(keys)
        self._sealer = _Sealer(keys)
        self._keeper = StateKeeper(keys.seal_key, anchor)
        self._lock: InstanceLock | None = None
        self._wal_dirty = False
        self._logged_state: SignedState | None = None
        self._logged_at = 0.0

    @property
    def anchor(self) -> AnchorFile | None:
        return self._keeper.anchor

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        keys: Keys,
        *,
        create: bool = True,
        anchor_path: str | os.PathLike[str] | None = None,
        exclusive: bool = False,
    ) -> "SQLiteStore":
        """Open (and migrate) the database; refuse a key that isn't this database's key,
        a read-only database (when ``exclusive``), and a database that does not match its
        signed state.

        ``anchor_path``: the anchor file (default ``<path>.anchor``). ``exclusive``: the
        bot itself (one process per database; `status` and `export` pass False)."""
        path = Path(path)
        lock = None
        if exclusive:
            lock = InstanceLock.acquire(Path(str(path) + ".lock"), f"the database {path}")
        try:
            db = await Database.open(path, create=create)
        except BaseException as exc:
            if lock is not None:
                lock.release()
            if isinstance(exc, StorageError) and "readonly" in str(exc).replace(" ", ""):  # a migration could not write
                raise StorageError(cls._read_only_message(f"the database {path}")) from None
            raise
        anchor = AnchorFile(anchor_path if anchor_path is not None else Path(str(path) + ".anchor"))
        store = cls(db, keys, anchor)
        store._lock = lock
        await store._start(f"the database {path}", probe_write=exclusive)
        return store

    # -- start-up ---------------------------------------------------------------------------
    def _is_read_only(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.OperationalError) and "readonly" in str(exc).replace("-", "").replace(" ", "")

    @classmethod
    def _read_only_message(cls, where: str) -> str:
        return (f"{where} is read-only, and the bot must write to it: check the file's owner and permissions, "
                "the disk's mount options and `lsattr` (immutable)")

    async def _start(self, where: str, *, probe_write: bool) -> None:
        """Key check, write check, keyed upgrade, state check: or close and raise.

        ``probe_write`` (the bot): make one real write, so a read-only database is refused
        now and not on the first GP's command. Any other process (`status`, `export`) reads
        first and takes no write lock when the database already knows its key and has no
        upgrade pending: a write lock there made `status` next to the running bot fail
        with "database is locked" while the bot checkpointed."""
        try:
            if not probe_write:
                async with self.db.read() as tx:
                    known = await self._vault.check_key(tx, record=False)
                    pending = await tx.scalar(Q.GET_META, (UPGRADE_ROW,)) is not None
            upgraded = False
            if probe_write or not known or pending:
                try:
                    async with self.db.transaction() as tx:
                        if probe_write:
                            # a real write, rolled back by the delete
                            await tx.execute(Q.PUT_META, ("write_probe", to_text(utc_now())))
                            await tx.execute(Q.DELETE_META, ("write_probe",))
                        await self._vault.check_key(tx)
                        upgraded = await self._keyed_upgrade(tx)
                except Exception as exc:
                    if self._is_read_only(exc):
                        raise StorageError(self._read_only_message(where)) from None
                    raise
            if upgraded:
                await self._after_upgrade()
            await self._check_at_start()
        except BaseException:
            await self.close()
            raise

    async def _keyed_upgrade(self, tx: Tx) -> bool:
        """Finish migration 006 with the key (once): re-anchor the audit chain, re-seal
        records with a version, seal pending outbox payloads, sign the state."""
        if await tx.scalar(Q.GET_META, (UPGRADE_ROW,)) is None:
            return False
        if await tx.scalar(Q.GET_META, (STATE_ROW,)) is not None:
            raise StateMismatch("the database asks for its one-time upgrade but is already signed: it was altered")
        at = utc_now()
        legacy = await audit_trail.reanchor(tx, self.keys.audit_key, at)
        records = 0
        for kind, select, update in (
            ("consent", Q.LEGACY_CONSENTS, Q.CONSENT_RESEAL),
            ("referral", Q.LEGACY_REFERRALS, Q.REFERRAL_RESEAL),
        ):
            for row in await tx.fetchall(select):
                ident = row[0]
                doc = self._sealer.open_legacy_record(kind, ident, row["doc"])
                await tx.execute(update, (self._sealer.record(kind, ident, 1, doc), 1, ident))
                records += 1
        actions = 0
        for row in await tx.fetchall(Q.PENDING_PAYLOADS):
            payload = row["payload"]
            text = payload if isinstance(payload, str) else bytes(payload).decode("utf-8")
            sealed = self._sealer.action(int(row["id"]), row["kind"], json.loads(text))
            await tx.execute(Q.OUTBOX_RESEAL, (sealed, int(row["id"])))
            actions += 1
        versions = await current_versions(tx)
        count, head = await audit_trail.head(tx)
        state = SignedState(1, count, head, records_digest(self.keys.seal_key, ((k, i, v) for (k, i), v in versions.items())))
        text = await write_state(tx, self.keys.seal_key, state)
        await tx.execute(Q.DELETE_META, (UPGRADE_ROW,))
        tx.after_commit.append(lambda: self._keeper.committed(state, text, versions))
        if legacy or records or actions:
            log.warning(
                "upgraded the store to signed state: %d audit entries re-anchored, %d records re-sealed "
                "with versions, %d pending actions sealed", legacy, records, actions)
        return True

    async def _after_upgrade(self) -> None:
        """Push the upgrade's rewritten pages out of the WAL (they held old outbox JSON)."""
        self._wal_dirty = not await self.db.checkpoint()

    async def _check_at_start(self) -> None:
        """The database against its signed state, and that state against the anchor file."""
        anchor = self._keeper.anchor
        # the file first, then the snapshot: the running bot writes the file only after a
        # commit, so a snapshot taken later is never older than the file (read the other
        # way round, `status` next to the bot would see a "newer" anchor)
        anchored = anchor.read(self.keys.seal_key) if anchor is not None else None
        async with self.db.read() as tx:
            state = await self._keeper.sync(tx)
            if anchored is not None:
                await check_anchor(tx, anchored, state, f"its anchor file {anchor.path}")
        if anchor is not None and anchored is None and state.generation > 1:
            # the file never existed (first start) or was removed: say so where an IG lead looks
            anchor_log.warning("no anchor file at %s: writing a new one. If the bot ran before, the file was "
                               "removed, and entries cut off before now cannot be detected", anchor.path)
            async with self.transaction() as work:
                await work.append_audit(AuditEntry(actor=audit_trail.BOT_ACTOR, action="audit.anchor_recreated",
                                                   at=utc_now()))
        if anchored is not None and anchored.generation == state.generation:
            self._keeper.anchored = anchored
        try:
            self._keeper.write_anchor()
        except OSError as exc:
            raise StorageError(f"cannot write the anchor file {anchor.path}: {exc.strerror or exc}; "  # type: ignore[union-attr]
                               "check [storage] anchor_file and its folder's permissions") from None
        self._log_anchor(force=True)

    def _log_anchor(self, force: bool = False) -> None:
        """The signed head to the operator log: a copy of the anchor outside the host."""
        state = self._keeper.state
        if state is None or state == self._logged_state:
            return
        if not force and time.monotonic() - self._logged_at < self.anchor_log_seconds:
            return
        anchor_log.info("audit anchor: generation=%d entries=%d head=%s", state.generation, state.audit_count,
                        head_for_log(state.audit_head))
        self._logged_state, self._logged_at = state, time.monotonic()

    async def close(self) -> None:
        try:
            try:
                self._keeper.write_anchor()
            except Exception as exc:
                log.error("could not write the anchor file on close: %s", exc)
            if self._wal_dirty:
                try:  # shutdown: the last try to cut old page images out of the WAL
                    if await self.db.checkpoint_at_close():
                        self._wal_dirty = False
                except Exception as exc:
                    log.error("could not truncate the WAL on close: %s", exc)
                if self._wal_dirty:
                    log.warning("the WAL still holds old page images of shredded keys (another process "
                                "reads the database); SQLite truncates it when the last connection closes")
            await self.db.close()
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    async def __aenter__(self) -> "SQLiteStore":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- transactions -----------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[SQLiteTransaction]:
        shredded = False
        try:
            async with self.db.transaction() as tx:
                base = await self._keeper.sync(tx)
                changes = StateChanges(self._keeper, base)
                work = SQLiteTransaction(self, tx, changes)
                yield work
                shredded = work.shredded
                if changes.changed:
                    state = changes.state()
                    text = await write_state(tx, self.keys.seal_key, state)
                    versions = dict(changes.versions)
                    tx.after_commit.append(lambda: self._keeper.committed(state, text, versions))
        except (StorageError, sqlite3.Error) as exc:
            if isinstance(exc, StoreError):
                raise
            raise StoreError(str(exc)) from exc
        if shredded:
            # push the zeroed pages into the main file and empty the WAL, so the old
            # page images holding the wrapped key don't linger in the -wal file; if a
            # reader's snapshot or a writer blocks that, housekeeping() retries on every
            # tick (Database.checkpoint: PASSIVE, then TRUNCATE only when the WAL is idle)
            self._wal_dirty = not await self.db.checkpoint()

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[SQLiteTransaction]:
        """A read-only view with the same getters (rolled back at the end)."""
        async with self.db.read() as tx:
            try:
                await self._keeper.sync(tx)
            except StorageError as exc:
                raise StoreError(str(exc)) from exc
            yield SQLiteTransaction(self, tx)

    async def pending_actions(self, limit: int = 100) -> list[OutboxEntry]:
        """Pending actions in order. A row whose sealed payload cannot be opened (altered,
        or sealed under another key) is moved to the dead-letter list, logged, and left
        out: one bad row must not stop the outbox (issue 9, finding 3)."""
        async with self.db.read() as tx:
            rows = await tx.fetchall(Q.PENDING_ACTIONS_LIMIT, (int(limit),))
        entries: list[OutboxEntry] = []
        for r in rows:
            oid = int(r["id"])
            try:
                action = action_from_dict(self._sealer.open_action(oid, r["kind"], r["payload"]))
            except (RecordUnreadable, KeyError, ValueError, TypeError):
                log.error("outbox action %d (%s) cannot be read; moved to the dead-letter list", oid, r["kind"])
                await self.dead_letter(oid, kind=r["kind"], referral_id=None,
                                       reason="Its stored payload cannot be read (altered, or another key).",
                                       attempts=0, at=utc_now())
                continue
            entries.append(OutboxEntry(outbox_id=oid, action=action, enqueued_at=from_text(r["created_at"])))
        return entries

    async def complete_action(self, outbox_id: int) -> None:
        """Mark done and drop the payload: nothing of a done action's text stays behind."""
        async with self.db.transaction() as tx:
            await tx.execute(Q.COMPLETE_ACTION, (to_text(utc_now()), int(outbox_id)))

    async def vault_get(self, image_id: str) -> bytes | None:
        async with self.db.read() as tx:
            return await SQLiteTransaction(self, tx).vault_get(image_id)

    async def housekeeping(self) -> None:
        """Called on every tick (``Workflow.handle(Tick)``): retry the WAL truncation a
        reader blocked after a shred (a PASSIVE checkpoint, and TRUNCATE only once the WAL
        is idle: it never stalls another connection's reads or writes), bring the anchor
        file up to date, and log the signed audit head at intervals.
        Never raises: a failure here is logged and retried on the next tick."""
        try:
            if self._wal_dirty:
                self._wal_dirty = not await self.db.checkpoint()
                if not self._wal_dirty:
                    log.info("the WAL is truncated: no old page images of shredded keys remain")
            self._keeper.write_anchor()
            self._log_anchor()
        except Exception:
            log.exception("store housekeeping failed; retrying on the next tick")

    async def dead_letter(self, outbox_id: int, *, kind: str, referral_id: str | None,
                          reason: str, attempts: int, at: datetime) -> None:
        async with self.db.transaction() as tx:
            await tx.execute(Q.DEAD_LETTER_ADD, (int(outbox_id), to_text(at), kind, referral_id, reason, int(attempts)))
            await tx.execute(Q.COMPLETE_ACTION, (to_text(at), int(outbox_id)))

    async def dead_letters(self, limit: int = 50) -> list[DeadLetter]:
        async with self.db.read() as tx:
            rows = await tx.fetchall(Q.DEAD_LETTERS, (int(limit),))
        return [DeadLetter(outbox_id=int(r["outbox_id"]), at=from_text(r["at"]), kind=r["kind"],
                           referral_id=r["referral_id"], reason=r["reason"], attempts=int(r["attempts"]))
                for r in rows]

    async def dead_letter_count(self) -> int:
        async with self.db.read() as tx:
            return int(await tx.scalar(Q.DEAD_LETTER_COUNT))

    async def set_aside_referrals(self) -> list[SetAside]:
        async with self.db.read() as tx:
            rows = await tx.fetchall(Q.SET_ASIDE_ALL)
        return [SetAside(referral_id=r["referral_id"], at=from_text(r["at"]), reason=r["reason"]) for r in rows]

    async def verify_audit(self) -> audit_trail.VerifyResult:
        async with self.db.read() as tx:
            return await audit_trail.verify(tx, self.keys.audit_key)

    async def audit_entries(self, referral_id: str | None = None) -> list[audit_trail.AuditEntry]:
        async with self.db.read() as tx:
            return await audit_trail.entries(tx, referral_id)
