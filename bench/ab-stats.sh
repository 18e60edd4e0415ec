#!/usr/bin/env bash
# bench/ab-stats.sh <binary> <db> <label> [rate]: a DM run (500/s unless told) for 15 s on the bench
# cluster (bench/pg.sh); prints delivery latency, the workers' CPU (utime + stime from /proc) and
# PostgreSQL's time per top-level statement (pg_stat_statements).
B=$1; DB=$2; L=$3; R=${4:-500}
cd "$(dirname "$0")/.."
export DATABASE_URL=postgres://postgres@127.0.0.1:5433/$DB JWT_SECRET=bench-compare-secret-0123456789abcdef PGCHAT_RATE_LIMIT_PER_SEC=100000 PGCHAT_RATE_LIMIT_BURST=100000 PGCHAT_CONFIG=/nonexistent PORT=3100
setsid $B serve --workers 2 --listen per-worker > /tmp/srv-$L.log 2>&1 < /dev/null & SRV=$!
for i in $(seq 60); do curl -sf localhost:3101/ready >/dev/null && break; sleep 1; done
p0=$(curl -s localhost:3100/health | python3 -c 'import sys,json;print(json.load(sys.stdin)["pid"])')
p1=$(curl -s localhost:3101/health | python3 -c 'import sys,json;print(json.load(sys.stdin)["pid"])')
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
bench/pg.sh reset $DB
c0=$(( $(cpu $p0) + $(cpu $p1) ))
$B bench --quiet --url ws://127.0.0.1:3100/ws --url ws://127.0.0.1:3101/ws dm --rate $R --pairs 200 --cross 0.5 --duration 15s 2>&1 | grep -E "send → delivery|errors"
c1=$(( $(cpu $p0) + $(cpu $p1) ))
echo "$L workers CPU: $(( (c1 - c0) * 10 )) ms for $(( R * 15 )) sends"
psql -X -h 127.0.0.1 -p 5433 -U postgres -d $DB -At -F' | ' -c "SELECT calls, round(total_exec_time::numeric,1), round((total_exec_time/greatest(calls,1))::numeric,3), left(regexp_replace(query, '\s+', ' ', 'g'), 70) FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND toplevel ORDER BY total_exec_time DESC LIMIT 8"
kill -TERM $SRV; wait $SRV 2>/dev/null
