#!/usr/bin/env bash
#
# pair-exercise.sh - rehearse the classroom "pair exercise" on one machine.
#
# In class, student A runs the chat server on their laptop and student B, the classmate,
# connects to it over the room's network. This script plays both parts on one Linux host,
# with two network namespaces standing in for the two laptops and a veth pair as the
# cable between them:
#
#     laptop A: namespace chatd-a-<pid>                 laptop B: namespace chatd-b-<pid>
#     +------------------------------+                  +------------------------------+
#     |  chatd serve                 |                  |  the classmate (python3)     |
#     |    --interface veth-a        |                  |                              |
#     |  veth-a  10.77.0.1/24  <=====|==== veth pair ===|=>  veth-b  10.77.0.2/24      |
#     |  lo      127.0.0.1 (chatd    |                  |  lo      127.0.0.1           |
#     |          NOT listening here) |                  |                              |
#     +------------------------------+                  +------------------------------+
#
# What it checks, in order:
#   1. chatd starts on laptop A, bound to the address of the interface it was given, and
#      its banner tells the classmate what to type (telnet 10.77.0.1 8000).
#   2. From laptop B the classmate REGISTERs alice and bob, AUTHs as alice and SENDs bob
#      a message, then on a new connection AUTHs as bob and finds it in the INBOX.
#   3. chatd is NOT reachable where it was not bound: on laptop A, 127.0.0.1:8000 refuses.
#   4. chatd stops cleanly (exit status 0) on SIGTERM.
#
# Usage:   sudo scripts/pair-exercise.sh
# Needs:   root, iproute2 with `ip netns`, python3, timeout (coreutils), a built chatd.
# Environment:
#   CHATD_BIN     the chatd binary          (default: target/release/chatd in the repository,
#                                            as `cargo run --release` in the README builds it;
#                                            target/debug/chatd if only that one exists)
#   PAIR_SUBNET   the /24 for the cable     (default: 10.77.0.0/24; A gets .1, B gets .2)
#   PAIR_PORT     chatd's port              (default: 8000, as in class)
# Exit status: 0 all good; 1 a check failed (the reason is printed); 77 cannot run here
# (not root, no `ip netns`, ...) - the test suite counts that as skipped.
#
# Whatever happens, the script cleans up after itself: it stops the chatd it started (that
# process only), deletes the two namespaces (which removes the veth pair too) and removes its
# temporary directory. Every step is bounded by `timeout`. Nothing outside the two namespaces
# is ever contacted.

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z ${CHATD_BIN:-} ]]; then
    CHATD_BIN="$REPO_ROOT/target/release/chatd"
    [[ -x $CHATD_BIN || ! -x $REPO_ROOT/target/debug/chatd ]] || CHATD_BIN="$REPO_ROOT/target/debug/chatd"
fi
PAIR_SUBNET="${PAIR_SUBNET:-10.77.0.0/24}"
PORT="${PAIR_PORT:-8000}"

NS_A="chatd-a-$$"          # laptop A, runs the server
NS_B="chatd-b-$$"          # laptop B, the classmate
IF_A="veth-a"              # the two ends of the cable; each lives only inside its namespace,
IF_B="veth-b"              # so these names cannot clash with the host's interfaces

SERVER_LIFETIME=120        # seconds: chatd is killed after this even if cleanup never runs
STEP_TIMEOUT=30            # seconds: the most any one client step may take

# --- output helpers ----------------------------------------------------------------------

STEP=0
step() { STEP=$((STEP + 1)); printf '\n[%d] %s\n' "$STEP" "$*"; }
ok()   { printf '    ok: %s\n' "$*"; }
fail() { printf '\nFAILED: %s\n' "$*" >&2; exit 1; }
skip() { printf 'SKIPPED: %s\n' "$*" >&2; exit 77; }

# --- can we run here at all? -------------------------------------------------------------

[[ $EUID -eq 0 ]] || skip "creating network namespaces needs root (try: sudo $0)"
command -v ip >/dev/null || skip "the ip command (iproute2) is not installed"
ip netns list >/dev/null 2>&1 || skip "this ip command has no working 'ip netns'"
command -v python3 >/dev/null || skip "python3 is not installed (it plays the classmate)"
command -v timeout >/dev/null || skip "timeout (coreutils) is not installed"
[[ -x $CHATD_BIN ]] || fail "no chatd binary at $CHATD_BIN (run 'cargo build --release' or set CHATD_BIN)"
[[ $PORT =~ ^[0-9]+$ ]] || fail "PAIR_PORT must be a port number, not '$PORT'"
[[ $PAIR_SUBNET =~ ^([0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3})\.0/24$ ]] \
    || fail "PAIR_SUBNET must look like 10.77.0.0/24, not '$PAIR_SUBNET'"
SERVER_IP="${BASH_REMATCH[1]}.1"
CLIENT_IP="${BASH_REMATCH[1]}.2"

