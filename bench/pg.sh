#!/usr/bin/env bash
# A private PostgreSQL for benchmarks, with pg_stat_statements loaded, so that figures
# never come from (or disturb) the machine's own server.
#
#   bench/pg.sh start    # initdb if needed, start on 127.0.0.1:5433
#   bench/pg.sh stats    # statements and time per call, sequential scans per table
#   bench/pg.sh reset    # zero pg_stat_statements and the table counters
#   bench/pg.sh stop
#
# Settings are PostgreSQL's defaults (shared_buffers 128 MB, synchronous_commit on,
# autovacuum on), as a small deployment would run it, plus track = all so that the
# statements inside pgchat.apply_batch are counted too.
set -euo pipefail
DIR=${PGCHAT_BENCH_PGDATA:-/tmp/pgchat-bench-pg}
PORT=${PGCHAT_BENCH_PGPORT:-5433}
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
psql_() { psql -X -h 127.0.0.1 -p "$PORT" -U postgres "$@"; }

case "${1:-start}" in
start)
  if [ ! -f "$DIR/PG_VERSION" ]; then
    mkdir -p "$DIR"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$DIR"
    chmod 700 "$DIR"
    as_pg "$BIN/initdb" -D "$DIR" -U postgres --auth=trust -E UTF8 --no-locale >/dev/null
  fi
  # Already running (a second start, or a soak after a benchmark): just say where.
  if as_pg "$BIN/pg_ctl" -D "$DIR" status >/dev/null 2>&1; then
    echo "postgres://postgres@127.0.0.1:$PORT/pgchat"
    exit 0
  fi
  as_pg "$BIN/pg_ctl" -D "$DIR" -l "$DIR/log" -w start -o "-p $PORT -k $DIR \
    -c listen_addresses=127.0.0.1 -c shared_preload_libraries=pg_stat_statements \
    -c pg_stat_statements.track=all -c max_connections=100" >/dev/null
  psql_ -d postgres -qc "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" 2>/dev/null || true
  echo "postgres://postgres@127.0.0.1:$PORT/pgchat"
  ;;
stats)
  db=${2:-pgchat}
  psql_ -d "$db" -qc "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >/dev/null
  psql_ -d "$db" -c "SELECT calls, round(total_exec_time::numeric, 1) AS ms,
      round((total_exec_time / greatest(calls, 1))::numeric, 3) AS ms_per_call, rows,
      toplevel AS top, left(regexp_replace(query, '\s+', ' ', 'g'), 90) AS statement
    FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
    ORDER BY total_exec_time DESC LIMIT 25"
  psql_ -d "$db" -c "SELECT relname, seq_scan, seq_tup_read, idx_scan, n_live_tup
    FROM pg_stat_user_tables WHERE schemaname = 'pgchat' ORDER BY relname"
  ;;
reset)
  db=${2:-pgchat}
  psql_ -d "$db" -qc "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >/dev/null
  psql_ -d "$db" -qAtc "SELECT pg_stat_statements_reset(); SELECT pg_stat_reset();" >/dev/null
  ;;
stop)
  as_pg "$BIN/pg_ctl" -D "$DIR" -m fast -w stop >/dev/null
  ;;
*)
  echo "usage: bench/pg.sh start|stats [db]|reset [db]|stop" >&2
  exit 2
  ;;
esac
