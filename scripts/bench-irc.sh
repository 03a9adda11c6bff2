#!/usr/bin/env bash
# chatd's IRC door beside ngIRCd and InspIRCd (Debian's packages), in one run, alternating:
#   1. connections held (registered: NICK, USER, up to the end of the MOTD) and the server's
#      memory per connection;
#   2. IRC PING round trips: 1 connection x 1 in flight, 50 x 1, and 500 x 1;
#   3. PRIVMSG from nick to nick (`chatd load chat --proto irc`: 200 users sending to the
#      others in turn, 1,000/s in all), latency from send to delivery;
#   4. PRIVMSG through channels (`chatd load rooms --proto irc`, open loop at a fixed rate, every
#      message checked to reach every other member exactly once): channels of two (100 channels of
#      2, 1,000/s), 1 channel x 1,000 members with 10 senders (100/s: 99,900 deliveries/s), and
#      100 channels x 20 with one sender each (1,000/s: 19,000 deliveries/s); deliveries per
#      second, latency from send to delivery, and server CPU per delivery.
# `chatd load --proto irc` drives all three. Each server listens on 127.0.0.1 only, on a port
# of its own, with its per-address and flood limits raised for a load from one address
# (ngIRCd's command penalties off, InspIRCd's fakelag off), and
# is killed by pid on exit. chatd stores messages durably; the other two store none: on chatd
# every member is an account (made with NickServ), and each PRIVMSG is committed to SQLite
# before anyone receives it.
#
# Usage: scripts/bench-irc.sh           # ~30 minutes
# Environment: RUNS (3), DURATION (10), CONNS (10000), OUT (target/bench-irc),
#   SECTIONS ("connections ping privmsg channels": the parts to run),
#   CHANNELS ("pairs fan1000 fan20": the channel shapes of part 4)
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-10000}
OUT=${OUT:-target/bench-irc}
SECTIONS=${SECTIONS:-connections ping privmsg channels}
CHANNELS=${CHANNELS:-pairs fan1000 fan20}
section() { [[ " $SECTIONS " == *" $1 "* ]]; }
for tool in ngircd inspircd; do
    command -v "$tool" >/dev/null || { echo "$tool is needed: apt-get install ngircd inspircd" >&2; exit 1; }
done

cargo build --release --quiet
BIN="${CARGO_TARGET_DIR:-target}/release/chatd"
mkdir -p "$OUT/json"
TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT
log() { printf '%s  %s\n' "$(date +%T)" "$*" >&2; }
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() {
    for _ in $(seq 100); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 1)" 2>/dev/null && return
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    exit 1
}

# start_server NAME: starts it on a fresh port; sets PORT_<NAME> and PID_<NAME>.
start_server() {
    local name=$1 port pid
    port=$(free_port)
    case "$name" in
    chatd)
        CHATD_THREADS=1 RUST_LOG=warn "$BIN" serve --bind 127.0.0.1 --port 0 --no-http \
            --irc-port "$port" --irc-server-name irc.chatd.test --db "sqlite://$TMP/chatd.db" \
            --load-test-hashing --max-send-rate 0 \
            >"$TMP/chatd.out" 2>"$TMP/chatd.err" &
        pid=$!
        ;;
    ngircd)
        cat >"$TMP/ngircd.conf" <<CONF
[Global]
Name = irc.ngircd.test
Info = bench
Listen = 127.0.0.1
Ports = $port
MotdPhrase = "bench"
PidFile = $TMP/ngircd.pid
[Limits]
MaxConnections = 0
MaxConnectionsIP = 0
MaxJoins = 0
MaxPenaltyTime = 0
PingTimeout = 600
PongTimeout = 600
[Options]
DNS = no
Ident = no
PAM = no
CONF
        ngircd --nodaemon --config "$TMP/ngircd.conf" >"$TMP/ngircd.out" 2>&1 &
        pid=$!
        ;;
    inspircd)
        cat >"$TMP/inspircd.conf" <<CONF
<server name="irc.inspircd.test" description="bench" network="bench">
<admin name="bench" nick="bench" email="bench@localhost">
<bind address="127.0.0.1" port="$port" type="clients">
<connect allow="*" timeout="60" pingfreq="600" sendq="1M" recvq="8K" localmax="100000"
         globalmax="100000" maxconnwarn="no" limit="100000" threshold="100000"
         commandrate="10000000" fakelag="no" hardsendq="4M" softsendq="1M">
