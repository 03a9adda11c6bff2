#!/usr/bin/env bash
# What --trace costs: PING 50x16 against the same build with tracing off, on but filtered out
# (--trace-addr of an address nobody connects from), and on for every line (read by grep, as
# fast as a pipe takes it), alternating, RUNS times.
# Prints replies/s, p99 and server CPU per reply, and the drops the trace reported.
#
#   scripts/bench-trace.sh                 # needs target/release/chatd
#   BIN=... RUNS=3 DURATION=10 scripts/bench-trace.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-target/release/chatd}"
RUNS="${RUNS:-3}"
DURATION="${DURATION:-10}"
OUT="${OUT:-target/bench-trace}"
mkdir -p "$OUT"
[ -x "$BIN" ] || { echo "no $BIN (cargo build --release)" >&2; exit 2; }

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run_one() {  # name, then chatd serve's extra flags
    local name="$1"; shift
    local dir; dir="$(mktemp -d)"
    # Only the banner's address and the drop counts are kept of what it prints (the trace
    # lines themselves go through grep, as they would go to a terminal).
    "$BIN" serve --bind 127.0.0.1 --port 0 --no-http --no-irc --db "sqlite://$dir/chatd.db" "$@" \
        2> "$dir/stderr" > >(grep --line-buffered -E 'telnet 127|lines dropped' > "$dir/stdout") &
    local pid=$!
    local port=""
    for _ in $(seq 100); do
        port="$(grep -oE 'telnet 127\.0\.0\.1 [0-9]+' "$dir/stdout" 2>/dev/null | awk '{print $3}' | head -1 || true)"
        [ -n "$port" ] && break
        sleep 0.1
    done
    [ -n "$port" ] || { echo "$name: the server did not start" >&2; kill "$pid"; exit 1; }
    local before; before="$(cpu_ticks "$pid")"
    "$BIN" load ping --addr "127.0.0.1:$port" --conns 50 --pipeline 16 --duration "$DURATION" \
        --json "$OUT/$name.json" > /dev/null
    local after; after="$(cpu_ticks "$pid")"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    local dropped; dropped="$( (grep -oE 'trace: [0-9,]+ lines dropped' "$dir/stdout" || true) \
        | awk '{gsub(",", "", $2); s += $2} END {print s + 0}')"
    python3 - "$OUT/$name.json" "$((after - before))" "$dropped" "$name" <<'EOF'
import json, os, sys
report = json.load(open(sys.argv[1]))
ticks, dropped, name = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
run = report["run"]
hz = os.sysconf("SC_CLK_TCK")
cpu_us = ticks / hz * 1e6 / max(run["ok"], 1)
print(f"{name:16} {run['per_sec']:>10,.0f} replies/s  p99 {run['latency']['p99_us']:>7,.0f} µs  "
      f"{cpu_us:5.2f} µs CPU/reply  {dropped:>9,} trace lines dropped")
EOF
    rm -rf "$dir"
}

echo "PING 50x16, ${DURATION} s each, $RUNS alternating runs; load $(cut -d' ' -f1-3 /proc/loadavg)"
for run in $(seq "$RUNS"); do
    run_one "off-$run"
    run_one "filtered-$run" --trace --trace-addr 192.0.2.1
    run_one "all-$run" --trace
done
