#!/usr/bin/env bash
# Create deploy/secrets/* for compose.yaml: random secrets, mode 0400, never overwritten.
# Run from deploy/ after filling in .env. Back up secrets/kek SEPARATELY from database
# backups (see README.md, "Key management").
set -euo pipefail
cd "$(dirname "$0")"
[ -f .env ] || { echo "make-secrets: copy env.example to .env and set the passwords first" >&2; exit 1; }
# shellcheck disable=SC1091
. ./.env
umask 077
mkdir -p secrets
new() {  # new NAME COMMAND...  -> secrets/NAME unless it exists
    local f="secrets/$1"; shift
    if [ -e "$f" ]; then echo "make-secrets: keeping existing $f"; return; fi
    "$@" > "$f"; chmod 0400 "$f"; echo "make-secrets: wrote $f"
}
rand() { head -c "$1" /dev/urandom | base64 | tr -d '\n=+/' ; }
new postgres_superuser_password rand 32
new synapse_pgpass printf 'postgres:5432:synapse:synapse:%s\n' "$SYNAPSE_DB_PASSWORD"
new bot_pgpass printf 'postgres:5432:referralbot:referralbot:%s\n' "$BOT_DB_PASSWORD"
new synapse_macaroon_secret rand 48
new synapse_form_secret rand 48
new synapse_registration_secret rand 48
# The master key file: 32 random bytes, base64, one line. The vault's key-encryption key
# and the patient-reference HMAC key are derived from it (storage/keys.py).
new kek sh -c 'head -c 32 /dev/urandom | base64'
new bot_matrix_password rand 32
# Filled in by hand after creating the admin account (README.md, "Admin token").
[ -e secrets/bot_synapse_admin_token ] || { : > secrets/bot_synapse_admin_token; chmod 0400 secrets/bot_synapse_admin_token; }

# The bot runs as uid 10001 in its image (deploy/Dockerfile) and must be able to read its
# secrets; the key loader also refuses a key file that group or others can read.
BOT_UID=10001
for f in kek bot_pgpass bot_matrix_password bot_synapse_admin_token; do
    if [ "$(id -u)" -eq 0 ]; then
        chown "$BOT_UID:$BOT_UID" "secrets/$f"
    else
        echo "make-secrets: run as root, or: sudo chown $BOT_UID:$BOT_UID deploy/secrets/$f" >&2
    fi
done
