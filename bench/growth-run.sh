#!/usr/bin/env bash
# bench/growth-run.sh <binary> <db> <label> [rounds=5] [grow-events=2500000]: the `growth`
# scenario of docs/BENCHMARKS.md (1,000 DMs/s on 200 pairs, half across 2 workers, rounds of
# 20 s, the database grown in bulk between rounds) on the bench cluster (bench/pg.sh), in
# database <db>, made afresh unless KEEP=1 (then the run continues on what it holds).
# Ends with VACUUM ANALYZE, so that later runs on <db> start from a settled database.
# The summary goes to stdout and to target/bench-growth/<label>.txt.
set -u
B=$1; DB=$2; L=$3; N=${4:-5}; E=${5:-2500000}
cd "$(dirname "$0")/.."
mkdir -p target/bench-growth; OUT=target/bench-growth/$L.txt
export DATABASE_URL=postgres://postgres@127.0.0.1:5433/$DB JWT_SECRET=bench-compare-secret-0123456789abcdef
export PGCHAT_RATE_LIMIT_PER_SEC=100000 PGCHAT_RATE_LIMIT_BURST=100000 PGCHAT_CONFIG=/nonexistent PORT=3100
psql_() { psql -X -h 127.0.0.1 -p 5433 -U postgres "$@"; }
if [ "${KEEP:-0}" != 1 ]; then
  psql_ -d postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" || exit 1
fi
setsid "$B" serve --workers 2 --listen per-worker > "target/bench-growth/server-$L.log" 2>&1 < /dev/null &
SRV=$!
trap 'kill -TERM "$SRV" 2>/dev/null' EXIT
for _ in $(seq 120); do
  kill -0 "$SRV" 2>/dev/null || { echo "the server exited: target/bench-growth/server-$L.log" >&2; exit 1; }
  curl -sf localhost:3101/ready >/dev/null && break; sleep 1
done
{
  echo "== $L $(date -u +%FT%TZ) $B; load: $(cut -d' ' -f1-3 /proc/loadavg)"
  "$B" bench --quiet --url ws://127.0.0.1:3100/ws --url ws://127.0.0.1:3101/ws growth --rate 1000 \
    --pairs 200 --cross 0.5 --rounds "$N" --round-duration 20s --grow-events "$E" \
    --database-url "$DATABASE_URL" 2>&1
  echo "events: $(psql_ -d "$DB" -Atc 'SELECT count(*) FROM pgchat.event_queue'), messages: $(psql_ -d "$DB" -Atc 'SELECT count(*) FROM pgchat.messages')"
} | tee -a "$OUT"
kill -TERM "$SRV"; wait "$SRV" 2>/dev/null
trap - EXIT
psql_ -d "$DB" -qc 'VACUUM ANALYZE'
