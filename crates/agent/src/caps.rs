//! The capabilities `weftd` needs, checked once at start: without them the agent
//! would run, answer `weft status` and configure nothing.

/// `CAP_NET_ADMIN`'s bit (linux/capability.h): TUN devices, addresses, routes,
/// nftables.
const CAP_NET_ADMIN: u32 = 12;

/// Fails with what to do when this process lacks `CAP_NET_ADMIN`.
pub(crate) fn require_net_admin() -> anyhow::Result<()> {
    // An unreadable /proc (an unusual sandbox) is not a reason to refuse: the
    // TUN and netlink calls report their own errors then.
    let Ok(text) = std::fs::read_to_string("/proc/self/status") else {
        return Ok(());
    };
    check(&text)
}

fn check(proc_status: &str) -> anyhow::Result<()> {
    match effective(proc_status) {
        Some(caps) if caps & (1 << CAP_NET_ADMIN) == 0 => anyhow::bail!(
            "weftd needs the capability CAP_NET_ADMIN to create its TUN interfaces, \
             addresses, routes and firewall table, and this process does not have it \
             (effective capabilities {caps:#x}). Run it as root, or grant the capability: \
             `AmbientCapabilities=CAP_NET_ADMIN` in its systemd unit, \
             `setcap cap_net_admin+ep $(command -v weftd)`, or `--cap-add NET_ADMIN` \
             for a container"
        ),
        _ => Ok(()),
    }
}

/// The `CapEff:` mask of a `/proc/PID/status` text.
fn effective(proc_status: &str) -> Option<u64> {
    proc_status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_admin_is_read_from_capeff() {
        let root = "Name:\tweftd\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert!(check(root).is_ok());
        let dropped = "CapEff:\t000001ffffffefff\n";
        let e = check(dropped).unwrap_err().to_string();
        assert!(e.contains("CAP_NET_ADMIN"), "{e}");
        assert!(e.contains("AmbientCapabilities"), "{e}");
        assert!(check("CapEff:\t0000000000000000\n").is_err());
        // No CapEff line (not Linux's format): the kernel calls decide.
        assert!(check("Name:\tweftd\n").is_ok());
    }
}
