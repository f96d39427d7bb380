"""Every SQL statement the store runs, in one place.

Written with ``?`` placeholders and portable types so that a PostgreSQL
dialect (asyncpg) can reuse them: :func:`storage.db.render` rewrites ``?`` to
``$1, $2, ...``. Upserts use ``ON CONFLICT ... DO NOTHING`` (SQLite >= 3.24 and
PostgreSQL both accept it). Ids are chosen by the application, never by
AUTOINCREMENT / SERIAL, so no dialect-specific "last insert id" is needed.
"""
from __future__ import annotations

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
PENDING_ACTIONS = "SELECT id, kind, payload FROM outbox WHERE done_at IS NULL ORDER BY id"
COMPLETE_ACTION = "UPDATE outbox SET done_at = ? WHERE id = ? AND done_at IS NULL"
OUTBOX_ROW = "SELECT id, kind, payload, done_at FROM outbox WHERE id = ?"

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
