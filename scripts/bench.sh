#!/usr/bin/env bash
# Benchmarks chatd with `chatd load` against the figures of issue 4, and Redis (the peer) with
# the same tool in the same run where Redis is at hand: chatd and Redis alternate, RUNS runs
# each, and the summary gives medians with min-max and the chatd/Redis ratio.
#
# Usage: scripts/bench.sh            # the full bench (~12 min on 2 cores)
#        QUICK=1 scripts/bench.sh    # a short rehearsal (~2 min): 1 run, small sizes
#        BASELINE=path/to/old/chatd NO_REDIS=1 scripts/bench.sh
#                                    # this build against an older chatd binary, side by side
#                                    # (the baseline runs every row too, alternating with this
#                                    # build; the generator is this build's for both)
# Environment: RUNS (3), DURATION (seconds per timed run, 10), CONNS (idle connections, 19000),
#              AUTH_CONNS (2000), OUT (results directory, target/bench), REDIS_PORT (6379),
#              BASELINE (another chatd binary to compare with), NO_REDIS (skip Redis).
# Everything goes to 127.0.0.1 only. Servers started here are killed by pid on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${QUICK:-}" ]]; then
    RUNS=${RUNS:-1} DURATION=${DURATION:-2} CONNS=${CONNS:-2000} AUTH_CONNS=${AUTH_CONNS:-100}
fi
# chatd's worker threads: one, like Redis, since the generator takes the other core here.
# CHATD_THREADS=2 scripts/bench.sh measures the default (one per core).
export CHATD_THREADS=${CHATD_THREADS:-1}
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-19000}
AUTH_CONNS=${AUTH_CONNS:-2000}
OUT=${OUT:-target/bench}
REDIS_PORT=${REDIS_PORT:-6379}

