#!/usr/bin/env bash
# A focused A/B of two builds at one load: `dm` at --rate R for 30 s, the builds
# alternating (B first, then A, N times), each run on a fresh 2-worker server, on the
# bench cluster's database pgchat_cmp (bench/pg.sh start; bench/compare.sh grows it).
#   bench/ab.sh <binary A> <binary B> [rounds=3] [rate=500]
# Prints send → ack and send → delivery per run.
set -u
A=$1; B=$2; N=${3:-3}; RATE=${4:-500}
export DATABASE_URL=postgres://postgres@127.0.0.1:5433/pgchat_cmp JWT_SECRET=bench-compare-secret-0123456789abcdef
export PGCHAT_RATE_LIMIT_PER_SEC=100000 PGCHAT_RATE_LIMIT_BURST=100000 PGCHAT_CONFIG=/nonexistent PORT=3100
W="--url ws://127.0.0.1:3100/ws --url ws://127.0.0.1:3101/ws"
for i in $(seq "$N"); do
  for L in B A; do
    if [ $L = A ]; then BIN=$A; else BIN=$B; fi
    setsid "$BIN" serve --workers 2 --listen per-worker > /tmp/pgchat-ab-server.log 2>&1 < /dev/null &
    SRV=$!
    # The server is in its own session: stop it however this script ends.
    trap 'kill -TERM "$SRV" 2>/dev/null' EXIT
    # Ready, and ours: a server left on the ports by an earlier run would answer too.
    for _ in $(seq 60); do
      kill -0 "$SRV" 2>/dev/null || { echo "the server exited: /tmp/pgchat-ab-server.log" >&2; exit 1; }
      curl -sf localhost:3101/ready >/dev/null && break; sleep 1
    done
    curl -sf localhost:3101/ready >/dev/null || { echo "the server is not ready after 60 s" >&2; exit 1; }
    echo "== $L ($BIN) run $i $(date -u +%T)"
    "$BIN" bench --quiet $W dm --rate "$RATE" --pairs 200 --cross 0.5 --duration 30s 2>&1 \
      | grep -E "^send → delivery|^send → ack|errors"
    kill -TERM "$SRV"; wait "$SRV" 2>/dev/null
    trap - EXIT
  done
done
