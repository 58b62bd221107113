#!/usr/bin/env bash
# Keeps ARCHITECTURE.md and the dependency arrows true:
# - every workspace member is named in ARCHITECTURE.md, and nothing else is;
# - the sans-IO crates (proto, identity, policy, tunnel) do not depend on tokio.
set -euo pipefail
cd "$(dirname "$0")/.."

fail=0
members=$(cargo metadata --no-deps --format-version 1 --locked \
    | python3 -c 'import json,sys; print("\n".join(sorted(p["name"] for p in json.load(sys.stdin)["packages"])))')
documented=$(grep -oE '^\| `[a-z0-9-]+` ' ARCHITECTURE.md | sed -E 's/^\| `([a-z0-9-]+)` /\1/' | sort)
if [ "$members" != "$documented" ]; then
    echo "ARCHITECTURE.md's crate table does not match the workspace members:" >&2
    diff <(echo "$members") <(echo "$documented") >&2 || true
    fail=1
fi
for core in weft-proto weft-identity weft-policy weft-tunnel; do
    if echo "$members" | grep -qx "$core"; then
        if cargo tree -e normal -p "$core" --locked 2>/dev/null | grep -qE '^.* tokio v'; then
            echo "$core is a sans-IO crate but depends on tokio" >&2
            fail=1
        fi
    fi
done
[ $fail = 0 ] && echo "check-architecture: ok"
exit $fail
