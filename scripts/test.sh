#!/usr/bin/env bash
# Runs every test of chatd on a fresh machine: installs what the tests need, then runs them.
# Usage: scripts/test.sh [extra nextest/cargo-test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

# Tests run the release-independent debug build; nextest runs each test in its own process.
if cargo nextest --version >/dev/null 2>&1; then
    exec cargo nextest run --workspace --all-targets --no-fail-fast "$@"
else
    echo "cargo-nextest not found; using cargo test" >&2
    exec cargo test --workspace --all-targets --no-fail-fast "$@"
fi