<pid file="$TMP/inspircd.pid">
<performance softlimit="30000" somaxconn="1024" clonesonconnect="no">
<files motd="$TMP/motd.txt">
<log method="file" type="* -USERINPUT -USEROUTPUT" level="default" target="$TMP/inspircd.log">
CONF
        echo bench >"$TMP/motd.txt"
        inspircd --nofork --runasroot --config="$TMP/inspircd.conf" >"$TMP/inspircd.out" 2>&1 &
        pid=$!
        ;;
    esac
    PIDS+=("$pid")
    wait_port "$port"
    printf -v "PORT_$name" %s "$port"
    printf -v "PID_$name" %s "$pid"
}

stop_server() {
    local v="PID_$1"
    kill "${!v}" 2>/dev/null || true
    wait "${!v}" 2>/dev/null || true
}

# load ROW NAME RUN ARGS...: one `chatd load` run, its JSON kept.
load() {
    local row=$1 name=$2 run=$3
    shift 3
    log "$row $name run $run: chatd load $*"
    "$BIN" load "$@" --json "$OUT/json/$row.$name.$run.json" >"$TMP/last.txt" 2>&1 ||
        log "  (the run reported a failed check; see $OUT/json/$row.$name.$run.json)"
}

SERVERS=(chatd ngircd inspircd)
log "versions: $("$BIN" --version); $(ngircd --version 2>/dev/null | head -n1); $(inspircd --version 2>/dev/null | head -n1)"

# 1. Connections held, each run on a fresh server so its memory starts from scratch.
section connections && for run in $(seq "$RUNS"); do
    for s in "${SERVERS[@]}"; do
        start_server "$s"
        p="PORT_$s" pid="PID_$s"
        load connections "$s" "$run" connections --proto irc --addr "127.0.0.1:${!p}" --conns "$CONNS" \
            --hold 3 --server-pid "${!pid}"
        stop_server "$s"
    done
done

# 2. PING round trips, each server up for all its runs.
for s in "${SERVERS[@]}"; do start_server "$s"; done
section ping && for shape in 1 50 500; do
    for run in $(seq "$RUNS"); do
        for s in "${SERVERS[@]}"; do
            p="PORT_$s"
            load "ping-${shape}x1" "$s" "$run" ping --proto irc --addr "127.0.0.1:${!p}" --conns "$shape" \
                --duration "$DURATION"
        done
    done
done

# 3. PRIVMSG from nick to nick, on the same servers; every run has its own nicks.
section privmsg && for run in $(seq "$RUNS"); do
    for s in "${SERVERS[@]}"; do
        p="PORT_$s"
        register=()
        [[ $s == chatd ]] && register=(--irc-register)
        load privmsg "$s" "$run" chat --proto irc --addr "127.0.0.1:${!p}" --users 200 --rate 1000 \
            --duration "$DURATION" --user-prefix "d${run}${s:0:1}" "${register[@]}"
    done
done

# 4. PRIVMSG through channels, on the same servers; every run has its own nicks and channels.
# Each shape: its row, the letter its nicks start with (nicks are accounts on chatd: no two
# rows may share one), rooms, members, senders per room, and messages per second in all.
section channels && for shape in pairs:p:100:2:1:1000 fan1000:a:1:1000:10:100 fan20:b:100:20:1:1000; do
    IFS=: read -r row letter rooms members senders rate <<<"$shape"
    [[ " $CHANNELS " == *" $row "* ]] || continue
    for run in $(seq "$RUNS"); do
        for s in "${SERVERS[@]}"; do
            p="PORT_$s" pid="PID_$s"
            register=()
            [[ $s == chatd ]] && register=(--irc-register)
            load "$row" "$s" "$run" rooms --proto irc --addr "127.0.0.1:${!p}" --rooms "$rooms" \
                --members "$members" --senders "$senders" --rate "$rate" --duration "$DURATION" \
                --user-prefix "${letter}${run}${s:0:1}" --server-pid "${!pid}" "${register[@]}"
        done
    done
done

