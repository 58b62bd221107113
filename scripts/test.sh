#!/usr/bin/env bash
# The test command: unit, property, integration and end-to-end (network namespace)
# tests of the whole workspace. Run as root: the lab tests build namespaces and
# fail (never skip) without root.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
if [ "$(id -u)" != 0 ]; then
    echo "test.sh: warning: not root; the network-namespace tests will fail (run with sudo)" >&2
fi

# End-to-end tests run the real binaries; build them all first and tell the tests
# where they are.
cargo build --workspace --bins --locked
export WEFT_BIN_DIR="$PWD/target/debug"

if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast "$@"
else
    echo "test.sh: cargo-nextest not found, using cargo test" >&2
    cargo test --workspace --locked --no-fail-fast "$@"
fi
