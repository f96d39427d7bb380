-- 006 (SQLite): nothing clinical in clear, and a state that can be checked (issue 9,
-- findings 2 and 8). The PostgreSQL variant is 006_sealed_state.postgres.sql.
--
-- The outbox payload (an action's JSON: it can hold the question, the opinion, a reply)
-- becomes an AES-256-GCM sealed BLOB under the records key, and NULL once the action is
-- done. Done rows lose their payload here; pending rows keep their old JSON text until
-- the store, which holds the key, seals them when it first opens the database
-- (the 'keyed_upgrade' row below). SQLite cannot drop NOT NULL in place: the table is
-- rebuilt (secure_delete=ON zeroes the old pages).
CREATE TABLE outbox_sealed (
    id           INTEGER PRIMARY KEY,
    created_at   TEXT NOT NULL,
    kind         TEXT NOT NULL,
    payload      BLOB,
    done_at      TEXT
);
INSERT INTO outbox_sealed (id, created_at, kind, payload, done_at)
    SELECT id, created_at, kind, CASE WHEN done_at IS NULL THEN payload END, done_at FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_sealed RENAME TO outbox;
CREATE INDEX outbox_pending ON outbox (done_at, id);

-- Each consent and referral carries a version, bound into its sealed document's
-- associated data and into the signed state, so an older copy of a row is refused.
-- 0 = sealed before version 6; the store re-seals those as version 1.
ALTER TABLE consents ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE referrals ADD COLUMN version INTEGER NOT NULL DEFAULT 0;

-- Small named values of the store: the signed state ('state_seal') and the pending
-- keyed upgrade ('keyed_upgrade': sealing old outbox rows, re-sealing records with a
-- version, re-anchoring the audit chain under its HMAC; done once by the store).
CREATE TABLE store_meta (
    name         TEXT PRIMARY KEY,
    value        TEXT NOT NULL
);
INSERT INTO store_meta (name, value) VALUES ('keyed_upgrade', '006');
