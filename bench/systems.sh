# bench/systems.sh — the systems bench/dataplane measures (sourced by it).
#
# A system NAME is three functions:
#   sys_NAME_install   make it available (apt / cargo / build); honour NO_INSTALL
#   sys_NAME_version   one line for the table's version list
#   sys_NAME_up        runs after the underlay exists: start one daemon per
#                      namespace with `spawn NS LOG CMD...`, bring the overlay up
#                      and set TUN_A (bench-a's tunnel interface), OVB (bench-b's
#                      overlay address: the iperf3/ping target) and
#                      DAEMONS=(PID_A PID_B) (empty = kernel only).  Return
#                      non-zero on failure (the run records it and goes on).
#   sys_NAME_report    optional: printed into $OUT/NAME-RUN/report.txt after the runs

# ---- raw veth (offloads on: the box's kernel-only ceiling) ------------------
sys_raw_install() { :; }
sys_raw_version() { echo "Linux $(uname -r) veth, default offloads (TSO/GSO on)"; }
sys_raw_up() { TUN_A=veth-a OVB=$UL_B DAEMONS=(); }

# ---- raw veth, TSO/GSO/GRO off (one MTU packet at a time) -------------------
sys_rawnooff_install() { need_cmd ethtool ethtool; }
sys_rawnooff_version() { echo "Linux $(uname -r) veth, ethtool -K tso/gso/gro off"; }
sys_rawnooff_up() {
    ip netns exec "$NS_A" ethtool -K veth-a tso off gso off gro off >/dev/null 2>&1
    ip netns exec "$NS_B" ethtool -K veth-b tso off gso off gro off >/dev/null 2>&1
    TUN_A=veth-a OVB=$UL_B DAEMONS=()
}

