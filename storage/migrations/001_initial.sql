-- 001: the infrastructure every transition uses.
-- Portable SQL: TEXT / INTEGER / BLOB only (a PostgreSQL dialect maps BLOB to BYTEA),
-- timestamps as ISO-8601 UTC text, ids chosen by the application (no AUTOINCREMENT).

-- Transport event ids already handled: a redelivered event is a no-op.
CREATE TABLE processed_events (
    event_id     TEXT PRIMARY KEY,
    processed_at TEXT NOT NULL
);

-- Actions produced by a transition, written in the same transaction as the
-- transition itself; the transport drains them and marks them done.
CREATE TABLE outbox (
    id           INTEGER PRIMARY KEY,
    created_at   TEXT NOT NULL,
    kind         TEXT NOT NULL,
    payload      TEXT NOT NULL,
    done_at      TEXT
);
CREATE INDEX outbox_pending ON outbox (done_at, id);

-- Append-only, hash-chained audit trail. Never patient data or image bytes.
CREATE TABLE audit_log (
    seq          INTEGER PRIMARY KEY,
    at           TEXT NOT NULL,
    actor        TEXT NOT NULL,
    action       TEXT NOT NULL,
    referral_id  TEXT,
    consent_id   TEXT,
    details      TEXT NOT NULL,
    prev_hash    TEXT NOT NULL,
    hash         TEXT NOT NULL
);

-- Envelope-encrypted images. The wrapped data key lives in its own table so that
-- shredding is a DELETE of one small row (overwritten with zeros: secure_delete).
CREATE TABLE vault_items (
    image_id     TEXT PRIMARY KEY,
    content_type TEXT NOT NULL,
    nonce        BLOB,
    ciphertext   BLOB,
    size         INTEGER NOT NULL,
    created_at   TEXT NOT NULL,
    shredded_at  TEXT,
    shred_reason TEXT
);

CREATE TABLE vault_keys (
    image_id     TEXT PRIMARY KEY REFERENCES vault_items (image_id),
    wrapped_key  BLOB NOT NULL
);

-- One row: the fingerprint of the key-encryption key this database was created
-- with, so a wrong key file is reported as such instead of as corrupt data.
CREATE TABLE vault_meta (
    name         TEXT PRIMARY KEY,
    value        TEXT NOT NULL
);
