#!/usr/bin/env bash
# What counting costs (issue 18): this build, its /metrics scraped every second as Prometheus
# would, against an older build without metrics (BASE), alternating, RUNS times: PING 50x16
# and durable SENDs (chat, 500 users). Then the memory of idle connections at 10,000: plain
# on both builds, and TLS on this one.
# Prints replies or acks per second, p99, server CPU per reply or ack, and KiB per connection.
#
#   BASE=/path/to/old/chatd scripts/bench-metrics.sh      # needs target/release/chatd
#   BIN=... BASE=... RUNS=3 DURATION=10 CONNS=10000 scripts/bench-metrics.sh
#   ONLY=chat scripts/bench-metrics.sh     # one part: ping, chat or idle
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-target/release/chatd}"
BASE="${BASE:?BASE=<an older chatd binary>}"
RUNS="${RUNS:-3}"
DURATION="${DURATION:-10}"
CONNS="${CONNS:-10000}"
OUT="${OUT:-target/bench-metrics}"
ADMIN=127.0.0.1:19387
mkdir -p "$OUT"
for b in "$BIN" "$BASE"; do [ -x "$b" ] || { echo "no $b" >&2; exit 2; }; done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# start <binary> <dir> [flags...]: starts a server, sets PID, PORT, TLS_PORT.
start() {
    local bin="$1" dir="$2"; shift 2
    "$bin" serve --bind 127.0.0.1 --port 0 --http-port 0 --no-irc --db "sqlite://$dir/chatd.db" \
        --load-test-hashing "$@" > "$dir/stdout" 2> "$dir/stderr" &
    PID=$!
    PORT=""
    for _ in $(seq 100); do
        grep -q '^Store:' "$dir/stdout" 2>/dev/null && break
        sleep 0.1
    done
    PORT="$(grep -oE 'telnet 127\.0\.0\.1 [0-9]+' "$dir/stdout" | awk '{print $3}' | head -1)"
    TLS_PORT="$(grep -oE 'ncat --ssl 127\.0\.0\.1 [0-9]+' "$dir/stdout" | awk '{print $4}' | head -1 || true)"
    [ -n "$PORT" ] || { echo "the server did not start: $(cat "$dir/stderr")" >&2; kill "$PID"; exit 1; }
}

stop() { kill "$PID"; wait "$PID" 2>/dev/null || true; }

# run <name> <binary> <scrape: 0|1> <load args...>
run() {
    local name="$1" bin="$2" scrape="$3"; shift 3
    local dir; dir="$(mktemp -d)"
    if [ "$bin" = "$BIN" ]; then start "$bin" "$dir" --admin-addr "$ADMIN"; else start "$bin" "$dir"; fi
    local scraper=""
    if [ "$scrape" = 1 ]; then
        ( while sleep 1; do curl -s -o /dev/null "http://$ADMIN/metrics" || true; done ) &
        scraper=$!
    fi
    local before; before="$(cpu_ticks "$PID")"
    "$BIN" load "$@" --addr "127.0.0.1:$PORT" --json "$OUT/$name.json" > /dev/null || true
    local after; after="$(cpu_ticks "$PID")"
    [ -n "$scraper" ] && kill "$scraper" 2>/dev/null
    stop
    python3 - "$OUT/$name.json" "$((after - before))" "$name" <<'EOF'
import json, os, sys
report = json.load(open(sys.argv[1]))
ticks, name = int(sys.argv[2]), sys.argv[3]
run = report["run"]
hz = os.sysconf("SC_CLK_TCK")
cpu_us = ticks / hz * 1e6 / max(run["ok"], 1)
print(f"{name:22} {run['per_sec']:>10,.0f}/s  p99 {run['latency']['p99_us']:>7,.0f} µs  "
      f"{cpu_us:5.2f} µs CPU each  {'PASS' if report['passed'] else 'FAIL'}")
EOF
    rm -rf "$dir"
}

# idle <name> <binary> [tls]
idle() {
    local name="$1" bin="$2" tls="${3:-}"
    local dir; dir="$(mktemp -d)"
    local addr
    if [ -n "$tls" ]; then
        start "$bin" "$dir" --admin-addr "$ADMIN" --tls --tls-port 0 --https-port 0
        addr="127.0.0.1:$TLS_PORT"
    else
        if [ "$bin" = "$BIN" ]; then start "$bin" "$dir" --admin-addr "$ADMIN"; else start "$bin" "$dir"; fi
        addr="127.0.0.1:$PORT"
    fi
    "$BIN" load connections --addr "$addr" ${tls:+--tls} --conns "$CONNS" --hold 3 \
        --server-pid "$PID" --json "$OUT/$name.json" > /dev/null || true
    stop
    python3 - "$OUT/$name.json" "$name" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
m = report["memory"][0]
print(f"{sys.argv[2]:22} {report['connect']['opened']:>6} open  {m['per_conn_kib']:.2f} KiB/conn  "
      f"(RSS {m['before_kib']/1024:.1f} -> {m['holding_kib']/1024:.1f} MiB)  {'PASS' if report['passed'] else 'FAIL'}")
EOF
    rm -rf "$dir"
}

ONLY="${ONLY:-ping chat idle}"
echo "this build $BIN, base $BASE; $RUNS alternating runs of ${DURATION} s; load $(cut -d' ' -f1-3 /proc/loadavg)"
[[ " $ONLY " == *" ping "* ]] && for i in $(seq "$RUNS"); do
    run "ping-base-$i" "$BASE" 0 ping --conns 50 --pipeline 16 --duration "$DURATION"
    run "ping-this-$i" "$BIN" 1 ping --conns 50 --pipeline 16 --duration "$DURATION"
done
[[ " $ONLY " == *" chat "* ]] && for i in $(seq "$RUNS"); do
    run "chat-base-$i" "$BASE" 0 chat --users 500 --duration "$DURATION"
    run "chat-this-$i" "$BIN" 1 chat --users 500 --duration "$DURATION"
done
[[ " $ONLY " == *" idle "* ]] && for i in $(seq "$RUNS"); do
    idle "idle-base-$i" "$BASE"
    idle "idle-plain-$i" "$BIN"
    idle "idle-tls-$i" "$BIN" tls
done
true
