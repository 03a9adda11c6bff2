#!/usr/bin/env bash
# The cluster benchmarks of BENCHMARKS.md: NODES chatd nodes on one PostgreSQL, all on
# 127.0.0.x of this machine, loaded by `chatd load` in several generator processes.
#
#   1. CONNS idle connections held HOLD seconds, spread over the nodes (--procs PROCS), with
#      each node's RSS over the run;
#   2. a two-node chat run (USERS users at RATE SENDs/s) with same-node and cross-node
#      delivery latency.
#
# Usage: scripts/bench-cluster.sh           # ~5 minutes
# Environment: NODES (6), CONNS (102000), PROCS (6), HOLD (10), USERS (200), RATE (2000),
#              DURATION (10), OUT (target/bench-cluster),
#              CHATD_BENCH_DATABASE_URL (postgres://postgres@127.0.0.1:5432/postgres: the
#              server to make a scratch database on; it is dropped at the end).
# Everything goes to 127.0.0.0/8. Nodes started here are killed by pid on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

NODES=${NODES:-6}
CONNS=${CONNS:-102000}
PROCS=${PROCS:-6}
HOLD=${HOLD:-10}
USERS=${USERS:-200}
RATE=${RATE:-2000}
DURATION=${DURATION:-10}
OUT=${OUT:-target/bench-cluster}
ADMIN=${CHATD_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
DB="chatd_bench_$$"

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

psql -q "$ADMIN" -c "CREATE DATABASE $DB" >/dev/null
URL="${ADMIN%/*}/$DB"

# start_nodes N: nodes 1..N on 127.0.0.1(0+i), port 8000+i; sets ADDRS and NODE_PIDS.
start_nodes() {
    ADDRS=() NODE_PIDS=()
    for i in $(seq "$1"); do
        local ip="127.0.0.$((10 + i))" port=$((8000 + i)) dir="$TMP/node$i"
        mkdir -p "$dir"
        RUST_LOG=warn "$BIN" serve --bind "$ip" --port "$port" --no-http --db "$URL" --node-id "node-$i" \
            >"$dir/out" 2>"$dir/err" &
        PIDS+=("$!") NODE_PIDS+=("$!") ADDRS+=("$ip:$port")
    done
    for i in $(seq "$1"); do
        for _ in $(seq 100); do
            grep -q '^Store:' "$TMP/node$i/out" 2>/dev/null && break
            sleep 0.1
        done
        grep -q '^Store:' "$TMP/node$i/out" || { cat "$TMP/node$i/err" >&2; echo "node $i did not start" >&2; exit 1; }
    done
}

stop_nodes() {
    for pid in "${NODE_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${NODE_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}

log "machine: $(nproc) cores, kernel $(uname -r), open files $(ulimit -n); load before: $(cut -d' ' -f1-3 /proc/loadavg)"

# 1. Idle connections over NODES fresh nodes.
start_nodes "$NODES"
addr_args=() pid_args=()
for a in "${ADDRS[@]}"; do addr_args+=(--addr "$a"); done
for p in "${NODE_PIDS[@]}"; do pid_args+=(--server-pid "$p"); done
log "connections: $CONNS over $NODES nodes, $PROCS generator processes (load $(cut -d' ' -f1 /proc/loadavg))"
"$BIN" load connections "${addr_args[@]}" "${pid_args[@]}" --conns "$CONNS" --procs "$PROCS" --hold "$HOLD" \
    --connect-timeout 30 --json "$OUT/connections.json" --plot "$OUT/connections-cluster.svg" |
    tee "$OUT/connections.txt" || log "  (the run reported a failed rule)"
log "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
stop_nodes

# 2. Chat over two fresh nodes: same-node and cross-node delivery.
start_nodes 2
log "chat: $USERS users over 2 nodes at $RATE SENDs/s for $DURATION s (load $(cut -d' ' -f1 /proc/loadavg))"
"$BIN" load chat --addr "${ADDRS[0]}" --addr "${ADDRS[1]}" --server-pid "${NODE_PIDS[0]}" \
    --server-pid "${NODE_PIDS[1]}" --users "$USERS" --rate "$RATE" --duration "$DURATION" \
    --json "$OUT/chat.json" --plot "$OUT/chat-two-nodes.svg" | tee "$OUT/chat.txt" ||
    log "  (the run reported a failed rule)"
log "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
stop_nodes
log "results in $OUT"
