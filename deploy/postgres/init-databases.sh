#!/bin/sh
# Runs once, when the PostgreSQL volume is first created (docker-entrypoint-initdb.d).
# Synapse needs its database with C collation and UTF8 encoding; the bot gets its
# own role and database so neither can read the other's tables.
set -eu
: "${SYNAPSE_DB_PASSWORD:?set SYNAPSE_DB_PASSWORD}"
: "${BOT_DB_PASSWORD:?set BOT_DB_PASSWORD}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
     -v synapse_pw="$SYNAPSE_DB_PASSWORD" -v bot_pw="$BOT_DB_PASSWORD" <<'SQL'
CREATE ROLE synapse LOGIN PASSWORD :'synapse_pw';
CREATE DATABASE synapse OWNER synapse ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0;
CREATE ROLE referralbot LOGIN PASSWORD :'bot_pw';
CREATE DATABASE referralbot OWNER referralbot ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0;
REVOKE ALL ON DATABASE synapse FROM PUBLIC;
REVOKE ALL ON DATABASE referralbot FROM PUBLIC;
SQL
