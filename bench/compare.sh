#!/usr/bin/env bash
# The same short benchmark set for two builds (e.g. before and after a refactor):
#   bench/compare.sh <pgchat binary> <label> [database]   → target/bench-compare/<label>.txt
# On the bench cluster (bench/pg.sh, 127.0.0.1:5433), database pgchat_cmp (or the one named)
# grown once to ~1M events. Builds of different schema versions need databases of their
# own: an older pgchat refuses a database a newer one migrated.
set -u
B=$1; L=$2; DB=${3:-pgchat_cmp}; mkdir -p target/bench-compare; OUT=target/bench-compare/$L.txt
export DATABASE_URL=postgres://postgres@127.0.0.1:5433/$DB JWT_SECRET=bench-compare-secret-0123456789abcdef
export PGCHAT_RATE_LIMIT_PER_SEC=100000 PGCHAT_RATE_LIMIT_BURST=100000 PGCHAT_CONFIG=/nonexistent PORT=3100
psql -X -h 127.0.0.1 -p 5433 -U postgres -qc "CREATE DATABASE $DB" 2>/dev/null || true
W="--url ws://127.0.0.1:3100/ws --url ws://127.0.0.1:3101/ws"
setsid "$B" serve --workers 2 --listen per-worker > target/bench-compare/server-$L.log 2>&1 < /dev/null &
SRV=$!
# The server is in its own session: stop it however this script ends.
trap 'kill -TERM "$SRV" 2>/dev/null' EXIT
# Ready, and ours: a server left on the ports by an earlier run would answer too.
for i in $(seq 60); do
  kill -0 "$SRV" 2>/dev/null || { echo "the server exited: target/bench-compare/server-$L.log" >&2; exit 1; }
  curl -sf localhost:3101/ready >/dev/null && break; sleep 1
done
curl -sf localhost:3101/ready >/dev/null || { echo "the server is not ready after 60 s" >&2; exit 1; }
{
  echo "== $L $(date -u +%FT%TZ) $("$B" --version 2>/dev/null)"
  n=$(psql -X -h 127.0.0.1 -p 5433 -U postgres -d "$DB" -Atc 'select count(*) from pgchat.event_queue') || exit 1
  if [ "${n:-0}" -lt 500000 ]; then
    "$B" bench --quiet $W growth --rate 500 --pairs 200 --cross 0.5 --rounds 2 --round-duration 10s \
       --grow-events 1000000 --database-url "$DATABASE_URL" 2>&1 | tail -8
    psql -X -h 127.0.0.1 -p 5433 -U postgres -d "$DB" -c 'VACUUM ANALYZE' >/dev/null
  fi
  echo "events: $(psql -X -h 127.0.0.1 -p 5433 -U postgres -d "$DB" -Atc 'select count(*) from pgchat.event_queue')"
  for r in 1 2; do "$B" bench --quiet $W dm --rate 500 --pairs 200 --cross 0.5 --duration 15s 2>&1 | tail -6; done
  "$B" bench --quiet $W dm --rate 3000 --pairs 200 --cross 0.5 --duration 15s 2>&1 | tail -6
  "$B" bench --quiet $W connect --count 5000 --concurrency 100 2>&1 | tail -4
} >> "$OUT" 2>&1
kill -TERM "$SRV"; wait "$SRV" 2>/dev/null
trap - EXIT
echo done >> "$OUT"
