-- 006 (PostgreSQL): same as 006_sealed_state.sqlite.sql (read that one for the why).
-- PostgreSQL can change the column in place. Dead row versions keep the old JSON until
-- VACUUM: the store runs VACUUM FULL on the outbox after its keyed upgrade.
ALTER TABLE outbox ALTER COLUMN payload DROP NOT NULL;
UPDATE outbox SET payload = NULL WHERE done_at IS NOT NULL;
ALTER TABLE outbox ALTER COLUMN payload TYPE BYTEA USING convert_to(payload, 'UTF8');

ALTER TABLE consents ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE referrals ADD COLUMN version INTEGER NOT NULL DEFAULT 0;

CREATE TABLE store_meta (
    name         TEXT PRIMARY KEY,
    value        TEXT NOT NULL
);
INSERT INTO store_meta (name, value) VALUES ('keyed_upgrade', '006');
