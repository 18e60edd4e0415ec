#!/usr/bin/env bash
# A soak of mixed load against a 3-worker pgchat on the private benchmark PostgreSQL:
# direct messages across workers, group fan-out, a churn of handshakes and a crowd of idle
# sockets opened and closed, all at once, for SOAK_DURATION (default 10m). Every 10 s it
# samples each worker's resident memory and open file descriptors.
#
#   bench/soak.sh                  # needs cargo; starts bench/pg.sh and the server itself
#   SOAK_DURATION=2m bench/soak.sh
#
# It prints the samples' first, last and highest values per worker and each load's
# verdict, and exits 0 only if no load lost or refused anything (the bench's own exit
# code: 0 means every acked message reached every recipient, in order, without gaps).
# Samples go to target/soak/samples.csv and each load's report to target/soak/*.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${SOAK_DURATION:-10m}
OUT=target/soak
mkdir -p "$OUT"
rm -f "$OUT"/*.txt "$OUT"/samples.csv

cargo build --release -q
B=./target/release/pgchat
DB=$(bench/pg.sh start)
psql -X -q "${DB%/pgchat}/postgres" -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS pgchat_soak WITH (FORCE)"
export DATABASE_URL=${DB%/pgchat}/pgchat_soak
# The loads run far above one user's default rate; everything else is the defaults.
export PGCHAT_RATE_LIMIT_PER_SEC=100000 PGCHAT_RATE_LIMIT_BURST=100000
export JWT_SECRET=${JWT_SECRET:-soak-secret-soak-secret-soak-secret-0123}
export PGCHAT_LOG_FORMAT=text RUST_LOG=warn

$B serve --workers 3 --listen per-worker >"$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for port in 3000 3001 3002; do
  for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$port/ready" >/dev/null && break
    sleep 0.2
  done
done
W="--url ws://127.0.0.1:3000/ws --url ws://127.0.0.1:3001/ws --url ws://127.0.0.1:3002/ws"
secs=$(python3 -c "import re,sys; m=re.fullmatch(r'(\d+)(s|m|h)', '$DURATION'); print(int(m[1])*{'s':1,'m':60,'h':3600}[m[2]])")
end=$(( $(date +%s) + secs ))

sample() {
  echo "t,worker,rss_kib,fds" >"$OUT/samples.csv"
  local t0
  t0=$(date +%s)
  while kill -0 "$SERVER" 2>/dev/null && [ "$(date +%s)" -le $((end + 15)) ]; do
    for pid in $(pgrep -P "$SERVER"); do
      rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
      fds=$(ls "/proc/$pid/fd" 2>/dev/null | wc -l)
      echo "$(( $(date +%s) - t0 )),$pid,$rss,$fds" >>"$OUT/samples.csv"
    done
    sleep 10
  done
}

# Each load writes its report; `|| echo` keeps the others going when one fails.
$B bench $W --quiet dm --rate 300 --pairs 150 --cross 0.67 --duration "$DURATION" \
  >"$OUT/dm.txt" 2>&1 || echo "exit $?" >>"$OUT/dm.txt" &
DM=$!
$B bench $W --quiet group --size 50 --groups 10 --rate 30 --duration "$DURATION" \
  >"$OUT/group.txt" 2>&1 || echo "exit $?" >>"$OUT/group.txt" &
GROUP=$!
churn() {
  local round=0
  while [ "$(date +%s)" -lt "$end" ]; do
    round=$((round + 1))
    # A failing round is recorded (and fails the soak) but does not spin: wait a little.
    $B bench $W --quiet connect --count 500 --concurrency 50 >>"$OUT/connect.txt" 2>&1 ||
      { echo "round $round: exit $?" >>"$OUT/connect.txt"; sleep 5; }
    $B bench $W --quiet idle --connections 1500 --hold 20s >>"$OUT/idle.txt" 2>&1 ||
      { echo "round $round: exit $?" >>"$OUT/idle.txt"; sleep 5; }
  done
}
churn &
CHURN=$!
sample &
SAMPLER=$!

wait $DM $GROUP $CHURN
kill $SAMPLER 2>/dev/null || true
wait $SAMPLER 2>/dev/null || true
# One last sample 15 s after the load, once its sockets have closed: back to baseline?
sleep 15
for pid in $(pgrep -P "$SERVER"); do
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
  fds=$(ls "/proc/$pid/fd" 2>/dev/null | wc -l)
  echo "after,$pid,$rss,$fds" >>"$OUT/samples.csv"
done

python3 - "$OUT/samples.csv" <<'EOF'
import csv, sys, collections
rows = list(csv.DictReader(open(sys.argv[1])))
by = collections.defaultdict(list)
after = {}
for r in rows:
    if r["t"] == "after":
        after[r["worker"]] = (int(r["rss_kib"]) / 1024, int(r["fds"]))
    else:
        by[r["worker"]].append((int(r["t"]), int(r["rss_kib"]) / 1024, int(r["fds"])))
# Under load: the first sample a minute in, the last one, and the highest; then after.
print("worker   rss MiB: before  1 min  last  max  after    fds: before  max  after")
for w, s in sorted(by.items()):
    minute = next((x for x in s if x[0] >= 60), s[-1])
    rss = [x[1] for x in s]
    fds = [x[2] for x in s]
    a = after.get(w, (float("nan"), -1))
    print(f"{w:>7}  {s[0][1]:13.1f} {minute[1]:6.1f} {s[-1][1]:5.1f} {max(rss):5.1f} {a[0]:6.1f}"
          f"    {fds[0]:11d} {max(fds):5d} {a[1]:6d}")
EOF
status=0
for f in dm group connect idle; do
  echo "== $f"
  grep -E "lost|errors|refused|exit|delivered|acked|sent" "$OUT/$f.txt" | tail -n 8 || true
  grep -q "exit" "$OUT/$f.txt" && status=1
done
exit $status
