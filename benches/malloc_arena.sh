#!/usr/bin/env bash
# The cost of one malloc arena (docs/performance.md, "Memory under named limits"): a real
# server on a `null` participant, `sagalog bench` at C=64 for 15 s, with and without
# MALLOC_ARENA_MAX=1 in the server's environment, twice each, alternating; prints sagas/s and
# server CPU per saga. Ports 50061/50062 must be free.
#
#   cargo build --release --no-default-features
#   SAGALOG_BIN=$CARGO_TARGET_DIR/release/sagalog benches/malloc_arena.sh
set -euo pipefail
BIN=${SAGALOG_BIN:-${CARGO_TARGET_DIR:-target}/release/sagalog}
[ -x "$BIN" ] || { echo "no sagalog binary at $BIN: build with cargo build --release --no-default-features" >&2; exit 2; }
W=$(mktemp -d /tmp/arena-XXXXXX)
cat > $W/bench.toml <<'TOML'
[journal]
sync = "always"
[server]
listen = "127.0.0.1:50061"
http_listen = "127.0.0.1:50062"
anonymous = "admin"
[participants.null]
kind = "null"
[actions.noop]
participant = "null"
forward = { noop = true }
compensate = { noop = true }
TOML
for round in 1 2; do
  for arena in default 1; do
    rm -rf $W/d
    if [ $arena = 1 ]; then MALLOC_ARENA_MAX=1 RUST_LOG=warn $BIN serve --data-dir $W/d --config $W/bench.toml > $W/log 2>&1 & else RUST_LOG=warn $BIN serve --data-dir $W/d --config $W/bench.toml > $W/log 2>&1 & fi
    PID=$!; sleep 3
    $BIN bench --server http://127.0.0.1:50061 --metrics http://127.0.0.1:50062/metrics --server-pid $PID --clients 64 --duration 15s --json > $W/r.json
    python3 -c 'import json,sys;d=json.load(open(sys.argv[1]));s=d["server"];print(sys.argv[2], round(d["sagas_per_second"]),"sagas/s", {k:v for k,v in s.items() if "cpu" in k})' $W/r.json "arena=$arena"
    kill $PID; wait $PID 2>/dev/null || true
  done
done
rm -rf $W
