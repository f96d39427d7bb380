-- 005: photos the bot holds because it could not tell which of the GP's open referrals
-- they are for (it never guesses; issue 10). The clean bytes are in the vault under the
-- same id; the row says whose photo it is and when it is destroyed if nobody claims it.
-- The document is sealed like the referrals' (AES-256-GCM): it names the referrals the
-- GP was offered and the upload it came from.

CREATE TABLE unassigned_photos (
    photo_id     TEXT PRIMARY KEY,
    referrer     TEXT NOT NULL,
    received_at  TEXT NOT NULL,
    destroy_at   TEXT NOT NULL,
    doc          BLOB NOT NULL
);
CREATE INDEX unassigned_photos_by_referrer ON unassigned_photos (referrer, received_at, photo_id);
CREATE INDEX unassigned_photos_by_due ON unassigned_photos (destroy_at, photo_id);
