#!/usr/bin/env bash
# Runs every test of chatd on a fresh machine: installs what the tests need, then runs them.
# Usage: scripts/test.sh [extra nextest/cargo-test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

# The browser test (tests/browser.rs) drives Debian's Chromium through chromedriver.
have_browser() { [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; }
if ! have_browser && [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "Installing chromium and chromium-driver for the browser test..." >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends chromium chromium-driver; } >/dev/null ||
        echo "!!! WARNING: could not install chromium/chromium-driver; the browser test will SKIP !!!" >&2
fi
if have_browser; then
    export CHATD_REQUIRE_BROWSER=1 # present, so the browser test must run, not skip
else
    echo "!!! WARNING: no /usr/bin/chromium or /usr/bin/chromedriver; the browser test will SKIP !!!" >&2
fi

# The terminal tests (tests/telnet.rs) drive the real telnet binary; tests/framing.rs runs nc.
have_telnet() { [[ -x /usr/bin/telnet ]] && command -v nc >/dev/null; }
if ! have_telnet && [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "Installing telnet and netcat-openbsd for the terminal tests..." >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends telnet netcat-openbsd; } >/dev/null ||
        echo "!!! WARNING: could not install telnet/netcat-openbsd; the terminal tests will SKIP !!!" >&2
fi
if have_telnet; then
    export CHATD_REQUIRE_TELNET=1 # present, so the terminal tests must run, not skip
else
    echo "!!! WARNING: no /usr/bin/telnet or nc; the terminal tests will SKIP !!!" >&2
fi

# The IRC client tests run real clients: irssi in a terminal under tmux (tests/irc_clients.rs),
# ii and the Python irc library (tests/irc_library_clients.rs).
have_irc_clients() {
    command -v irssi >/dev/null && command -v tmux >/dev/null && command -v ii >/dev/null
}
if ! have_irc_clients && [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "Installing irssi, tmux and ii for the IRC client tests..." >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends irssi tmux ii; } >/dev/null ||
        echo "!!! WARNING: could not install irssi/tmux/ii; the IRC client tests will SKIP !!!" >&2
fi
if ! python3 -c 'import irc.client' 2>/dev/null; then
    echo "Installing the Python irc package for the IRC client tests..." >&2
    python3 -m pip install -q irc >/dev/null 2>&1 || true
fi
if have_irc_clients && python3 -c 'import irc.client' 2>/dev/null; then
    export CHATD_REQUIRE_IRC_CLIENTS=1 # present, so the IRC client tests must run, not skip
else
    echo "!!! WARNING: irssi, tmux, ii or Python's irc is missing; IRC client tests will SKIP !!!" >&2
fi

# The lab-mode test (tests/http_lab.rs) runs the lab's own client: the first python3 on PATH,
# with requests (from PyPI with that python's pip, else Debian's python3-requests).
if ! python3 -c 'import requests' 2>/dev/null; then
    echo "Installing requests for the lab client test..." >&2
    python3 -m pip install -q requests >/dev/null 2>&1 ||
        { [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null && apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-requests >/dev/null; } ||
        true
    python3 -c 'import requests' 2>/dev/null ||
        echo "!!! WARNING: python3 has no requests; the lab client test will SKIP !!!" >&2
fi

# The metrics test (tests/metrics.rs) reads /metrics with the Prometheus project's own parser,
# Python's prometheus_client (from PyPI, else Debian's python3-prometheus-client).
if ! python3 -c 'import prometheus_client' 2>/dev/null; then
    echo "Installing prometheus_client for the metrics test..." >&2
    python3 -m pip install -q prometheus_client >/dev/null 2>&1 ||
        { [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null && apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-prometheus-client >/dev/null; } ||
        true
fi
if python3 -c 'import prometheus_client' 2>/dev/null; then
    export CHATD_REQUIRE_PROMETHEUS_CLIENT=1 # present, so the metrics test must run, not skip
else
    echo "!!! WARNING: python3 has no prometheus_client; the metrics test will SKIP !!!" >&2
fi

# PostgreSQL for the tests that run on both stores and the multi-node tests. Use the URL given
# in CHATD_TEST_DATABASE_URL; else the local server (started first if installed but stopped).
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
if [[ -z "${CHATD_TEST_DATABASE_URL:-}" ]] && command -v pg_isready >/dev/null; then
    if ! pg_up && command -v pg_ctlcluster >/dev/null && [[ -d /etc/postgresql ]]; then
        echo "Starting the local PostgreSQL for the tests..." >&2
        for version in /etc/postgresql/*/; do
            pg_ctlcluster --skip-systemctl-redirect "$(basename "$version")" main start >&2 || true
        done
        for _ in $(seq 40); do pg_up && break; sleep 0.5; done
    fi
    pg_up && export CHATD_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test
fi
if [[ -z "${CHATD_TEST_DATABASE_URL:-}" ]]; then
    echo "!!! WARNING: no PostgreSQL; the PostgreSQL tests will SKIP (set CHATD_TEST_DATABASE_URL) !!!" >&2
fi

# Every test, in the debug build; nextest runs each test in its own process.
if cargo nextest --version >/dev/null 2>&1; then
    exec cargo nextest run --workspace --all-targets --no-fail-fast "$@"
else
    echo "cargo-nextest not found; using cargo test" >&2
    exec cargo test --workspace --all-targets --no-fail-fast "$@"
fi
