//! The host firewall's executor part: the nftables table `inet weft_host`,
//! applied as typed JSON through `nft -j -f -` (`nftables::helper`), one
//! transaction per change, and listed with `nft -j list table`.
//!
//! Listing means starting the `nft` program, so it is skipped while the
//! ruleset's generation (`NFT_MSG_GETGEN` over `NETLINK_NETFILTER`, one
//! round trip) is the one the last listing saw: every change to any nftables
//! table bumps it, so drift such as `nft flush table inet weft_host` is seen at
//! the next pass, while an unchanged ruleset costs no process.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
use nftables::helper::{self, NftablesError};
use nftables::schema::Nftables;
use nftables::types::NfFamily;

use crate::exec::ExecError;
use crate::hostfw::{HOST_FAMILY, HOST_TABLE, HostFirewall, ObservedHostFirewall};
use crate::hostfw::{delete_table, parse_listing, render, update_sets};

/// `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETGEN`.
const GETGEN: u16 = (10 << 8) | 16;
/// `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWGEN`.
const NEWGEN: u16 = (10 << 8) | 15;
/// `NFTA_GEN_ID`.
const NFTA_GEN_ID: u16 = 1;

/// State kept across calls: the last listing and the generation it saw.
#[derive(Debug, Default)]
pub(super) struct HostTable {
    generation: Option<Generation>,
    listed: Option<(u32, Option<ObservedHostFirewall>)>,
}

impl HostTable {
    pub(super) fn observe(&mut self) -> Result<Option<ObservedHostFirewall>, ExecError> {
        let generation = self.generation();
        if let (Some(g), Some((seen, table))) = (generation, &self.listed)
            && g == *seen
        {
            return Ok(table.clone());
        }
        let table = list()?;
        self.listed = generation.map(|g| (g, table.clone()));
        Ok(table)
    }

    pub(super) fn set(&mut self, op: &str, fw: &HostFirewall) -> Result<(), ExecError> {
        self.listed = None;
        apply(op, &render(fw, crate::exec::system_wall_ms()))
    }

    pub(super) fn delete(&mut self, op: &str) -> Result<(), ExecError> {
        self.listed = None;
        apply(op, &delete_table())
    }

    /// The ruleset generation; `None` when it cannot be read (then every
    /// observation lists).
    fn generation(&mut self) -> Option<u32> {
        if self.generation.is_none() {
            match Generation::open() {
                Ok(g) => self.generation = Some(g),
                Err(e) => {
                    tracing::debug!(error = %e, "nftables generation unavailable; listing every pass");
                    return None;
                }
            }
        }
        let g = self.generation.as_mut()?;
        match g.read() {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the nftables generation");
                self.generation = None;
                None
            }
        }
    }
}

/// A `NETLINK_NETFILTER` socket asking for the ruleset generation.
#[derive(Debug)]
struct Generation {
    socket: Socket,
    seq: u32,
}

impl Generation {
    fn open() -> std::io::Result<Self> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self { socket, seq: 0 })
    }

    fn read(&mut self) -> std::io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut msg = Vec::with_capacity(20);
        msg.extend_from_slice(&20u32.to_ne_bytes());
        msg.extend_from_slice(&GETGEN.to_ne_bytes());
        msg.extend_from_slice(&1u16.to_ne_bytes()); // NLM_F_REQUEST
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&[0, 0, 0, 0]); // nfgenmsg: AF_UNSPEC, NFNETLINK_V0, res_id 0
        self.socket.send(&msg, 0)?;
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
        for _ in 0..8 {
            let (buf, _) = self.socket.recv_from_full()?;
            let Some(header) = buf.get(..16) else {
                return Err(bad("short netlink reply"));
            };
            let u16_at = |b: &[u8], i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
            let u32_at =
                |b: &[u8], i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
            let seq = u32_at(header, 8);
            if seq != self.seq {
                continue; // a late reply to an earlier request
            }
            let kind = u16_at(header, 4);
            if kind == 2 {
                // NLMSG_ERROR
                let errno = buf
                    .get(16..20)
                    .map_or(0, |b| -i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                return Err(std::io::Error::from_raw_os_error(errno));
            }
            if kind != NEWGEN {
                return Err(bad("unexpected netlink reply"));
            }
            let len = usize::try_from(u32_at(header, 0))
                .unwrap_or(usize::MAX)
                .min(buf.len());
            // Attributes after the header and the 4-byte nfgenmsg.
            let mut at = 20;
            while at + 4 <= len {
                let alen = usize::from(u16_at(&buf, at));
                let atype = u16_at(&buf, at + 2) & 0x3fff;
                if alen < 4 || at + alen > len {
                    break;
                }
                if atype == NFTA_GEN_ID && alen >= 8 {
                    let b = &buf[at + 4..at + 8];
                    return Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                }
                at += alen.div_ceil(4) * 4;
            }
            return Err(bad("netlink reply without a generation"));
        }
        Err(bad("no netlink reply to the generation request"))
    }
}

