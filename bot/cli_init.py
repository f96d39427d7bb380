"""`referral-bot init`: write a commented example config and a fresh key file (0600)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXAMPLE = '''\
# referral-bot configuration. Secrets are never written here: each secret X is read
# from X_file (a path), X_env (an environment variable name) or the variable
# REFERRAL_BOT_<SECTION>_<X>, e.g. REFERRAL_BOT_MATRIX_PASSWORD.

[matrix]
homeserver = "https://matrix.example.org"
user_id = "@referral-bot:example.org"
password_env = "REFERRAL_BOT_MATRIX_PASSWORD"   # or password_file = "/run/secrets/..."
device_name = "referral-bot"
# The E2EE device (Olm account, Megolm sessions) lives here; keep it and back it up.
# A new device cannot read messages sent before it existed.
store_dir = "{store_dir}"
# Optional: pickle key protecting the store (default: derived from the key file, under
# its own label; a store made before that is re-keyed once at start).
# pickle_key_env = "REFERRAL_BOT_PICKLE_KEY"
# Media deletion needs a Synapse server-admin token (redaction alone leaves the file
# on the server). Either the bot account is an admin...
admin_is_bot = false
# ...or give the token of a separate admin account:
# admin_token_file = "/run/secrets/synapse_admin_token"
decrypt_grace_seconds = 60   # wait this long for a late room key before asking to resend

[storage]
backend = "sqlite"
sqlite_path = "{db_path}"
key_file = "{key_file}"       # the master key (0600); NOT in the database or its backups
export_dir = "var/exports"    # where !export writes FHIR R4 bundles (files are 0600)
# The signed audit head, outside the database (default: next to it, <sqlite_path>.anchor).
# Better on another volume; `referral-bot audit verify` checks the database against it.
# anchor_file = "/srv/audit/referral-bot.anchor"

[policy]
grace_period_minutes = 60     # after the opinion, images stay this long, then are removed
max_lifetime_hours = 72       # no opinion by then: images removed, referral expires
reminder_before_hours = 12    # reminder this long before the max lifetime
retention_days = 90           # vault copy kept (when !consent gives no retention=)
adult_age = 16                # a parent's consent stops covering new sharing at this age
time_zone = "Europe/London"   # times shown to people (storage is UTC)
unassigned_photo_minutes = 10 # a photo whose referral the GP has not named is destroyed then
held_photo_hours = 24        # a photo held for a face or text (preview sent) waits this long for !blur / !discard
photo_window_minutes = 10     # a referral keeps taking photos without naming this long after one
more_photos_extension_hours = 48  # !morephotos keeps the referral open this much longer
consent_window_days = 30      # one episode: referrals may be opened this long after !consent
max_consent_window_days = 365 # the longest valid-for= a GP may give
# The clock as a safety net (docs/commands.md "The clock"). Escalation and every urgent
# timer count working time: these hours (local) on these days, minus the dates listed.
working_days = ["mon", "tue", "wed", "thu", "fri"]
working_hours = "09:00-17:00"
non_working_dates = []             # your bank holidays, e.g. ["2026-12-25", "2026-12-28"]
escalate_after_working_hours = 16  # no opinion this long after the photos: the lead is mentioned, the GP told
urgent_escalate_after_working_hours = 4
urgent_max_lifetime_working_hours = 16    # urgent=urgent|2ww: answer window (never longer than max_lifetime)
urgent_reminder_before_working_hours = 4  # urgent: the GP is warned this long before it expires
# Patient references accepted besides NHS numbers (10 digits, modulus 11), e.g.:
# [[policy.patient_references]]
# name = "hospital no."
# pattern = "RX[0-9]{{7}}"

[filing]
retention_warning_days = 7    # warn the GP and the operator before an unfiled record's retention ends
# Where the record of each closed referral goes (docs/filing.md). With no sink, filing is
# off: `referral-bot status` says so and vault copies are destroyed at their retention.
# [[filing.sink]]
# name = "practice-inbox"
# type = "folder"             # folder | smtp | dicomweb
# label = "the practice document inbox"
# path = "/var/spool/referral-bot/inbox"
#
# [[filing.sink]]
# name = "pacs"
# type = "dicomweb"
# label = "the hospital PACS"
# url = "https://pacs.example.nhs.uk/dicom-web"   # a bearer token, if any: token_file = "..."

[directory]
# Who may invite and talk to the bot (!help, !status): clinicians below, plus these users /
# servers. Only the clinicians below may send photos.
allowed_users = []
allowed_servers = ["example.org"]

# role: "referrer" (default) may !consent and !refer; "specialist" may not, and is on the
# roster of its specialties (may be in that room, may give !opinion); "both" is both.
[[directory.clinicians]]
user_id = "@dr.gp:example.org"
role = "referrer"             # referrer | specialist | both
practice = "P81001"           # only clinicians of the same practice share consents
name = "Dr A. GP"

[[directory.clinicians]]
user_id = "@dr.derm:example.org"
role = "specialist"
specialties = ["dermatology"] # on this specialty's roster: may be in its room, may give !opinion
name = "Dr B. Dermatologist"

# One end-to-end-encrypted room per specialty; every member must be on its roster (the
# specialists above with this specialty, plus an optional roster = [...] here): a GP in
# the room makes it unsafe, and the bot then posts nothing there.
[specialties.dermatology]
room = "!replace-with-room-id:example.org"
title = "Dermatology advice"
aliases = ["derm", "skin"]
# lead = "@dr.derm:example.org"  # mentioned when a referral waits too long (on the roster; else the whole roster)
'''


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default="referral-bot.toml", metavar="FILE",
                        help="where to write the example config (default: referral-bot.toml)")
    parser.add_argument("--key-file", default=None, metavar="FILE",
                        help="where to write the key file (default: next to the config)")
    parser.add_argument("--force", action="store_true",
                        help="overwrite an existing config (never an existing key file)")


def run(args: argparse.Namespace) -> int:
    from storage.keys import KeyProblem, generate_key_file

    cfg = Path(args.config)
    key = Path(args.key_file) if args.key_file else cfg.with_name("referral-bot.key")
    if cfg.exists() and not args.force:
        print(f"referral-bot init: {cfg} already exists (use --force to overwrite it).",
              file=sys.stderr)
        return 1
    cfg.parent.mkdir(parents=True, exist_ok=True)
    base = cfg.resolve().parent
    rel = lambda p: str(p.resolve().relative_to(base)) if p.resolve().is_relative_to(base) else str(p.resolve())
    text = EXAMPLE.format(store_dir="var/matrix-store", db_path="var/referral-bot.sqlite3",
                          key_file=rel(key))
    if key.exists():
        print(f"Keeping the existing key file {key} (a key is never overwritten).")
    else:
        try:
            key.parent.mkdir(parents=True, exist_ok=True)
            generate_key_file(key)
        except KeyProblem as exc:
            print(f"referral-bot init: {exc}", file=sys.stderr)
            return 1
        print(f"Wrote a fresh key file {key} (mode 0600). Back it up apart from the database.")
    cfg.write_text(text)
    print(f"Wrote an example config {cfg}: fill in the homeserver, the bot account, the "
          f"directory and the specialty rooms, then run `referral-bot run --config {cfg}`.")
    return 0
