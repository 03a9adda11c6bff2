#!/usr/bin/env bash
# Runs irctest (github.com/progval/irctest, the IRC conformance suite) against chatd's IRC
# door, with the controller beside this script. irctest itself is not part of chatd: check it
# out anywhere and install its requirements (see README.md here).
#
#   IRCTEST=~/irctest contrib/irctest/run.sh          # core selection + IRCv3 files
#   IRCTEST=~/irctest contrib/irctest/run.sh core     # or: ircv3
#
# Environment:
#   IRCTEST             the irctest checkout (required)
#   IRCTEST_PYTHON      a python with irctest's requirements (default: python3)
#   CHATD_BIN           the chatd binary (default: target/release/chatd)
#   CHATD_EXTRA_ARGS    extra `chatd serve` arguments
#   CHATD_NO_GUESTS=1   leave --irc-guests off
#   CHATD_AUTO_ACCOUNTS=1  not standard irctest: every test client logs in to an account of
#                       its nick, to tell failures of guests from other ones
#   JOBS (2), TEST_TIMEOUT (180 s), OUT (target/irctest), TAG (a suffix for the logs),
#   PYTEST_EXTRA (e.g. "-k testFoo"), CONTROLLER (another irctest controller, to compare)
set -u
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
: "${IRCTEST:?set IRCTEST to an irctest checkout}"
PY="${IRCTEST_PYTHON:-python3}"
export CHATD_BIN="${CHATD_BIN:-$REPO/target/release/chatd}"
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-$REPO/target/irctest}"
JOBS="${JOBS:-2}"
TEST_TIMEOUT="${TEST_TIMEOUT:-180}"
CONTROLLER="${CONTROLLER:-chatd_controller}"
TAG="${TAG:-}"
WHAT="${1:-all}"
mkdir -p "$OUT"

# The core selection (209 tests): the RFC 1459/2812 and Modern server tests, without the IRCv3,
# services, implementation-specific, deprecated and strict ones, nor the (unmarked) websocket
# transport tests. On Debian 12, InspIRCd 3.15 passes 191 of them and ngIRCd 26.1 150.
CORE_M='not IRCv3 and not services and not implementation-specific and not deprecated and not strict'
CORE_K='not websocket'
# The IRCv3 files (84 tests).
IRCV3_M='not implementation-specific and not deprecated and not strict'
IRCV3_FILES=(irctest/server_tests/cap.py irctest/server_tests/sasl.py
  irctest/server_tests/echo_message.py irctest/server_tests/message_tags.py
  irctest/server_tests/chathistory.py irctest/server_tests/read_marker.py)

if [ "$CONTROLLER" = chatd_controller ]; then
  [ -x "$CHATD_BIN" ] || { echo "no chatd binary at $CHATD_BIN (cargo build --release)" >&2; exit 2; }
fi
xdist=()
[ "$JOBS" -gt 1 ] && xdist=(-n "$JOBS")

run_sel() {  # name, then pytest's selection
  local name="$1"; shift
  local log="$OUT/$name$TAG.log" xml="$OUT/$name$TAG.xml"
  echo "== $name: pytest --controller $CONTROLLER $*"
  ( cd "$IRCTEST" && timeout --kill-after=30 3600 "$PY" -m pytest \
      -p no:cacheprovider --controller "$CONTROLLER" "${xdist[@]}" \
      --timeout "$TEST_TIMEOUT" -rA -v --junitxml="$xml" ${PYTEST_EXTRA:-} "$@" ) > "$log" 2>&1
  echo "   pytest exit $?; full output: $log"
  [ -f "$xml" ] && "$PY" "$HERE/summarize.py" "   $name" "$xml" --list
}

case "$WHAT" in
  all|core) run_sel core irctest/server_tests -m "$CORE_M" -k "$CORE_K" ;;
esac
case "$WHAT" in
  all|ircv3) run_sel ircv3 "${IRCV3_FILES[@]}" -m "$IRCV3_M" ;;
esac