# ---- weft (this repository, release build) ---------------------------------
# Controller in bench-a on the veth address; both agents join with one token
# (PoW difficulty 8); overlay 100.64.0.0/24 from the controller, MTU 1420.
# --dns off: the two agents share the host's /etc/resolv.conf (a network
# namespace does not separate files), and with DNS on each would repair the
# other's edit until both pause their repairs: noise in the measurement, and
# the host's file rewritten.
sys_weft_install() {
    local src=$REPO
    if [ -n "${WEFT_REV:-}" ]; then
        # Build a commit, not the (possibly half-edited) working tree: export it
        # with git archive into a cache dir with its own target dir; the first
        # build seeds that target dir with the repo's release artifacts.
        local rev; rev=$(git -C "$REPO" rev-parse --short "$WEFT_REV") || die "unknown WEFT_REV $WEFT_REV"
        src=/tmp/weft-bench/src-$rev
        if [ ! -f "$src/Cargo.toml" ]; then
            mkdir -p "$src" && git -C "$REPO" archive "$rev" | tar -x -C "$src" || die "git archive $rev failed"
        fi
        if [ ! -d "$src/target/release" ] && [ -d "$REPO/target/release" ]; then
            mkdir -p "$src/target" && cp -a "$REPO/target/release" "$src/target/" 2>/dev/null
        fi
        WEFT_BIN=$src/target/release
        [ "$NO_BUILD" = 1 ] && die "WEFT_REV needs a build (drop NO_BUILD=1)"
    fi
    WEFT_SRC_DIR=$src
    if [ "$NO_BUILD" != 1 ]; then
        log "cargo build --release --bins in $src (log: $OUT/build.log)"
        (cd "$src" && cargo build --release --bins) >>"$OUT/build.log" 2>&1 \
            || die "cargo build --release --bins failed (see $OUT/build.log; NO_BUILD=1 WEFT_BIN=DIR uses existing binaries, WEFT_REV=HEAD builds the last commit)"
    fi
    # Snapshot the binaries: a concurrent `cargo build` must not swap them mid-run.
    local b; mkdir -p "$OUT/bin"
    for b in weftd weft weft-controller; do
        [ -x "$WEFT_BIN/$b" ] || die "$WEFT_BIN/$b missing (build with cargo build --release --bins)"
        cp "$WEFT_BIN/$b" "$OUT/bin/$b"
    done
    if [ -n "${WEFT_REV:-}" ]; then WEFT_SRC="commit $(basename "$src" | sed 's/^src-//')"
    else WEFT_SRC="repo tree at start $(git -C "$REPO" describe --always --dirty 2>/dev/null)"; fi
    WEFT_SRC+=", binaries from $WEFT_BIN built $(date -r "$WEFT_BIN/weftd" "+%F %T")"
    WEFT_BIN=$OUT/bin
}
sys_weft_version() {
    echo "$("$WEFT_BIN/weftd" --version 2>/dev/null), $WEFT_SRC, release profile"
}
weft_status() { "$WEFT_BIN/weft" --socket "$WORK/weft/$1.sock" status --json 2>/dev/null; }
weft_ready() {   # weft_ready NODE NS — joined, address assigned and on weft0
    local addr
    addr=$(weft_status "$1" | jq -er '.networks[0].addresses[0]') || return 1
    ip -n "$2" -o addr show dev weft0 2>/dev/null | grep -qF "inet ${addr%/*}/"
}
sys_weft_up() {
    local d=$WORK/weft fp n ns
    mkdir -p "$d"; chmod 700 "$d"
    spawn "$NS_A" "$d/controller.log" "$WEFT_BIN/weft-controller" serve --data-dir "$d/ctl" \
        --listen "$UL_A:8443" --tls-san "$UL_A" --log info
    wait_for "controller certificate" 150 grep -q 'TLS certificate fingerprint:' "$d/controller.log" || return 1
    fp=$(grep -o 'sha256:[0-9a-fA-F]*' "$d/controller.log" | head -n 1)
    wait_for "controller listening" 100 ip netns exec "$NS_A" sh -c "ss -ltn | grep -q '$UL_A:8443 '" || return 1
    ip netns exec "$NS_A" "$WEFT_BIN/weft-controller" admin --data-dir "$d/ctl" \
        network create bench --cidr 100.64.0.0/24 --pow-difficulty 8 >>"$d/admin.log" 2>&1 || return 1
    ( umask 077
      ip netns exec "$NS_A" "$WEFT_BIN/weft-controller" admin --data-dir "$d/ctl" \
          token create --network bench --uses 2 --json | jq -er .token >"$d/token" ) 2>>"$d/admin.log" || return 1
    for n in a b; do
        ns=$NS_A; [ "$n" = b ] && ns=$NS_B
        spawn "$ns" "$d/weftd-$n.log" "${WEFTD_BIN:-$WEFT_BIN/weftd}" --state-dir "$d/state-$n" --socket "$d/$n.sock" \
            --port 51820 --mint-difficulty 8 --controller "https://$UL_A:8443" --token-file "$d/token" \
            --pin-sha256 "$fp" --name "bench-$n" --log info --dns off ${WEFTD_EXTRA_ARGS:-}
        DAEMONS+=("$SPAWNED")
    done
    wait_for "weftd in $NS_A joined" 300 weft_ready a "$NS_A" || return 1
    wait_for "weftd in $NS_B joined" 300 weft_ready b "$NS_B" || return 1
    OVB=$(weft_status b | jq -r '.networks[0].addresses[0]'); OVB=${OVB%/*}
    TUN_A=weft0
}

sys_weft_report() { weft_status a; echo; weft_status b; }

# ---- weft with policy enforcement compiled out (benchmark-only binary) ------
# The same weft, but weftd built with the cargo feature `unenforced-benchmark-only`
# (a separate binary, weftd-nopolicy; production builds cannot turn enforcement
# off). Run it next to `weft` to see the price of enforcement (issue 6: < 5%).
# Built into <src>/target/nopolicy, seeded from target/release on first use.
sys_weftnp_install() {
    [ -x "$OUT/bin/weftd" ] || sys_weft_install
    local src=${WEFT_SRC_DIR:-$REPO} td
    td=$src/target/nopolicy
    if [ "$NO_BUILD" != 1 ]; then
        if [ ! -d "$td/release" ] && [ -d "$src/target/release" ]; then
            mkdir -p "$td" && cp -a "$src/target/release" "$td/" 2>/dev/null
        fi
        log "cargo build --release -p weftd --features unenforced-benchmark-only (log: $OUT/build.log)"
        (cd "$src" && cargo build --release -p weftd --features unenforced-benchmark-only --target-dir "$td") \
            >>"$OUT/build.log" 2>&1 || die "building weftd-nopolicy failed (see $OUT/build.log)"
    fi
    [ -x "$td/release/weftd" ] || die "$td/release/weftd missing"
    cp "$td/release/weftd" "$OUT/bin/weftd-nopolicy"
}
sys_weftnp_version() { echo "$("$OUT/bin/weftd-nopolicy" --version 2>/dev/null), $WEFT_SRC"; }
sys_weftnp_up() { WEFTD_BIN=$OUT/bin/weftd-nopolicy sys_weft_up; }
sys_weftnp_report() { sys_weft_report; }

# ---- weft's weftd at another commit (before/after in one run) -------------
# weftd built from WEFT_BASE_REV (a `git archive` export in
# /tmp/weft-bench/src-<rev> with its own target dir, seeded from the weft
# build's) against the run's controller and CLI. With WEFT_REV=<after> and
# WEFT_BASE_REV=<before>, `SYSTEMS="weft weftbase" RUNS=2` measures one change
# in one run (issue 16: the data plane's usage counting).
sys_weftbase_install() {
    [ -x "$OUT/bin/weftd" ] || sys_weft_install
    [ -n "${WEFT_BASE_REV:-}" ] || die "weftbase needs WEFT_BASE_REV (the commit to compare with)"
    local rev src seed=${WEFT_SRC_DIR:-$REPO}
    rev=$(git -C "$REPO" rev-parse --short "$WEFT_BASE_REV") || die "unknown WEFT_BASE_REV $WEFT_BASE_REV"
    src=/tmp/weft-bench/src-$rev
    if [ ! -f "$src/Cargo.toml" ]; then
        mkdir -p "$src" && git -C "$REPO" archive "$rev" | tar -x -C "$src" || die "git archive $rev failed"
    fi
    if [ ! -d "$src/target/release" ] && [ -d "$seed/target/release" ]; then
        mkdir -p "$src/target" && cp -a "$seed/target/release" "$src/target/" 2>/dev/null
    fi
    if [ "$NO_BUILD" != 1 ]; then
        log "cargo build --release -p weftd in $src (log: $OUT/build.log)"
        (cd "$src" && cargo build --release -p weftd) >>"$OUT/build.log" 2>&1 \
            || die "building weftd at $rev failed (see $OUT/build.log)"
    fi
    [ -x "$src/target/release/weftd" ] || die "$src/target/release/weftd missing"
    cp "$src/target/release/weftd" "$OUT/bin/weftd-base"
    WEFT_BASE_SRC="weftd of commit $rev"
}
sys_weftbase_version() { echo "$("$OUT/bin/weftd-base" --version 2>/dev/null), $WEFT_BASE_SRC"; }
sys_weftbase_up() { WEFTD_BIN=$OUT/bin/weftd-base sys_weft_up; }
sys_weftbase_report() { sys_weft_report; }

# ---- weft without offloads (WEFTD_OFFLOAD=0: one packet per syscall) ---------
# The same binaries with TUN offloads, UDP GSO and GRO off: shows what they buy.
sys_weftnooff_install() { [ -x "$OUT/bin/weftd" ] || sys_weft_install; }
sys_weftnooff_version() { echo "$("$OUT/bin/weftd" --version 2>/dev/null) with WEFTD_OFFLOAD=0, $WEFT_SRC"; }
sys_weftnooff_up() { WEFTD_OFFLOAD=0 sys_weft_up; }
sys_weftnooff_report() { sys_weft_report; }

# ---- weft with readers doing their own I/O (WEFTD_PIPELINE=0) ---------------
# weft with its Prometheus endpoint on (issue 16: metrics must cost < 2% of
# throughput): both weftds serve --metrics-listen 127.0.0.1:9560 and a loop in
# each namespace scrapes it every SCRAPE_EVERY seconds (default 15, Prometheus's
# default scrape interval) for the whole run. The scrapers' own CPU is not
# counted, but it runs on the same two CPUs as iperf3 and the daemons: a curl
# costs about 8 ms of CPU, so SCRAPE_EVERY=1 also measures the scraper.
sys_weftmetrics_install() { [ -x "$OUT/bin/weftd" ] || sys_weft_install; need_cmd curl curl; }
sys_weftmetrics_version() { echo "$("$OUT/bin/weftd" --version 2>/dev/null) with --metrics-listen, scraped every ${SCRAPE_EVERY:-15} s, $WEFT_SRC"; }
sys_weftmetrics_up() {
    WEFTD_EXTRA_ARGS="--metrics-listen 127.0.0.1:9560" sys_weft_up || return 1
    local ns
    for ns in "$NS_A" "$NS_B"; do
        ip netns exec "$ns" curl -fsS --max-time 5 http://127.0.0.1:9560/metrics >"$WORK/weft/first-scrape-$ns.txt" \
            || { log "weftmetrics: no metrics from weftd in $ns"; return 1; }
        spawn "$ns" "$WORK/weft/scrape-$ns.log" bash -c \
            'while :; do curl -fsS --max-time 5 http://127.0.0.1:9560/metrics >/dev/null || echo "scrape failed $(date +%T)"; sleep "$1"; done' \
            scrape "${SCRAPE_EVERY:-15}"
    done
}
sys_weftmetrics_report() { sys_weft_report; }

# No hand-off to a sender/writer task: what weftd does on one CPU.
sys_weftinline_install() { [ -x "$OUT/bin/weftd" ] || sys_weft_install; }
sys_weftinline_version() { echo "$("$OUT/bin/weftd" --version 2>/dev/null) with WEFTD_PIPELINE=0, $WEFT_SRC"; }
sys_weftinline_up() { WEFTD_PIPELINE=0 sys_weft_up; }
sys_weftinline_report() { sys_weft_report; }

# ---- the floor: a minimal C TUN<->UDP forwarder (bench/floor/fwd.c) ----------
# Not tunnels anyone would deploy: no handshake, keys, replay window or policy.
# They show what any userspace tunnel pays on this machine before doing its own
# work (cfwd: the TUN and UDP syscalls and wake-ups only), and what WireGuard's
# cipher alone adds to that (cfwdaead: ChaCha20-Poly1305 on every packet via
# OpenSSL). One poll(2) thread per end, like weftd's I/O thread; no offloads.
cfwd_install() {
    need_cmd gcc gcc
    [ -f /usr/include/openssl/evp.h ] || apt_install libssl-dev
    [ -x "$OUT/bin/cfwd" ] && return 0
    mkdir -p "$OUT/bin"
    gcc -O2 -pthread -o "$OUT/bin/cfwd" "$REPO/bench/floor/fwd.c" -lcrypto 2>>"$OUT/build.log" \
        || die "building bench/floor/fwd.c failed (see $OUT/build.log)"
}
cfwd_up() {   # cfwd_up MODE
    spawn "$NS_A" "$WORK/cfwd-a.log" "$OUT/bin/cfwd" cfwda "$UL_B" "$1"; DAEMONS=("$SPAWNED")
    spawn "$NS_B" "$WORK/cfwd-b.log" "$OUT/bin/cfwd" cfwdb "$UL_A" "$1"; DAEMONS+=("$SPAWNED")
    wait_for "cfwd TUNs" 100 sh -c "ip -n $NS_A link show cfwda && ip -n $NS_B link show cfwdb" || return 1
    ip -n "$NS_A" addr add "$OV_A/24" dev cfwda; ip -n "$NS_A" link set cfwda mtu 1420 up
    ip -n "$NS_B" addr add "$OV_B/24" dev cfwdb; ip -n "$NS_B" link set cfwdb mtu 1420 up
    TUN_A=cfwda OVB=$OV_B
}
sys_cfwd_install() { cfwd_install; }
sys_cfwd_version() { echo "bench/floor/fwd.c poll, $(gcc --version | head -n 1)"; }
sys_cfwd_up() { cfwd_up poll; }
sys_cfwdaead_install() { cfwd_install; }
sys_cfwdaead_version() { echo "bench/floor/fwd.c aead (ChaCha20-Poly1305, $(openssl version 2>/dev/null | awk '{print "OpenSSL", $2}'))"; }
sys_cfwdaead_up() { cfwd_up aead; }

# ---- userspace WireGuard (wireguard-go, boringtun-cli, gotatun share the UAPI)
wg_keys() {
    local d=$WORK/keys; mkdir -p "$d"
    ( umask 077
      wg genkey >"$d/a.key"; wg pubkey <"$d/a.key" >"$d/a.pub"
      wg genkey >"$d/b.key"; wg pubkey <"$d/b.key" >"$d/b.pub" )
}
wg_configure() {   # wg_configure NS IFACE MY_OVERLAY PEER_UNDERLAY PEER_OVERLAY KEY PEER_PUB
    wait_for "$2 UAPI socket" 100 test -S "/var/run/wireguard/$2.sock" || return 1
    ip netns exec "$1" wg set "$2" private-key "$6" listen-port 51820 \
        peer "$7" allowed-ips "$5/32" endpoint "$4:51820" || return 1
    ip -n "$1" addr add "$3/24" dev "$2"
    ip -n "$1" link set "$2" mtu 1420 up      # wg-quick's default MTU
}
# wg_up CMD... — start CMD IFACE in each namespace (IFACE = wga / wgb) and pair them.
wg_up() {
    local k=$WORK/keys
    wg_keys
    spawn "$NS_A" "$WORK/wga.log" "$@" wga; DAEMONS=("$SPAWNED")
    spawn "$NS_B" "$WORK/wgb.log" "$@" wgb; DAEMONS+=("$SPAWNED")
    wg_configure "$NS_A" wga "$OV_A" "$UL_B" "$OV_B" "$k/a.key" "$(cat "$k/b.pub")" || return 1
    wg_configure "$NS_B" wgb "$OV_B" "$UL_A" "$OV_A" "$k/b.key" "$(cat "$k/a.pub")" || return 1
    TUN_A=wga OVB=$OV_B
}
wg_tools() { need_cmd wg wireguard-tools; }

# wireguard-go: Debian's package (0.0.20220316, predates the TUN/UDP offload work).
sys_wggo_install() { wg_tools; need_cmd wireguard-go wireguard-go; }
sys_wggo_version() { echo "wireguard-go $(wireguard-go --version 2>/dev/null | awk '{print $2; exit}') (deb $(dpkg-query -W -f='${Version}' wireguard-go 2>/dev/null))"; }
sys_wggo_up() { wg_up env WG_PROCESS_FOREGROUND=1 wireguard-go -f; }

# boringtun-cli from crates.io (default: 4 threads, multi-queue TUN).
BTUN=${BTUN:-$HOME/.cargo/bin/boringtun-cli}
sys_boringtun_install() { wg_tools; cargo_install boringtun-cli "$BTUN"; }
sys_boringtun_version() { echo "$(grep -o 'boringtun-cli [0-9.]*' "$HOME/.cargo/.crates.toml" 2>/dev/null | head -n 1 || "$BTUN" --version) (crates.io)"; }
sys_boringtun_up() { wg_up "$BTUN" --foreground --disable-drop-privileges; }

# gotatun-cli (Mullvad's boringtun fork: recvmmsg/sendmmsg, UDP GRO, 7 MiB socket buffers).
GTUN=${GTUN:-$HOME/.cargo/bin/gotatun}
sys_gotatun_install() { wg_tools; cargo_install gotatun-cli "$GTUN"; }
sys_gotatun_version() { echo "$(grep -o 'gotatun-cli [0-9.]*' "$HOME/.cargo/.crates.toml" 2>/dev/null | head -n 1 || "$GTUN" --version) (crates.io, default features)"; }
sys_gotatun_up() { wg_up "$GTUN" --foreground --disable-drop-privileges; }
