#!/usr/bin/env bash
# End-to-end figures of docs/performance.md ("End to end with `sagalog bench`", issue 13): a
# real server and `sagalog bench` on loopback, 3-step `noop` sagas on a `null` participant,
# sync = "always". Prints, in order: the fsync probe, C=1 for 20 s, C=64 for 30 s, the server's
# RSS at 100k/250k/500k/1M finished sagas, and C=64 for 20 s with RUST_LOG=info and =warn (the
# cost of the INFO line per submit and per finish).
#
#   cargo build --release --no-default-features
#   SAGALOG_BIN=$CARGO_TARGET_DIR/release/sagalog benches/end_to_end.sh
#
# Scratch data goes under $SAGALOG_BENCH_DIR (default: a new directory in /tmp; never a tmpfs).
# Ports 50061/50062 must be free. Takes about 12 minutes on 2 vCPUs.
#
# SAGALOG_BENCH_RETAIN=N sets `[index] retention_sagas_max = N` (the index keeps the last N
# finished sagas), SAGALOG_BENCH_CACHE=BYTES `[index] cache_bytes_max`; SAGALOG_BENCH_ONLY=rss
# runs the RSS curve alone.
set -euo pipefail
BIN=${SAGALOG_BIN:-${CARGO_TARGET_DIR:-target}/release/sagalog}
[ -x "$BIN" ] || { echo "no sagalog binary at $BIN: build with cargo build --release --no-default-features" >&2; exit 2; }
WORK=${SAGALOG_BENCH_DIR:-$(mktemp -d /tmp/sagalog-e2e-XXXXXX)}
mkdir -p "$WORK"
cat > "$WORK/bench.toml" <<'TOML'
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
if [ -n "${SAGALOG_BENCH_RETAIN:-}${SAGALOG_BENCH_CACHE:-}" ]; then
  echo '[index]' >> "$WORK/bench.toml"
  [ -z "${SAGALOG_BENCH_RETAIN:-}" ] || echo "retention_sagas_max = $SAGALOG_BENCH_RETAIN" >> "$WORK/bench.toml"
  [ -z "${SAGALOG_BENCH_CACHE:-}" ] || echo "cache_bytes_max = $SAGALOG_BENCH_CACHE" >> "$WORK/bench.toml"
fi
ONLY=${SAGALOG_BENCH_ONLY:-all}
PID=
stop() { [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null; PID=; }
trap stop EXIT
serve() { # $1: RUST_LOG
  stop; rm -rf "$WORK/d"
  RUST_LOG=$1 "$BIN" serve --data-dir "$WORK/d" --config "$WORK/bench.toml" > "$WORK/server-$1.log" 2>&1 &
  PID=$!; sleep 3
}
probe() { python3 - "$WORK/probe" <<'PY'
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT); l = []
for _ in range(200):
    t = time.perf_counter(); os.write(fd, b"x" * 4096); os.fdatasync(fd); l.append(time.perf_counter() - t)
l.sort(); print("fsync probe: 4 KiB write+fdatasync p50 %.0f us p90 %.0f us" % (l[100] * 1e6, l[180] * 1e6))
PY
}
bench() { "$BIN" bench --server http://127.0.0.1:50061 --metrics http://127.0.0.1:50062/metrics --server-pid "$PID" "$@"; }
summary() { python3 -c 'import json,sys;d=json.load(open(sys.argv[1]));print(d["sagas"],"sagas,",round(d["sagas_per_second"]),"/s, latency ms",d["latency_ms"],", server",{k:v for k,v in d["server"].items() if "_" in k},", errors",d["errors"])' "$1"; }
sagas() { python3 -c 'import json,sys;print(sum(json.load(open(f))["sagas"] for f in sys.argv[1:]))' "$@"; }
rss() { awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' "/proc/$PID/status"; }

serve info
echo "sagalog $("$BIN" --version | cut -d' ' -f2), server pid $PID"; probe
total=0
if [ "$ONLY" = all ]; then
  echo "== C=1, 20 s"; bench --clients 1 --duration 20s --json > "$WORK/c1.json"; summary "$WORK/c1.json"; probe
  echo "== C=64, 30 s"; bench --clients 64 --duration 30s --json > "$WORK/c64.json"; summary "$WORK/c64.json"; probe
  total=$(sagas "$WORK/c1.json" "$WORK/c64.json")
fi
echo "== RSS, C=64 until 1M finished sagas${SAGALOG_BENCH_RETAIN:+, retention_sagas_max = $SAGALOG_BENCH_RETAIN}${SAGALOG_BENCH_CACHE:+, cache_bytes_max = $SAGALOG_BENCH_CACHE}"
i=0
for target in 100000 250000 500000 1000000; do
  if [ "$total" -lt "$target" ]; then
    i=$((i + 1)); bench --clients 64 --sagas $((target - total)) --duration 1h --json > "$WORK/mem$i.json"
    total=$((total + $(sagas "$WORK/mem$i.json")))
  fi
  echo "at $total finished sagas: RSS $(rss)"
done
grep -E "VmHWM" "/proc/$PID/status"; du -sh "$WORK/d/index" "$WORK/d/journal"
[ "$ONLY" = all ] || exit 0
for level in info warn; do
  serve "$level"
  echo "== C=64, 20 s, RUST_LOG=$level"; bench --clients 64 --duration 20s --json > "$WORK/log-$level.json"; summary "$WORK/log-$level.json"
done
