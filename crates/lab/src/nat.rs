//! NAT profiles as nftables rulesets (text fed to `nft -f -` inside a router's
//! namespace). Each ruleset is one table, `ip weftlab`, so it can be listed with
//! `ip netns exec <router> nft list table ip weftlab`.
//!
//! How each profile gets its RFC 4787 behaviour from Linux:
//! - `easy`: `masquerade` keeps the source port when it is free, and conntrack
//!   reuses the mapping for every destination (endpoint-independent mapping);
//!   inbound packets need a matching conntrack entry (port-restricted filtering).
//! - `hard`: `masquerade random,fully-random` draws a new port per conntrack entry,
//!   i.e. per destination (endpoint-dependent mapping).
//! - `fullcone`: easy mapping, plus a dynamic map `fullcone` filled after source
//!   NAT (mapped port -> inner address and port) and a `dnat` of inbound UDP
//!   through it: anyone who knows the mapped address reaches the inner host.
//! - `udp-blocked`: easy NAT, and UDP forwarded from the LAN is dropped.
//! - `open`: no NAT and no filter; the LAN's public prefix is routed to the router.
//!
//! NAT routers also drop new inbound connections from the uplink that no NAT rule
//! accepted (a home router's stateful firewall).

use crate::topology::Nat;

/// The nft table every profile lives in.
pub const TABLE: &str = "weftlab";

/// How long a full-cone mapping stays open after the last outbound packet.
pub const FULLCONE_TIMEOUT_SECS: u32 = 300;

/// The ruleset for `nat` on a router whose uplink is `wan` and LAN side is `lan`.
///
/// [`Nat::Cgnat`] is planned as two [`Nat::Easy`] routers, so here it is the
/// same as `easy`.
pub fn ruleset(nat: Nat, wan: &str, lan: &str) -> String {
    let mut chains = String::new();
    let masquerade = match nat {
        Nat::Open => None,
        Nat::Easy | Nat::FullCone | Nat::UdpBlocked | Nat::Cgnat => Some("masquerade"),
        Nat::Hard => Some("masquerade random,fully-random"),
    };
    if let Some(masquerade) = masquerade {
        chains.push_str(&format!(
            "  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    \
             oifname \"{wan}\" {masquerade}\n  }}\n"
        ));
    }
    if nat == Nat::FullCone {
        chains.push_str(&format!(
            "  map fullcone {{\n    type inet_service : ipv4_addr . inet_service;\n    \
             flags dynamic,timeout;\n    timeout {FULLCONE_TIMEOUT_SECS}s;\n  }}\n\
             \x20 chain record_mapping {{\n    type filter hook postrouting priority srcnat + 1; policy accept;\n    \
             oifname \"{wan}\" meta l4proto udp update @fullcone {{ udp sport timeout {FULLCONE_TIMEOUT_SECS}s : \
             ct original ip saddr . ct original proto-src }}\n  }}\n\
             \x20 chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    \
             iifname \"{wan}\" meta l4proto udp dnat ip addr . port to udp dport map @fullcone\n  }}\n"
        ));
    }
    if nat != Nat::Open {
        let mut forward = format!(
            "  chain forward {{\n    type filter hook forward priority filter; policy accept;\n    \
             iifname \"{wan}\" oifname \"{lan}\" ct state established,related accept\n    \
             iifname \"{wan}\" oifname \"{lan}\" ct status dnat accept\n    \
             iifname \"{wan}\" oifname \"{lan}\" drop\n"
        );
        if nat == Nat::UdpBlocked {
            forward.push_str(&format!("    iifname \"{lan}\" meta l4proto udp drop\n"));
        }
        forward.push_str("  }\n");
        chains.push_str(&forward);
        // Unsolicited packets to the router itself are dropped, as a home router's
        // firewall does. Besides realism this matters for hole punching: a packet
        // accepted locally leaves a conntrack entry on the mapped port, and the
        // next outbound packet to that peer is then masqueraded to another port.
        chains.push_str(&format!(
            "  chain input {{\n    type filter hook input priority filter; policy accept;\n    \
             iifname \"{wan}\" ct state established,related accept\n    \
             iifname \"{wan}\" icmp type echo-request accept\n    \
             iifname \"{wan}\" drop\n  }}\n"
        ));
    }
    // Creating then deleting the table first makes the load idempotent.
    format!("table ip {TABLE} {{}}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n{chains}}}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn easy_masquerades_without_randomisation() {
        let r = ruleset(Nat::Easy, "eth0", "eth1");
        assert!(r.contains("oifname \"eth0\" masquerade\n"), "{r}");
        assert!(!r.contains("random"));
        assert!(!r.contains("dnat ip") && !r.contains("map fullcone"));
        assert!(r.contains("iifname \"eth0\" oifname \"eth1\" drop"));
    }

    #[test]
    fn hard_randomises_ports_per_destination() {
        let r = ruleset(Nat::Hard, "eth0", "eth1");
        assert!(r.contains("masquerade random,fully-random"), "{r}");
    }

    #[test]
    fn fullcone_records_mappings_and_dnats_inbound_udp() {
        let r = ruleset(Nat::FullCone, "eth0", "eth1");
        assert!(r.contains("map fullcone"), "{r}");
        assert!(r.contains("priority srcnat + 1"));
        assert!(r.contains("update @fullcone { udp sport timeout 300s : ct original ip saddr . ct original proto-src }"));
        assert!(r.contains("dnat ip addr . port to udp dport map @fullcone"));
        assert!(r.contains("ct status dnat accept"));
    }

    #[test]
    fn udp_blocked_drops_lan_udp_only() {
        let r = ruleset(Nat::UdpBlocked, "eth0", "eth1");
        assert!(r.contains("iifname \"eth1\" meta l4proto udp drop"), "{r}");
        assert!(r.contains("masquerade"));
    }

    #[test]
    fn open_has_no_nat_and_no_filter() {
        let r = ruleset(Nat::Open, "eth0", "eth1");
        assert!(!r.contains("masquerade"));
        assert!(!r.contains("drop"));
        assert!(r.starts_with("table ip weftlab {}\ndelete table ip weftlab\n"));
    }
}
