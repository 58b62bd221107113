#!/usr/bin/env bash
# Keeps ARCHITECTURE.md and the dependency arrows true (run by CI, .ci/run): the crate
# table, the allowed crate edges, sans-IO crates free of tokio, files, processes and OS
# randomness, the cores' clippy.toml, and the dependency diagram. What each check means
# and the lists it checks against: scripts/check_architecture.py.
#   scripts/check-architecture.sh            check (fast: cargo metadata and cargo tree, no builds)
#   scripts/check-architecture.sh --diagram  print the diagram ARCHITECTURE.md must carry
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# = 0 ]; then
    python3 scripts/check_architecture.py --self-test 2>/dev/null \
        || { python3 scripts/check_architecture.py --self-test; exit 1; }
fi
exec python3 scripts/check_architecture.py "$@"
