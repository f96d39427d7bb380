-- 007: reliability (security review, issue 9).
-- * referrals.seq: the order referrals were opened in, assigned by the store. Lists are
--   ordered by it, never by the wall-clock opened_at (a clock stepped back would put a
--   new referral before an old one). Existing rows are numbered in their old order.
-- * dead_letters: outbox actions the transport gave up on (a permanent failure such as
--   the bot being removed from the room, or too many retries), for `referral-bot status`
--   and the metrics. The reason is a plain sentence without patient data.
-- * referrals_set_aside: referrals whose row cannot be read; the timers skip them (and
--   alert) instead of failing every tick, until an operator repairs the row and deletes
--   its line here.

ALTER TABLE referrals ADD COLUMN seq INTEGER;
UPDATE referrals SET seq = (
    SELECT COUNT(*) FROM referrals AS older
    WHERE older.opened_at < referrals.opened_at
       OR (older.opened_at = referrals.opened_at AND older.referral_id <= referrals.referral_id));
CREATE UNIQUE INDEX referrals_by_seq ON referrals (seq);
CREATE INDEX referrals_by_referrer_seq ON referrals (referrer, seq);
CREATE INDEX referrals_by_consent_seq ON referrals (consent_id, seq);

CREATE TABLE dead_letters (
    outbox_id    INTEGER PRIMARY KEY,
    at           TEXT NOT NULL,
    kind         TEXT NOT NULL,
    referral_id  TEXT,
    reason       TEXT NOT NULL,
    attempts     INTEGER NOT NULL
);

CREATE TABLE referrals_set_aside (
    referral_id  TEXT PRIMARY KEY,
    at           TEXT NOT NULL,
    reason       TEXT NOT NULL
);
