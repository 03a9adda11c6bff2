#!/usr/bin/env bash
# What per-recipient ordering costs: the chat scenario against two chatd binaries, side by side
# (runs alternate, so both see the same machine), on one SQLite node, one PostgreSQL node, and
# two PostgreSQL nodes written at once (one generator per node).
# Usage: scripts/bench-ordering.sh OLD_BINARY NEW_BINARY [RUNS]
# Needs PostgreSQL on 127.0.0.1:5432 (trust auth). Starts and kills only its own processes.
set -euo pipefail
OLD=$1 NEW=$2 RUNS=${3:-2}
# The load generator (the same for both runs): the old binary's unless LOADER is set, so the
# report format is the one this script reads.
LOADER=${LOADER:-$OLD}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
OUT=$(mktemp -d)
# start runs in a command substitution (a subshell), so the pids it starts are kept in a file.
cleanup() {
    [[ -f "$OUT/pids" ]] || return 0
    while read -r pid; do kill "$pid" 2>/dev/null || true; done <"$OUT/pids"
    : >"$OUT/pids"
}
trap cleanup EXIT
log() { echo "[$(date +%T)] $*" >&2; }

# start BIN DB NAME: a chatd on DB; prints its line address.
start() {
    local bin=$1 db=$2 name=$3
    "$bin" serve --bind 127.0.0.1 --port 0 --http-port 0 --threads 1 --db "$db" --node-id "$name" \
        >"$OUT/$name.out" 2>"$OUT/$name.err" &
    echo $! >>"$OUT/pids"
    for _ in $(seq 100); do
        grep -q '^Store:' "$OUT/$name.out" 2>/dev/null && break
        sleep 0.1
    done
    sed -n 's/^ *telnet \([^ ]*\) \([0-9]*\)$/\1:\2/p' "$OUT/$name.out" | head -1
}
stop_all() { cleanup; sleep 0.5; }
fresh_pg() { psql -q -h 127.0.0.1 -U postgres -d test -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1" >/dev/null 2>&1; echo "$PG/$1"; }

# chat LABEL ADDR... : one chat run per address at once; prints acked/s (sum) and ack p99 (max).
chat() {
    local label=$1
    shift
    local i=0 jobs=()
    for addr in "$@"; do
        # shellcheck disable=SC2086
        "$LOADER" load chat --addr "$addr" $ARGS --json >"$OUT/$label.$i.json" 2>/dev/null &
        jobs+=($!)
        i=$((i + 1))
    done
    for job in "${jobs[@]}"; do wait "$job" || true; done
    python3 - "$OUT" "$label" "$i" <<'PY'
import json, sys
out, label, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
runs = [json.load(open(f"{out}/{label}.{i}.json")) for i in range(n)]
acked = sum(r["run"]["per_sec"] for r in runs)
p99 = max(r["run"]["latency"]["p99_us"] for r in runs)
d99 = max(r["delivery"]["latency"]["p99_us"] for r in runs)
ok = all(r["passed"] for r in runs)
print(f"acked/s {acked:.0f} | ack p99 {p99/1000:.2f} ms | delivery p99 {d99/1000:.2f} ms | {'PASS' if ok else 'FAIL'}")
PY
}

# BENCH_ARGS narrows the runs to one chat command line.
COMMANDS=("--users 500 --duration 10" "--users 100 --rate 10000 --duration 10")
[[ -n "${BENCH_ARGS:-}" ]] && COMMANDS=("$BENCH_ARGS")
for ARGS in "${COMMANDS[@]}"; do
    for run in $(seq "$RUNS"); do
        for which in old new; do
            bin=$OLD; [[ $which == new ]] && bin=$NEW
            load=$(cut -d' ' -f1 /proc/loadavg)
            dir=$(mktemp -d)
            a=$(start "$bin" "sqlite://$dir/chatd.db" "sqlite-$which")
            echo "$ARGS | sqlite, 1 node | $which | run $run | load $load | $(chat "sq-$which-$run" "$a")"
            stop_all
            db=$(fresh_pg "bench_$which")
            a=$(start "$bin" "$db" "pg1-$which")
            echo "$ARGS | postgres, 1 node | $which | run $run | load $load | $(chat "pg1-$which-$run" "$a")"
            stop_all
            db=$(fresh_pg "bench_$which")
            a=$(start "$bin" "$db" "pg2a-$which")
            b=$(start "$bin" "$db" "pg2b-$which")
            echo "$ARGS | postgres, 2 nodes | $which | run $run | load $load | $(chat "pg2-$which-$run" "$a" "$b")"
            stop_all
        done
    done
done