python3 - "$OUT/json" "${SERVERS[@]}" >"$OUT/summary.md" <<'PY'
import glob, json, os, statistics, sys

folder, servers = sys.argv[1], sys.argv[2:]

def values(row, server, path):
    out = []
    for name in sorted(glob.glob(os.path.join(folder, f"{row}.{server}.*.json"))):
        with open(name) as f:
            report = json.load(f)
        for key in path.split("."):
            report = report[int(key)] if isinstance(report, list) else report[key]
        out.append(float(report))
    return out

def cell(xs, fmt):
    if not xs:
        return "–"
    med = statistics.median(xs)
    return fmt(med) if len(xs) == 1 else f"{fmt(med)} ({fmt(min(xs))}–{fmt(max(xs))})"

per_sec = lambda v: f"{v:,.0f}/s"
micros = lambda v: f"{v / 1000:.2f} ms" if v >= 1000 else f"{v:.0f} µs"
ROWS = [
    ("connections held (registered)", "connections", "connect.opened", lambda v: f"{v:,.0f}"),
    ("server memory per connection", "connections", "memory.0.per_conn_kib", lambda v: f"{v:.2f} KiB"),
    ("PING 1x1 replies/s", "ping-1x1", "run.per_sec", per_sec),
    ("PING 1x1 p99", "ping-1x1", "run.latency.p99_us", micros),
    ("PING 50x1 replies/s", "ping-50x1", "run.per_sec", per_sec),
    ("PING 50x1 p99", "ping-50x1", "run.latency.p99_us", micros),
    ("PING 500x1 replies/s", "ping-500x1", "run.per_sec", per_sec),
    ("PING 500x1 p99", "ping-500x1", "run.latency.p99_us", micros),
    ("PRIVMSG nick to nick (200 users, 1,000/s): send to delivery p50", "privmsg", "delivery.latency.p50_us", micros),
    ("PRIVMSG nick to nick: send to delivery p99", "privmsg", "delivery.latency.p99_us", micros),
    ("channels of 2 (100 x 2, 1,000/s): deliveries/s", "pairs", "rooms.deliveries_per_sec", per_sec),
    ("channels of 2: send to delivery p50", "pairs", "delivery.latency.p50_us", micros),
    ("channels of 2: send to delivery p99", "pairs", "delivery.latency.p99_us", micros),
    ("channels of 2: server CPU per delivery", "pairs", "rooms.server_cpu_us_per_delivery", lambda v: f"{v:.1f} µs"),
    ("1 x 1,000 (10 senders, 100/s): deliveries/s", "fan1000", "rooms.deliveries_per_sec", per_sec),
    ("1 x 1,000: send to delivery p99", "fan1000", "delivery.latency.p99_us", micros),
    ("1 x 1,000: server CPU per delivery", "fan1000", "rooms.server_cpu_us_per_delivery", lambda v: f"{v:.2f} µs"),
    ("100 x 20 (1,000/s): deliveries/s", "fan20", "rooms.deliveries_per_sec", per_sec),
    ("100 x 20: send to delivery p99", "fan20", "delivery.latency.p99_us", micros),
    ("100 x 20: server CPU per delivery", "fan20", "rooms.server_cpu_us_per_delivery", lambda v: f"{v:.2f} µs"),
    ("PRIVMSG runs that passed (exactly once, in order)", None, None, None),
]
print("| figure | " + " | ".join(servers) + " |")
print("|---|" + "---|" * len(servers))
def passed(server):
    ok = total = 0
    for row in ("privmsg", "pairs", "fan1000", "fan20"):
        for name in glob.glob(os.path.join(folder, f"{row}.{server}.*.json")):
            with open(name) as f:
                total += 1
                ok += json.load(f)["passed"]
    return f"{ok} of {total}"

for name, row, path, fmt in ROWS:
    if row is None:
        print(f"| {name} | " + " | ".join(passed(s) for s in servers) + " |")
        continue
    print(f"| {name} | " + " | ".join(cell(values(row, s, path), fmt) for s in servers) + " |")
print("| stores messages | " + " | ".join("yes, durably, before delivery" if s == "chatd" else "no" for s in servers) + " |")
PY
cat "$OUT/summary.md"
log "results: $OUT/summary.md, reports in $OUT/json"