# CHATD_BIND from the caller's environment would clash with --interface; NO_COLOR keeps
# chatd's log (shown if something fails) free of terminal colour codes.
unset CHATD_BIND
export NO_COLOR=1

# --- cleanup, run however the script ends ------------------------------------------------

WORK=""
CHATD_PID=""
CREATED_NS=()

cleanup() {
    local status=$?
    set +e
    if [[ -n $CHATD_PID ]] && kill -0 "$CHATD_PID" 2>/dev/null; then
        kill -TERM "$CHATD_PID" 2>/dev/null
        for _ in $(seq 100); do kill -0 "$CHATD_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$CHATD_PID" 2>/dev/null
        wait "$CHATD_PID" 2>/dev/null
    fi
    if [[ $status -ne 0 && $status -ne 77 && -s $WORK/chatd.err ]]; then
        printf '\n--- chatd log (stderr), last 30 lines ---\n' >&2
        tail -n 30 "$WORK/chatd.err" >&2
    fi
    for ns in "${CREATED_NS[@]}"; do
        ip netns delete "$ns" 2>/dev/null
    done
    [[ -n $WORK ]] && rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

WORK="$(mktemp -d "${TMPDIR:-/tmp}/chatd-pair.XXXXXX")"

# --- the classmate: a tiny line-protocol client ------------------------------------------
#
#   classmate.py talk HOST PORT COMMAND...  reads HELLO, sends each command, prints the
#                                           conversation, fails on ERR or a broken reply
#   classmate.py refused HOST PORT          succeeds only if the connection is refused

cat >"$WORK/classmate.py" <<'PYTHON'
import socket
import sys

TIMEOUT = 10  # seconds for connecting and for each reply line


def talk(host, port, commands):
    with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
        replies = sock.makefile("rb")

        def read_line():
            raw = replies.readline()
            if not raw:
                sys.exit("the server closed the connection unexpectedly")
            if not raw.endswith(b"\r\n"):
                sys.exit(f"reply line does not end in CRLF: {raw!r}")
            line = raw[:-2].decode()
            print(f"    < {line}", flush=True)
            return line

        hello = read_line()
        if not hello.startswith("HELLO chatd/"):
            sys.exit(f"expected a HELLO chatd/<version> greeting, got {hello!r}")
        for command in commands:
            print(f"    > {command}", flush=True)
            sock.sendall(command.encode() + b"\r\n")
            while True:  # data lines, then exactly one final OK or ERR line
                line = read_line()
                if line == "OK" or line.startswith("OK "):
                    break
                if line.startswith("ERR "):
                    sys.exit(f"{command.split()[0]} was refused: {line}")
        if commands and commands[-1].upper() == "QUIT" and replies.read(1) != b"":
            sys.exit("the server did not close the connection after QUIT")


def refused(host, port):
    try:
        socket.create_connection((host, port), timeout=TIMEOUT).close()
    except ConnectionRefusedError:
        print(f"    connection to {host}:{port} refused, as it should be", flush=True)
        return
    except OSError as e:
        sys.exit(f"connecting to {host}:{port} failed, but not with 'connection refused': {e}")
    sys.exit(f"connected to {host}:{port}, but chatd should not listen there")


try:
    mode, host, port, *rest = sys.argv[1:]
    if mode == "talk":
        talk(host, int(port), rest)
    else:
        refused(host, int(port))
except OSError as e:  # includes timeouts and refused connections while talking
    sys.exit(f"{host}:{port}: {e}")
PYTHON

# Run a command on laptop A or laptop B, bounded in time.
on_a() { timeout "$STEP_TIMEOUT" ip netns exec "$NS_A" "$@"; }
on_b() { timeout "$STEP_TIMEOUT" ip netns exec "$NS_B" "$@"; }
classmate()      { on_b python3 "$WORK/classmate.py" "$@"; }   # the classmate, on laptop B
classmate_on_a() { on_a python3 "$WORK/classmate.py" "$@"; }   # the same client, on laptop A

# --- 1. build the two laptops and the cable ----------------------------------------------

step "Creating two 'laptops' (network namespaces $NS_A and $NS_B) joined by a veth pair"
for ns in "$NS_A" "$NS_B"; do
    if ip netns list | awk '{print $1}' | grep -qxF "$ns"; then
        fail "namespace $ns already exists (left over from an earlier run? 'ip netns delete $ns')"
    fi
    if ! err=$(ip netns add "$ns" 2>&1); then
        skip "cannot create network namespaces here: $err"
    fi
    CREATED_NS+=("$ns")
done
if ! err=$(ip link add "$IF_A" netns "$NS_A" type veth peer name "$IF_B" netns "$NS_B" 2>&1); then
    skip "cannot create a veth pair here: $err"
fi
ip -n "$NS_A" addr add "$SERVER_IP/24" dev "$IF_A"
ip -n "$NS_B" addr add "$CLIENT_IP/24" dev "$IF_B"
for ns in "$NS_A" "$NS_B"; do ip -n "$ns" link set lo up; done
ip -n "$NS_A" link set "$IF_A" up
ip -n "$NS_B" link set "$IF_B" up
ok "laptop A: $IF_A $SERVER_IP/24    laptop B: $IF_B $CLIENT_IP/24"

# --- 2. student A starts the server ------------------------------------------------------

step "Laptop A: chatd serve --interface $IF_A --port $PORT --db sqlite://$WORK/chatd.db"
ip netns exec "$NS_A" timeout --kill-after=5 "$SERVER_LIFETIME" \
    "$CHATD_BIN" serve --interface "$IF_A" --port "$PORT" --db "sqlite://$WORK/chatd.db" \
    >"$WORK/chatd.out" 2>"$WORK/chatd.err" &
# `ip netns exec` execs in place; `timeout` runs chatd as its child and passes our signals on
# (to chatd and to its own process group, so chatd may see a SIGTERM twice at once).
CHATD_PID=$!

# chatd prints its banner once it is listening; wait for that (at most 15 s).
for _ in $(seq 150); do
    grep -q "Stop with Ctrl-C" "$WORK/chatd.out" 2>/dev/null && break
    kill -0 "$CHATD_PID" 2>/dev/null || break
    sleep 0.1
done
if ! grep -q "Stop with Ctrl-C" "$WORK/chatd.out" 2>/dev/null; then
    kill -0 "$CHATD_PID" 2>/dev/null || fail "chatd exited before it was up (its log is below)"
    fail "chatd did not print its banner within 15 seconds"
fi
sed 's/^/    | /' "$WORK/chatd.out"
TELNET_LINES="$(grep '^  telnet ' "$WORK/chatd.out" || true)"
[[ $TELNET_LINES == "  telnet $SERVER_IP $PORT" ]] \
    || fail "the banner should tell the classmate to type 'telnet $SERVER_IP $PORT' (and nothing else)"
ok "chatd is up and its banner names $SERVER_IP $PORT"

# --- 3. the classmate, on laptop B, uses it ----------------------------------------------

TEXT="hello from laptop B"

step "Laptop B: the classmate registers alice and bob, logs in as alice, sends bob a message"
classmate talk "$SERVER_IP" "$PORT" \
    "REGISTER alice apple-pie" \
    "REGISTER bob blueberry" \
    "AUTH alice apple-pie" \
    "SEND bob $TEXT" \
    "QUIT" | tee "$WORK/alice.txt" || fail "the conversation as alice went wrong (see above)"
# The line after "> SEND" is its reply, "< OK <id>".
MSG_ID="$(awk '/^    > SEND /{getline; print}' "$WORK/alice.txt" | sed -nE 's/^    < OK ([0-9]+)$/\1/p')"
[[ -n $MSG_ID ]] || fail "SEND should answer 'OK <message id>'"
ok "alice's message to bob has id $MSG_ID"

step "Laptop B: on a new connection, bob logs in and reads his INBOX"
classmate talk "$SERVER_IP" "$PORT" \
    "AUTH bob blueberry" \
    "INBOX" \
    "QUIT" | tee "$WORK/bob.txt" || fail "the conversation as bob went wrong (see above)"
RFC3339='[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?Z'
grep -Eqx "    < MSG $MSG_ID alice $RFC3339 $TEXT" "$WORK/bob.txt" \
    || fail "bob's INBOX should hold 'MSG $MSG_ID alice <time> $TEXT'"
INBOX_END="$(awk '/^    > INBOX/{f=1; next} f && /^    < (OK|ERR)/{print; exit}' "$WORK/bob.txt")"
[[ $INBOX_END == "    < OK 1" ]] || fail "INBOX should end with 'OK 1', not '$INBOX_END'"
ok "bob got alice's message, over the 'network' from laptop B to laptop A"

# --- 4. chatd listens only where it was told to ------------------------------------------

step "Laptop A: chatd must NOT answer on 127.0.0.1:$PORT (it was bound to $IF_A only)"
classmate_on_a refused 127.0.0.1 "$PORT" || fail "chatd is reachable on 127.0.0.1, not only on $IF_A"
ok "binding one interface keeps chatd off the others"

# --- 5. student A stops the server -------------------------------------------------------

step "Laptop A: stopping chatd with SIGTERM (like Ctrl-C)"
kill -TERM "$CHATD_PID"
for _ in $(seq 100); do kill -0 "$CHATD_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$CHATD_PID" 2>/dev/null && fail "chatd was still running 10 seconds after SIGTERM"
status=0
wait "$CHATD_PID" || status=$?
CHATD_PID=""
[[ $status -eq 0 ]] || fail "chatd exited with status $status after SIGTERM, not 0"
ok "chatd stopped cleanly (exit status 0)"

printf '\nPAIR EXERCISE PASSED: a classmate on another machine can register, send and read messages.\n'
