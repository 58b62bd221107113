#!/usr/bin/env bash
# The controller's test suites a second time, on PostgreSQL: every test that
# opens a store or starts a controller gets a fresh database in a throwaway
# cluster (initdb in a temporary directory, as the postgres user under root;
# stopped and removed when the test process ends). Needs the postgresql
# package (scripts/install-deps.sh) and the binaries built (scripts/test.sh
# builds them).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
# The controller's tests run weft-controller and weft (weft admin).
cargo build -p weft-controller-bin -p weft-bin --bins --locked
export WEFT_BIN_DIR="$PWD/target/debug"
export WEFT_TEST_DATABASE=postgres

if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run -p weft-controller -p weft-controller-bin --locked --no-fail-fast "$@"
else
    echo "test-postgres.sh: cargo-nextest not found, using cargo test" >&2
    cargo test -p weft-controller -p weft-controller-bin --locked --no-fail-fast "$@"
fi
