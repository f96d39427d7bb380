-- 004: how long each consent's patient reference is kept (for filing into the record).
-- The reference itself (e.g. the NHS number) is NOT here: it is a vault item
-- ("<consent id>.patient-ref", its own data key, AES-256-GCM, shredded like an image).
-- This table only says until when it must be kept and whether it was destroyed, so the
-- timer can shred it at the end of the record's retention (docs/filing.md).
CREATE TABLE patient_refs (
    consent_id    TEXT PRIMARY KEY,
    keep_until    TEXT NOT NULL,
    shredded_at   TEXT,
    shred_reason  TEXT
);
CREATE INDEX patient_refs_due ON patient_refs (keep_until, consent_id);