cargo build --release --quiet
BIN="${CARGO_TARGET_DIR:-target}/release/chatd"
mkdir -p "$OUT/json" "$OUT/plots"
rm -f "$OUT"/json/*.json
TMP=$(mktemp -d)

# Every process started here, by pid; killed on exit, whatever happens.
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT

log() { printf '%s  %s\n' "$(date +%T)" "$*" >&2; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_chatd NAME [BINARY]: a chatd (this build's unless BINARY) on a fresh database; sets
# CHATD_PID, CHATD_ADDR, CHATD_HTTP.
start_chatd() {
    local dir="$TMP/$1" bin=${2:-$BIN}
    mkdir -p "$dir"
    RUST_LOG=warn "$bin" serve --bind 127.0.0.1 --port 0 --http-port 0 \
        --db "sqlite://$dir/chatd.db" >"$dir/out" 2>"$dir/err" &
    CHATD_PID=$!
    PIDS+=("$CHATD_PID")
    for _ in $(seq 100); do
        grep -q '^Store:' "$dir/out" 2>/dev/null && break
        sleep 0.1
    done
    CHATD_ADDR=$(awk '$1 == "telnet" && $2 == "127.0.0.1" { print $2 ":" $3; exit }' "$dir/out")
    CHATD_HTTP=$(sed -n 's|^  http://\(127\.0\.0\.1:[0-9]*\)/$|\1|p' "$dir/out" | head -n1)
    [[ -n "$CHATD_ADDR" && -n "$CHATD_HTTP" ]] || { cat "$dir/err" >&2; echo "chatd did not start" >&2; exit 1; }
}

stop() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# start_redis: a Redis of our own on a spare port, room for $CONNS clients, no persistence;
# sets OWN_REDIS_PID and OWN_REDIS_ADDR. Protected mode would refuse the clients that come
# from 127.0.0.2-250 (the spread source addresses); it only listens on 127.0.0.1 anyway.
start_redis() {
    local port
    port=$(free_port)
    redis-server --port "$port" --bind 127.0.0.1 --protected-mode no --save '' --appendonly no --daemonize no \
        --maxclients $((CONNS + 500)) --loglevel warning >"$TMP/redis-$port.log" 2>&1 &
    OWN_REDIS_PID=$!
    PIDS+=("$OWN_REDIS_PID")
    OWN_REDIS_ADDR="127.0.0.1:$port"
    for _ in $(seq 100); do
        redis-cli -p "$port" ping >/dev/null 2>&1 && return
        sleep 0.1
    done
    echo "redis-server did not start" >&2
    exit 1
}

# load ROW TARGET RUN ARGS...: one `chatd load` run, its JSON kept as ROW.TARGET.RUN.json.
load() {
    local row=$1 target=$2 run=$3
    shift 3
    local plot=()
    [[ "$run" == "$RUNS" ]] && plot=(--plot "$OUT/plots/$row-$target.svg")
    log "$row $target run $run (load $(cut -d' ' -f1 /proc/loadavg)): chatd load $*"
    "$BIN" load "$@" --json "${plot[@]}" >"$OUT/json/$row.$target.$run.json" ||
        log "  (the run reported a failed check; see $OUT/json/$row.$target.$run.json)"
}

# Redis as the peer: the one on $REDIS_PORT if it answers, else one of our own.
REDIS=""
if [[ -z "${NO_REDIS:-}" ]] && command -v redis-server >/dev/null; then
    if redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; then
        REDIS="127.0.0.1:$REDIS_PORT"
        REDIS_VERSION=$(redis-cli -p "$REDIS_PORT" info server | sed -n 's/^redis_version:\(.*\)\r$/\1/p')
    else
        start_redis
        REDIS=$OWN_REDIS_ADDR
        REDIS_VERSION=$(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/')
    fi
fi
log "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
log "load before: $(cut -d' ' -f1-3 /proc/loadavg); Redis: ${REDIS:-none} ${REDIS_VERSION:-}"

# chatd's targets: this build ("chatd") and, with BASELINE, the older binary ("base").
TARGETS=(chatd)
[[ -n "${BASELINE:-}" ]] && TARGETS+=(base)
binary_of() { if [[ $1 == base ]]; then echo "$BASELINE"; else echo "$BIN"; fi; }
# start_target TARGET NAME: start_chatd for that target; its pid and addresses go into
# PID_<target>, ADDR_<target>, HTTP_<target>.
start_target() {
    start_chatd "$2-$1" "$(binary_of "$1")"
    printf -v "PID_$1" %s "$CHATD_PID"
    printf -v "ADDR_$1" %s "$CHATD_ADDR"
    printf -v "HTTP_$1" %s "$CHATD_HTTP"
}
pid_of() { local v="PID_$1"; echo "${!v}"; }
addr_of() { local v="ADDR_$1"; echo "${!v}"; }
http_of() { local v="HTTP_$1"; echo "${!v}"; }
stop_targets() { for t in "${TARGETS[@]}"; do stop "$(pid_of "$t")"; done; }

for t in "${TARGETS[@]}"; do
    start_target "$t" main
    log "$t: $(binary_of "$t") (pid $(pid_of "$t")) on $(addr_of "$t"), HTTP on $(http_of "$t")"
done

# 1. PING: connections x requests in flight per connection.
for shape in 1x1 50x1 50x16 500x1; do
    conns=${shape%x*} pipeline=${shape#*x}
    for run in $(seq "$RUNS"); do
        for t in "${TARGETS[@]}"; do
            load "ping-$shape" "$t" "$run" ping --addr "$(addr_of "$t")" --conns "$conns" --pipeline "$pipeline" \
                --duration "$DURATION"
        done
        if [[ -n "$REDIS" ]]; then
            load "ping-$shape" redis "$run" ping --addr "$REDIS" --conns "$conns" --pipeline "$pipeline" \
                --duration "$DURATION" --no-greeting --expect +PONG
        fi
    done
done
stop_targets

# 2. Idle connections held, and the accept rate (each connection answers a PING before it
#    counts), each run against a freshly started server so its RSS starts from scratch.
for run in $(seq "$RUNS"); do
    for t in "${TARGETS[@]}"; do
        start_target "$t" "idle-$run"
        load idle "$t" "$run" connections --addr "$(addr_of "$t")" --conns "$CONNS" --hold 3 \
            --server-pid "$(pid_of "$t")"
        load accept "$t" "$run" connections --addr "$(addr_of "$t")" --conns "$CONNS" --hold 0 --probe PING
        stop "$(pid_of "$t")"
    done
    if [[ -n "$REDIS" ]]; then
        start_redis
        load idle redis "$run" connections --addr "$OWN_REDIS_ADDR" --conns "$CONNS" --hold 3 --no-greeting \
            --server-pid "$OWN_REDIS_PID"
        load accept redis "$run" connections --addr "$OWN_REDIS_ADDR" --conns "$CONNS" --hold 0 --no-greeting \
            --probe PING --expect +PONG
        stop "$OWN_REDIS_PID"
    fi
done

# 3. Authenticated connections: each REGISTERs and AUTHs as its own user (two argon2 hashes
#    each, so fewer of them and one run). The baseline is read after the first 10%, so the
#    memory argon2 hashing leaves behind is not counted against the connections.
for t in "${TARGETS[@]}"; do
    start_target "$t" auth
    load auth "$t" "$RUNS" connections --addr "$(addr_of "$t")" --conns "$AUTH_CONNS" --auth --hold 3 \
        --server-pid "$(pid_of "$t")" --baseline-after $((AUTH_CONNS / 10))
    stop "$(pid_of "$t")"
done

# 4. Durable SENDs: 500 users, each with one SEND in flight, to each other.
for t in "${TARGETS[@]}"; do start_target "$t" chat; done
for run in $(seq "$RUNS"); do
    for t in "${TARGETS[@]}"; do
        load send "$t" "$run" chat --addr "$(addr_of "$t")" --users 500 --duration "$DURATION"
    done
done

# 5. Delivery latency at 10,000 messages/s (open loop, 100 users).
for run in $(seq "$RUNS"); do
    for t in "${TARGETS[@]}"; do
        load delivery "$t" "$run" chat --addr "$(addr_of "$t")" --users 100 --rate 10000 --duration "$DURATION"
    done
done
stop_targets

# 6. HTTP GET /get_messages with a bearer token, for a user with 20 messages.
user="bench$(date +%s)"
for t in "${TARGETS[@]}"; do
    start_target "$t" http
    h=$(http_of "$t")
    curl -fsS -d "{\"username\": \"$user\", \"password\": \"pw\"}" "http://$h/register" >/dev/null
    token=$(curl -fsS -d "{\"username\": \"$user\", \"password\": \"pw\"}" "http://$h/auth" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')
    printf -v "TOKEN_$t" %s "$token"
    for i in $(seq 20); do
        curl -fsS -H "Authorization: Bearer $token" \
            -d "{\"recipient\": \"$user\", \"message\": \"message number $i\"}" "http://$h/" >/dev/null
    done
done
for run in $(seq "$RUNS"); do
    for t in "${TARGETS[@]}"; do
        v="TOKEN_$t"
        load http "$t" "$run" http --addr "$(http_of "$t")" --conns 50 --duration "$DURATION" \
            --path /get_messages --bearer "${!v}"
    done
done
if command -v wrk >/dev/null; then
    log "wrk cross-check: wrk -t1 -c50 -d${DURATION}s -H 'Authorization: Bearer ...' http://$HTTP_chatd/get_messages"
    wrk -t1 -c50 -d"${DURATION}s" -H "Authorization: Bearer $TOKEN_chatd" "http://$HTTP_chatd/get_messages" \
        >"$OUT/wrk-get_messages.txt" 2>&1 || true
    grep -E 'Requests/sec|Latency' "$OUT/wrk-get_messages.txt" >&2 || true
fi
stop_targets
log "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

# The summary: medians (min-max) per figure, chatd/Redis, and whether the target is met.
python3 - "$OUT/json" "${REDIS_VERSION:-}" "${BASELINE:-}" >"$OUT/summary.md" <<'EOF'
import glob, json, os, statistics, sys

folder, redis_version, baseline = sys.argv[1], sys.argv[2] or "?", sys.argv[3]

def runs(row, target):
    out = []
    for path in sorted(glob.glob(os.path.join(folder, f"{row}.{target}.*.json"))):
        with open(path) as f:
            out.append(json.load(f))
    return out

def get(report, path):
    for key in path.split("."):
        report = report[int(key)] if isinstance(report, list) else report[key]
    return float(report)

def fmt(v, unit):
    if unit == "µs":
        return f"{v / 1000:.2f} ms" if v >= 1000 else f"{v:.0f} µs"
    if unit == "KiB":
        return f"{v:.2f} KiB"
    return f"{v:,.0f}/s"

def cell(values, unit):
    if not values:
        return "–"
    med = statistics.median(values)
    if len(values) == 1:
        return fmt(med, unit)
    return f"{fmt(med, unit)} ({fmt(min(values), unit)}–{fmt(max(values), unit)})"

# figure, row, metric, unit, target as (kind, factor or absolute), note
ROWS = [
    ("PING 1x1 replies/s", "ping-1x1", "run.per_sec", "/s", ("ratio", 1.0)),
    ("PING 1x1 p99", "ping-1x1", "run.latency.p99_us", "µs", None),
    ("PING 50x1 replies/s", "ping-50x1", "run.per_sec", "/s", ("ratio", 1.0)),
    ("PING 50x16 replies/s", "ping-50x16", "run.per_sec", "/s", ("ratio", 2.0)),
    ("PING 500x1 replies/s", "ping-500x1", "run.per_sec", "/s", ("ratio", 1.0)),
    ("idle connections held: KiB/conn", "idle", "memory.0.per_conn_kib", "KiB", ("ratio_max", 1.0)),
    ("authenticated connections: KiB/conn", "auth", "memory.0.per_conn_kib", "KiB", ("max", 2.0)),
    ("accept rate (conn/s, to first reply)", "accept", "connect.per_sec", "/s", ("ratio", 1.0)),
    ("durable SEND, 500 senders: acked/s", "send", "run.per_sec", "/s", ("min", 100_000)),
    ("delivery p99 at 10k msgs/s", "delivery", "delivery.latency.p99_us", "µs", ("max", 3000)),
    ("  (acked/s achieved in that run)", "delivery", "run.per_sec", "/s", None),
    ("HTTP GET /get_messages (bearer) req/s", "http", "run.per_sec", "/s", ("min", 50_000)),
]

TARGETS = {
    ("ratio", 1.0): ">= 1.0x Redis", ("ratio", 2.0): ">= 2.0x Redis", ("ratio_max", 1.0): "<= 1.0x Redis",
    ("max", 2.0): "<= 2 KiB", ("min", 100_000): ">= 100k/s", ("max", 3000): "<= 3 ms", ("min", 50_000): ">= 50k/s",
}

# With a baseline: its column and chatd/baseline beside this build's.
base_head = " baseline | chatd/baseline |" if baseline else ""
print(f"| figure | target | Redis {redis_version} | chatd | chatd/Redis | met? |{base_head}")
print("|---|---|---|---|---|---|" + ("---|---|" if baseline else ""))
for name, row, metric, unit, target in ROWS:
    chatd_runs, redis_runs = runs(row, "chatd"), runs(row, "redis")
    c = [get(r, metric) for r in chatd_runs]
    r = [get(x, metric) for x in redis_runs]
    ratio = f"{statistics.median(c) / statistics.median(r):.2f}x" if c and r and statistics.median(r) else "–"
    met = "–"
    if target and c:
        kind, value = target
        mc = statistics.median(c)
        if kind == "ratio" and r:
            met = "yes" if mc >= value * statistics.median(r) else "**no**"
        elif kind == "ratio_max" and r:
            met = "yes" if mc <= value * statistics.median(r) else "**no**"
        elif kind == "max":
            met = "yes" if mc <= value else "**no**"
        elif kind == "min":
            met = "yes" if mc >= value else "**no**"
    problems = [p for x in chatd_runs + redis_runs for p in x.get("problems", [])]
    opened = [x["connect"]["opened"] for x in chatd_runs + redis_runs]
    note = ""
    if row in ("idle", "accept", "auth") and opened:
        note = f" ({min(opened):,}–{max(opened):,} opened)" if min(opened) != max(opened) else f" ({opened[0]:,} opened)"
    if problems:
        note += " ⚠ " + "; ".join(sorted(set(problems)))[:200]
    base_cells = ""
    if baseline:
        b = [get(x, metric) for x in runs(row, "base")]
        base_ratio = f"{statistics.median(c) / statistics.median(b):.2f}x" if c and b and statistics.median(b) else "–"
        base_problems = [p for x in runs(row, "base") for p in x.get("problems", [])]
        warn = " ⚠ " + "; ".join(sorted(set(base_problems)))[:200] if base_problems else ""
        base_cells = f" {cell(b, unit)}{warn} | {base_ratio} |"
    print(f"| {name}{note} | {TARGETS.get(target, '') if target else ''} | {cell(r, unit)} | {cell(c, unit)} | {ratio} | {met} |{base_cells}")
EOF
cat "$OUT/summary.md"
log "results: $OUT/summary.md, reports in $OUT/json, plots in $OUT/plots"
