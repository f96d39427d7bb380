"""Every SQL statement the store runs, in one place.

Written with ``?`` placeholders and portable types so that a PostgreSQL
dialect (asyncpg) can reuse them: :func:`storage.db.render` rewrites ``?`` to
``$1, $2, ...``. Upserts use ``ON CONFLICT ... DO NOTHING`` (SQLite >= 3.24 and
PostgreSQL both accept it). Ids are chosen by the application, never by
AUTOINCREMENT / SERIAL, so no dialect-specific "last insert id" is needed.
"""
from __future__ import annotations

from handlers.model import OPEN_STATES

# --- schema bookkeeping -------------------------------------------------------
CREATE_SCHEMA_VERSION = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    " version INTEGER PRIMARY KEY,"
    " name TEXT NOT NULL,"
    " applied_at TEXT NOT NULL)"
)
SCHEMA_VERSION_TABLE_EXISTS = (
    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
)
CURRENT_VERSION = "SELECT COALESCE(MAX(version), 0) FROM schema_version"
RECORD_VERSION = "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)"

# --- processed events ---------------------------------------------------------
MARK_PROCESSED = (
    "INSERT INTO processed_events (event_id, processed_at) VALUES (?, ?)"
    " ON CONFLICT (event_id) DO NOTHING"
)
IS_PROCESSED = "SELECT 1 FROM processed_events WHERE event_id = ?"

# --- outbox ---------------------------------------------------------------------
NEXT_OUTBOX_ID = "SELECT COALESCE(MAX(id), 0) + 1 FROM outbox"
ENQUEUE_ACTION = "INSERT INTO outbox (id, created_at, kind, payload) VALUES (?, ?, ?, ?)"
PENDING_ACTIONS = "SELECT id, created_at, kind, payload FROM outbox WHERE done_at IS NULL ORDER BY id"
PENDING_ACTIONS_LIMIT = PENDING_ACTIONS + " LIMIT ?"
# done: the payload goes (secure_delete zeroes the old cell); kind and times stay
COMPLETE_ACTION = "UPDATE outbox SET done_at = ?, payload = NULL WHERE id = ? AND done_at IS NULL"
OUTBOX_ROW = "SELECT id, kind, payload, done_at FROM outbox WHERE id = ?"
# the one-time keyed upgrade of schema 6 (storage/sqlite_store.py, _keyed_upgrade)
PENDING_PAYLOADS = "SELECT id, kind, payload FROM outbox WHERE done_at IS NULL AND payload IS NOT NULL ORDER BY id"
OUTBOX_RESEAL = "UPDATE outbox SET payload = ? WHERE id = ?"

