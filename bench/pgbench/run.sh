#!/usr/bin/env bash
# bench/pgbench/run.sh <db> <script.sql> [seconds=15] [clients=1]: one pgbench run of a
# script of this folder on the bench cluster (bench/pg.sh), prepared statements; prints
# pgbench's transactions per second and mean latency, and the bench cluster's CPU per
# transaction (all its processes, from /proc: the backends, the WAL writer, autovacuum).
set -eu
DB=$1; S=$2; T=${3:-15}; C=${4:-1}
PGPID=$(head -1 "${PGCHAT_BENCH_PGDATA:-/tmp/pgchat-bench-pg}/postmaster.pid")
pgcpu() {
  local t; t=$(awk '{print $14+$15+$16+$17}' /proc/$PGPID/stat)
  for c in $(pgrep -P "$PGPID"); do t=$(( t + $(awk '{print $14+$15}' /proc/$c/stat 2>/dev/null || echo 0) )); done
  echo "$t"
}
g0=$(pgcpu)
out=$(pgbench -n -h 127.0.0.1 -p 5433 -U postgres -M prepared -c "$C" -j "$C" -T "$T" -f "$S" "$DB" 2>&1)
sleep 1 # the backend exits after pgbench; its CPU then counts in the postmaster's cutime
g1=$(pgcpu)
n=$(echo "$out" | awk '/number of transactions actually processed/ {print $NF}' | cut -d/ -f1)
tps=$(echo "$out" | awk '/^tps/ {print $3}')
lat=$(echo "$out" | awk '/latency average/ {print $4}')
fail=$(echo "$out" | awk '/number of failed transactions/ {print $5}')
echo "$(basename "$S") on $DB, $C client(s): $n transactions, ${tps} tps, latency ${lat} ms, failed ${fail:-0}, PostgreSQL CPU $(( (g1 - g0) * 10000 / n )) µs per transaction"
