-- 003: consents and referrals (the domain state of the workflow).
-- The whole record is kept as one AES-256-GCM sealed JSON document (nonce || ciphertext,
-- key derived from the master secret, associated data = kind + id) because it holds
-- clinical free text (question, opinion, best-interests statement); only the columns
-- the store queries by are in clear, and none of them is patient data.
-- No foreign key from referrals to consents: the reference semantics (storage/memory.py)
-- have none, and the workflow checks the consent before it opens a referral.

CREATE TABLE consents (
    consent_id    TEXT PRIMARY KEY,
    practice      TEXT NOT NULL,
    recorded_at   TEXT NOT NULL,
    withdrawn_at  TEXT,
    doc           BLOB NOT NULL
);

CREATE TABLE referrals (
    referral_id          TEXT PRIMARY KEY,
    consent_id           TEXT NOT NULL,
    referrer             TEXT NOT NULL,
    specialty            TEXT NOT NULL,
    state                TEXT NOT NULL,
    opened_at            TEXT NOT NULL,
    thread_root_event_id TEXT,
    next_due_at          TEXT,
    doc                  BLOB NOT NULL
);
CREATE INDEX referrals_by_consent ON referrals (consent_id, opened_at, referral_id);
CREATE INDEX referrals_by_referrer ON referrals (referrer, opened_at, referral_id);
CREATE INDEX referrals_by_thread ON referrals (thread_root_event_id);
CREATE INDEX referrals_by_due ON referrals (next_due_at, referral_id);
