#!/usr/bin/env bash
# bench/search/build.sh <pgchat binary> [database=search10m] [messages=10000000]: makes the
# search benchmark's database on the bench cluster (bench/pg.sh start): pgchat creates it
# (schema 5, from schema.sql) and stops, then build.sql fills it (see there what it holds).
# About 15 minutes for 10 million messages on the 2-core machine.
set -euo pipefail
B=$1; DB=${2:-search10m}; N=${3:-10000000}
cd "$(dirname "$0")/../.."
psql_() { psql -X -h 127.0.0.1 -p 5433 -U postgres "$@"; }
psql_ -d postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
export DATABASE_URL=postgres://postgres@127.0.0.1:5433/$DB PGCHAT_CONFIG=/nonexistent PORT=3190
export JWT_SECRET=bench-compare-secret-0123456789abcdef
setsid "$B" serve > /tmp/pgchat-search-build.log 2>&1 < /dev/null &
SRV=$!
trap 'kill -TERM "$SRV" 2>/dev/null' EXIT
for _ in $(seq 60); do curl -sf localhost:3190/ready >/dev/null && break; sleep 1; done
kill -TERM "$SRV"; wait "$SRV" 2>/dev/null || true
trap - EXIT
time psql_ -d "$DB" -v messages="$N" -f bench/search/build.sql
