#!/usr/bin/env bash
# bench/ab-stats.sh <binary> <db> <label> [rate]: a DM run (500/s unless told) for 15 s on the bench
# cluster (bench/pg.sh); prints delivery latency, the workers' CPU (utime + stime from /proc) and
# PostgreSQL's time per top-level statement (pg_stat_statements).
#
# Also printed: PostgreSQL's own CPU over the run (every process of the bench cluster, from
# /proc, autovacuum and the WAL writer included), the statements run inside the batches, and
# the sequential scans of pgchat's tables (pg_stat_user_tables) during the run.
# DURATION (default 15s) changes the run's length; DM_ARGS adds options to `bench dm`
# (e.g. DM_ARGS="--changes 0.3", whose edits, reactions and deletions get rows of their own).
B=$1; DB=$2; L=$3; R=${4:-500}; D=${DURATION:-15s}
cd "$(dirname "$0")/.."
export DATABASE_URL=postgres://postgres@127.0.0.1:5433/$DB JWT_SECRET=bench-compare-secret-0123456789abcdef PGCHAT_RATE_LIMIT_PER_SEC=100000 PGCHAT_RATE_LIMIT_BURST=100000 PGCHAT_CONFIG=/nonexistent PORT=3100
setsid $B serve --workers 2 --listen per-worker > /tmp/srv-$L.log 2>&1 < /dev/null & SRV=$!
for i in $(seq 60); do curl -sf localhost:3101/ready >/dev/null && break; sleep 1; done
p0=$(curl -s localhost:3100/health | python3 -c 'import sys,json;print(json.load(sys.stdin)["pid"])')
p1=$(curl -s localhost:3101/health | python3 -c 'import sys,json;print(json.load(sys.stdin)["pid"])')
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
# The bench cluster's CPU: its live processes, and the children that exited (cutime + cstime).
PGPID=$(head -1 "${PGCHAT_BENCH_PGDATA:-/tmp/pgchat-bench-pg}/postmaster.pid")
pgcpu() {
  local t; t=$(awk '{print $14+$15+$16+$17}' /proc/$PGPID/stat)
  for c in $(pgrep -P "$PGPID"); do t=$(( t + $(cpu "$c" 2>/dev/null || echo 0) )); done
  echo "$t"
}
q() { psql -X -h 127.0.0.1 -p 5433 -U postgres -d $DB -At -F' | ' -c "$1"; }
bench/pg.sh reset $DB
c0=$(( $(cpu $p0) + $(cpu $p1) )); g0=$(pgcpu)
# shellcheck disable=SC2086
echo "$L load before: $(cut -d" " -f1-3 /proc/loadavg)"
$B bench --quiet --url ws://127.0.0.1:3100/ws --url ws://127.0.0.1:3101/ws dm --rate $R --pairs 200 --cross 0.5 --duration $D $DM_ARGS 2>&1 | grep -E "→|errors|messages:|result"
c1=$(( $(cpu $p0) + $(cpu $p1) )); g1=$(pgcpu)
secs=$(python3 -c "import re; m=re.fullmatch(r'(\d+)(s|m)', '$D'); print(int(m[1])*{'s':1,'m':60}[m[2]])")
echo "$L workers CPU: $(( (c1 - c0) * 10 )) ms for $(( R * secs )) messages"
echo "$L PostgreSQL CPU: $(( (g1 - g0) * 10 )) ms"
sleep 1 # backends flush their table counters within a second
q "SELECT calls, round(total_exec_time::numeric,1), round((total_exec_time/greatest(calls,1))::numeric,3), left(regexp_replace(query, '\s+', ' ', 'g'), 70) FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND toplevel ORDER BY total_exec_time DESC LIMIT 8"
echo "inside the batches (calls | ms | ms per call | WAL records | statement):"
q "SELECT calls, round(total_exec_time::numeric,1), round((total_exec_time/greatest(calls,1))::numeric,4), wal_records, left(regexp_replace(query, '\s+', ' ', 'g'), 60) FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND NOT toplevel ORDER BY total_exec_time DESC LIMIT 6"
q "SELECT 'time inside the batches, per apply_batch call: ' || round((sum(total_exec_time) FILTER (WHERE NOT toplevel) / nullif(sum(calls) FILTER (WHERE toplevel AND query LIKE '%apply_batch%'), 0))::numeric, 4) || ' ms in statements' FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
# Every statement, for a closer look: target/bench-stats/<label>.txt
mkdir -p target/bench-stats
q "SELECT toplevel, calls, round(total_exec_time::numeric,2), round((total_exec_time/greatest(calls,1))::numeric,4), rows, shared_blks_hit, shared_blks_read, wal_records, regexp_replace(query, '\s+', ' ', 'g') FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) ORDER BY toplevel DESC, total_exec_time DESC" > "target/bench-stats/$L.txt"
q "SELECT 'statements inside apply_batch per call: ' || round(sum(calls) FILTER (WHERE NOT toplevel)::numeric / nullif(sum(calls) FILTER (WHERE toplevel AND query LIKE '%apply_batch%'), 0), 1) FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
q "SELECT 'sequential scans: ' || coalesce(string_agg(relname || ' ' || seq_scan, ', ' ORDER BY relname) FILTER (WHERE seq_scan > 0), 'none') FROM pg_stat_user_tables WHERE schemaname = 'pgchat'"
kill -TERM $SRV; wait $SRV 2>/dev/null
