#!/usr/bin/env bash
# bench/ab-dm.sh <binary A> <db A> <binary B> <db B> [pairs=3] [rate=500]: `dm` runs of two
# builds, each on its own copy of the same grown data, alternating A B, B A, A B, ... (so
# that drift in the machine or in the databases favours neither), each through
# bench/ab-stats.sh (a fresh 2-worker server, statistics reset, DURATION long, 20s unless
# told). Prints each run's report, and the machine's load average before it.
set -u
A=$1; DA=$2; B=$3; DB_=$4; N=${5:-3}; R=${6:-500}
cd "$(dirname "$0")/.."
export DURATION=${DURATION:-20s}
for i in $(seq "$N"); do
  if [ $((i % 2)) = 1 ]; then order="A B"; else order="B A"; fi
  for L in $order; do
    if [ $L = A ]; then bin=$A; db=$DA; else bin=$B; db=$DB_; fi
    echo "== $L run $i $(date -u +%T) ($bin on $db)"
    bench/ab-stats.sh "$bin" "$db" "$L$i" "$R"
  done
done