fn list() -> Result<Option<ObservedHostFirewall>, ExecError> {
    let op = "observe nftables table inet weft_host";
    match helper::get_current_ruleset_raw(
        helper::DEFAULT_NFT,
        ["list", "table", HOST_FAMILY, HOST_TABLE],
    ) {
        Ok(json) => parse_listing(&json)
            .map(Some)
            .map_err(|e| ExecError::Decode {
                op: op.to_owned(),
                detail: e,
            }),
        Err(NftablesError::NftFailed { stderr, .. })
            if stderr.contains("No such file or directory")
                || stderr.contains("does not exist") =>
        {
            Ok(None)
        }
        Err(e) => Err(nft_error(op, e)),
    }
}

/// Applies typed nft JSON in one transaction (`nft -j -f -`, its errors
/// captured: `nftables::helper::apply_ruleset` lets them through to stderr).
fn apply(op: &str, nft: &Nftables<'_>) -> Result<(), ExecError> {
    let json = serde_json::to_string(nft).map_err(|e| ExecError::Decode {
        op: op.to_owned(),
        detail: format!("cannot serialize the nft JSON: {e}"),
    })?;
    super::nft::run_nft(op, &["-j"], &json)
}

fn nft_error(op: &str, e: NftablesError) -> ExecError {
    let message = match &e {
        NftablesError::NftFailed { stderr, .. } => {
            format!(
                "nft refused: {}",
                stderr.trim().chars().take(2000).collect::<String>()
            )
        }
        other => other.to_string(),
    };
    let errno = match &e {
        NftablesError::NftExecution { inner, .. } => inner.raw_os_error().unwrap_or(libc::EIO),
        _ => libc::EINVAL,
    };
    ExecError::Kernel {
        op: op.to_owned(),
        errno,
        message,
    }
}

/// Replaces the contents of the existing named sets `set4` (with `v4`) and,
/// when given, `set6` (with `v6`) of the table `family table`, in one nftables
/// transaction (flush, then add): a reader sees the old contents or the new,
/// never a mix. Fails when the table or a set does not exist, or `family` is
/// not an nftables family (`ip`, `ip6`, `inet`, `arp`, `bridge`, `netdev`).
pub fn update_named_sets(
    family: &str,
    table: &str,
    set4: &str,
    set6: Option<&str>,
    v4: &BTreeSet<Ipv4Addr>,
    v6: &BTreeSet<Ipv6Addr>,
) -> Result<(), ExecError> {
    let op = format!("update nftables sets of table {family} {table}");
    let family = match family {
        "ip" => NfFamily::IP,
        "ip6" => NfFamily::IP6,
        "inet" => NfFamily::INet,
        "arp" => NfFamily::ARP,
        "bridge" => NfFamily::Bridge,
        "netdev" => NfFamily::NetDev,
        other => {
            return Err(ExecError::Kernel {
                op,
                errno: libc::EINVAL,
                message: format!(
                    "{other:?} is not an nftables family (ip, ip6, inet, arp, bridge, netdev)"
                ),
            });
        }
    };
    apply(&op, &update_sets(family, table, set4, set6, v4, v6))
}
