#!/usr/bin/env bash
# The main job: builds weft, then `weft-lab demo` starts a controller and three
# agents in network namespaces, joins them with a token, waits until every pair
# pings over the encrypted overlay and prints a status table. Runs until Ctrl-C
# (or pass --check to exit 0/1 after the table). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "demo.sh: the demo creates network namespaces and TUN devices: run it as root (sudo bash scripts/demo.sh)" >&2
    exit 1
fi
bash scripts/install-deps.sh
cargo build --workspace --bins --locked
export WEFT_BIN_DIR="$PWD/target/debug"
exec "$WEFT_BIN_DIR/weft-lab" demo "$@"
