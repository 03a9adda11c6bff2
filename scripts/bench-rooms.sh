#!/usr/bin/env bash
# The room benchmarks of BENCHMARKS.md: `chatd load rooms` against one SQLite node, then two
# PostgreSQL nodes, for
#   1. one room of MEMBERS members with SENDERS senders at RATE messages/s in all, and
#   2. ROOMS rooms of SMALL members each, at SMALL_RATE messages/s in all,
# printing each run's report, and the server CPU time per delivery (from /proc, over the run).
#
# Usage: scripts/bench-rooms.sh            # ~3 minutes
# Environment: MEMBERS (1000), SENDERS (10), RATE (100), ROOMS (100), SMALL (20),
#              SMALL_RATE (1000), DURATION (10), OUT (target/bench-rooms),
#              CHATD_BENCH_DATABASE_URL (postgres://postgres@127.0.0.1:5432/postgres: the
#              server to make a scratch database on; it is dropped at the end).
# Everything goes to 127.0.0.0/8. Nodes started here are killed by pid on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

MEMBERS=${MEMBERS:-1000}
SENDERS=${SENDERS:-10}
RATE=${RATE:-100}
ROOMS=${ROOMS:-100}
SMALL=${SMALL:-20}
SMALL_RATE=${SMALL_RATE:-1000}
DURATION=${DURATION:-10}
OUT=${OUT:-target/bench-rooms}
ADMIN=${CHATD_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
DB="chatd_rooms_bench_$$"

cargo build --release --quiet
BIN="${CARGO_TARGET_DIR:-target}/release/chatd"
mkdir -p "$OUT"
TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    psql -q "$ADMIN" -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true
    rm -rf "$TMP"
}
trap cleanup EXIT
log() { printf '%s  %s\n' "$(date +%T)" "$*" >&2; }

# start_node NAME IP PORT DB: a node, waited for; its pid in NODE.
start_node() {
    RUST_LOG=warn "$BIN" serve --bind "$2" --port "$3" --no-http --db "$4" --node-id "$1" \
        --load-test-hashing --max-send-rate 0 --max-connections 20000 >"$TMP/$1.out" 2>"$TMP/$1.err" &
    NODE=$!
    PIDS+=("$NODE")
    for _ in $(seq 100); do
        grep -q '^Store:' "$TMP/$1.out" 2>/dev/null && return
        sleep 0.1
    done
    cat "$TMP/$1.err" >&2
    exit 1
}

# cpu_ticks PID...: the processes' user+system CPU time so far, in clock ticks.
cpu_ticks() {
    local total=0
    for pid in "$@"; do
        read -r -a stat <"/proc/$pid/stat"
        total=$((total + stat[13] + stat[14]))
    done
    echo "$total"
}

# run NAME PIDS ARGS...: one `chatd load rooms` run with the server CPU it cost.
run() {
    local name=$1 pids=$2
    shift 2
    log "$name"
    local before after
    before=$(cpu_ticks $pids)
    # A run that fails its verdict is reported, not the end of the benchmark.
    "$BIN" load rooms --duration "$DURATION" --json "$OUT/$name.json" "$@" | tee "$OUT/$name.txt" || true
    after=$(cpu_ticks $pids)
    python3 - "$OUT/$name.json" $((after - before)) "$(getconf CLK_TCK)" <<'PY' | tee -a "$OUT/$name.txt"
import json, sys
report = json.load(open(sys.argv[1]))
ticks, hz = int(sys.argv[2]), int(sys.argv[3])
delivered = report["delivery"]["delivered"]
cpu = ticks / hz
print(f"server CPU                 {cpu:.2f} s for {delivered} deliveries: "
      f"{cpu * 1e6 / max(delivered, 1):.2f} us per delivery (setup included)")
PY
}

log "SQLite, one node"
start_node sqlite 127.0.0.1 8301 "sqlite://$TMP/rooms.db"
ONE=$NODE
run sqlite-1x$MEMBERS "$ONE" --addr 127.0.0.1:8301 --rooms 1 --members "$MEMBERS" --senders "$SENDERS" --rate "$RATE"
run sqlite-${ROOMS}x$SMALL "$ONE" --addr 127.0.0.1:8301 --rooms "$ROOMS" --members "$SMALL" --senders 1 --rate "$SMALL_RATE"
kill "$ONE"; wait "$ONE" 2>/dev/null || true

log "PostgreSQL, two nodes"
psql -q "$ADMIN" -c "CREATE DATABASE $DB" >/dev/null
URL="${ADMIN%/*}/$DB"
start_node node-1 127.0.0.11 8311 "$URL"
N1=$NODE
start_node node-2 127.0.0.12 8312 "$URL"
N2=$NODE
ADDRS=(--addr 127.0.0.11:8311 --addr 127.0.0.12:8312)
run pg2-1x$MEMBERS "$N1 $N2" "${ADDRS[@]}" --rooms 1 --members "$MEMBERS" --senders "$SENDERS" --rate "$RATE"
run pg2-${ROOMS}x$SMALL "$N1 $N2" "${ADDRS[@]}" --rooms "$ROOMS" --members "$SMALL" --senders 1 --rate "$SMALL_RATE"
log "reports in $OUT"