# --- audit trail -----------------------------------------------------------------
AUDIT_HEAD = "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1"
AUDIT_APPEND = (
    "INSERT INTO audit_log (seq, at, actor, action, referral_id, consent_id, details, prev_hash, hash)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
AUDIT_ALL = (
    "SELECT seq, at, actor, action, referral_id, consent_id, details, prev_hash, hash"
    " FROM audit_log ORDER BY seq"
)
AUDIT_FOR_REFERRAL = (
    "SELECT seq, at, actor, action, referral_id, consent_id, details, prev_hash, hash"
    " FROM audit_log WHERE referral_id = ? ORDER BY seq"
)

# --- vault ---------------------------------------------------------------------------
VAULT_META_GET = "SELECT value FROM vault_meta WHERE name = ?"
VAULT_META_PUT = "INSERT INTO vault_meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING"
VAULT_INSERT_ITEM = (
    "INSERT INTO vault_items (image_id, content_type, nonce, ciphertext, size, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
VAULT_INSERT_KEY = "INSERT INTO vault_keys (image_id, wrapped_key) VALUES (?, ?)"
VAULT_GET = (
    "SELECT i.image_id, i.content_type, i.nonce, i.ciphertext, i.size, i.created_at,"
    " i.shredded_at, i.shred_reason, k.wrapped_key"
    " FROM vault_items i LEFT JOIN vault_keys k ON k.image_id = i.image_id"
    " WHERE i.image_id = ?"
)
VAULT_KEY_LENGTH = "SELECT LENGTH(wrapped_key) FROM vault_keys WHERE image_id = ?"
# Shredding: overwrite the wrapped key in place first (belt), then delete the row
# (braces: secure_delete zeroes the freed cell), then drop the ciphertext too.
VAULT_OVERWRITE_KEY = "UPDATE vault_keys SET wrapped_key = ? WHERE image_id = ?"
VAULT_DELETE_KEY = "DELETE FROM vault_keys WHERE image_id = ?"
VAULT_MARK_SHREDDED = (
    "UPDATE vault_items SET nonce = NULL, ciphertext = NULL, shredded_at = ?, shred_reason = ?"
    " WHERE image_id = ? AND shredded_at IS NULL"
)
VAULT_LIVE_IDS = "SELECT image_id FROM vault_items WHERE shredded_at IS NULL ORDER BY created_at, image_id"

# --- consents and referrals (sealed JSON documents + clear index columns) ---------------
# ``version`` is bound into the sealed doc's associated data and into the signed state
CONSENT_UPSERT = (
    "INSERT INTO consents (consent_id, practice, recorded_at, withdrawn_at, version, doc) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (consent_id) DO UPDATE SET practice = excluded.practice, recorded_at = excluded.recorded_at,"
    " withdrawn_at = excluded.withdrawn_at, version = excluded.version, doc = excluded.doc"
)
CONSENT_GET = "SELECT consent_id, version, doc FROM consents WHERE consent_id = ?"
CONSENTS_ALL = "SELECT consent_id, version, doc FROM consents ORDER BY recorded_at, consent_id"
LEGACY_CONSENTS = "SELECT consent_id, doc FROM consents WHERE version = 0 ORDER BY consent_id"
CONSENT_RESEAL = "UPDATE consents SET doc = ?, version = ? WHERE consent_id = ?"

# ``seq`` is given on insert only (the next number); an update keeps it. Every list is
# ordered by it: the order referrals were opened in, whatever the clock said.
REFERRAL_UPSERT = (
    "INSERT INTO referrals (referral_id, consent_id, referrer, specialty, state, opened_at,"
    " thread_root_event_id, next_due_at, version, doc, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
    " (SELECT COALESCE(MAX(seq), 0) + 1 FROM referrals))"
    " ON CONFLICT (referral_id) DO UPDATE SET consent_id = excluded.consent_id,"
    " referrer = excluded.referrer, specialty = excluded.specialty, state = excluded.state,"
    " opened_at = excluded.opened_at, thread_root_event_id = excluded.thread_root_event_id,"
    " next_due_at = excluded.next_due_at, version = excluded.version, doc = excluded.doc"
)
_REFERRAL_COLS = "SELECT referral_id, version, doc FROM referrals"
LEGACY_REFERRALS = "SELECT referral_id, doc FROM referrals WHERE version = 0 ORDER BY referral_id"
REFERRAL_RESEAL = "UPDATE referrals SET doc = ?, version = ? WHERE referral_id = ?"
REFERRAL_GET = _REFERRAL_COLS + " WHERE referral_id = ?"
REFERRALS_BY_CONSENT = _REFERRAL_COLS + " WHERE consent_id = ? ORDER BY seq"
REFERRALS_BY_REFERRER = _REFERRAL_COLS + " WHERE referrer = ? ORDER BY seq"
OPEN_REFERRALS_BY_REFERRER = (
    _REFERRAL_COLS + " WHERE referrer = ? AND state IN ("
    + ", ".join(f"'{state.value}'" for state in sorted(OPEN_STATES)) + ") ORDER BY seq"
)
REFERRAL_BY_THREAD = _REFERRAL_COLS + " WHERE thread_root_event_id = ? ORDER BY seq LIMIT 1"
REFERRALS_DUE = (
    _REFERRAL_COLS + " WHERE next_due_at IS NOT NULL AND next_due_at <= ? ORDER BY next_due_at, seq"
)
REFERRAL_IDS_DUE = (
    "SELECT referral_id FROM referrals WHERE next_due_at IS NOT NULL AND next_due_at <= ?"
    " AND referral_id NOT IN (SELECT referral_id FROM referrals_set_aside)"
    " ORDER BY next_due_at, seq"
)
REFERRALS_ALL = _REFERRAL_COLS + " ORDER BY seq"
REFERRAL_IDS_ALL = "SELECT referral_id FROM referrals ORDER BY seq"

# --- what the transports gave up on, and what the timers skip (007) ----------------------
SET_ASIDE_REFERRAL = (
    "INSERT INTO referrals_set_aside (referral_id, at, reason) VALUES (?, ?, ?)"
    " ON CONFLICT (referral_id) DO NOTHING"
)
SET_ASIDE_ALL = "SELECT referral_id, at, reason FROM referrals_set_aside ORDER BY at, referral_id"
DEAD_LETTER_ADD = (
    "INSERT INTO dead_letters (outbox_id, at, kind, referral_id, reason, attempts) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (outbox_id) DO NOTHING"
)
DEAD_LETTERS = (
    "SELECT outbox_id, at, kind, referral_id, reason, attempts FROM dead_letters"
    " ORDER BY outbox_id DESC LIMIT ?"
)
DEAD_LETTER_COUNT = "SELECT COUNT(*) FROM dead_letters"

# --- store_meta: the signed state and the pending keyed upgrade (storage/seal.py) --------
GET_META = "SELECT value FROM store_meta WHERE name = ?"
PUT_META = (
    "INSERT INTO store_meta (name, value) VALUES (?, ?)"
    " ON CONFLICT (name) DO UPDATE SET value = excluded.value"
)
DELETE_META = "DELETE FROM store_meta WHERE name = ?"
RECORD_VERSIONS = (
    "SELECT 'consent' AS kind, consent_id AS ident, version FROM consents"
    " UNION ALL SELECT 'referral' AS kind, referral_id AS ident, version FROM referrals"
)
AUDIT_HASH_AT = "SELECT hash FROM audit_log WHERE seq = ?"

# --- photos waiting for the GP to name their referral (sealed JSON + clear index columns) ---
UNASSIGNED_UPSERT = (
    "INSERT INTO unassigned_photos (photo_id, referrer, received_at, destroy_at, doc) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (photo_id) DO UPDATE SET referrer = excluded.referrer, received_at = excluded.received_at,"
    " destroy_at = excluded.destroy_at, doc = excluded.doc"
)
_UNASSIGNED_COLS = "SELECT photo_id, doc FROM unassigned_photos"
UNASSIGNED_BY_REFERRER = _UNASSIGNED_COLS + " WHERE referrer = ? ORDER BY received_at, photo_id"
UNASSIGNED_DUE = _UNASSIGNED_COLS + " WHERE destroy_at <= ? ORDER BY destroy_at, photo_id"
UNASSIGNED_DELETE = "DELETE FROM unassigned_photos WHERE photo_id = ?"
# --- patient references (004; the reference itself is a vault item) -------------------
PATIENT_REF_KEEP = (
    "INSERT INTO patient_refs (consent_id, keep_until) VALUES (?, ?)"
    " ON CONFLICT (consent_id) DO UPDATE SET keep_until = excluded.keep_until"
    " WHERE patient_refs.shredded_at IS NULL AND excluded.keep_until > patient_refs.keep_until"
)
PATIENT_REF_GET = "SELECT keep_until, shredded_at FROM patient_refs WHERE consent_id = ?"
PATIENT_REF_SHREDDED = (
    "UPDATE patient_refs SET shredded_at = ?, shred_reason = ? WHERE consent_id = ? AND shredded_at IS NULL"
)
PATIENT_REFS_DUE = (
    "SELECT consent_id FROM patient_refs WHERE shredded_at IS NULL AND keep_until <= ?"
    " ORDER BY keep_until, consent_id"
)
