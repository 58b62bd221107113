#!/usr/bin/env bash
# Installs the system packages weft's lab, demo and tests need. Idempotent: it
# asks apt only when something is missing. Needs root (or sudo) for apt-get.
set -euo pipefail

# package:command-that-proves-it-is-there
want=(
    iproute2:ip
    nftables:nft
    iperf3:iperf3
    iputils-ping:ping
    conntrack:conntrack
    ethtool:ethtool
    procps:pkill
    dnsutils:dig
    dnsmasq-base:dnsmasq
    stunnel4:stunnel4
    openssl:openssl
    ca-certificates:update-ca-certificates
    util-linux:setpriv
    openssh-client:ssh
    openssh-client:scp
    openssh-sftp-server:/usr/lib/openssh/sftp-server
)

missing=()
for entry in "${want[@]}"; do
    pkg=${entry%%:*}
    cmd=${entry#*:}
    # An absolute path (a helper outside PATH, e.g. sftp-server) is checked as is.
    if [ "${cmd#/}" != "$cmd" ]; then
        [ -x "$cmd" ] || missing+=("$pkg")
    elif ! command -v "$cmd" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$cmd" ] && ! [ -x "/sbin/$cmd" ]; then
        missing+=("$pkg")
    fi
done
# PostgreSQL's server: the controller's tests start throwaway clusters with
# initdb, which Debian keeps off PATH in /usr/lib/postgresql/N/bin.
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    missing+=(postgresql)
fi

if [ ${#missing[@]} -eq 0 ]; then
    echo "install-deps: all system packages present"
    exit 0
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "install-deps: need root to install: ${missing[*]}" >&2; exit 1; }
    SUDO=sudo
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
