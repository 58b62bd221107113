//! The host firewall's executor part: the nftables table `inet weft_host`,
//! applied as typed JSON through `nft -j -f -` (`nftables::helper`), one
//! transaction per change, and listed with `nft -j list table`.
//!
//! Listing means starting the `nft` program, so it is skipped while the
//! ruleset's generation ([`RulesetGeneration`]) is the one the last listing
//! saw: drift such as `nft flush table inet weft_host` is seen at the next
//! pass, while an unchanged ruleset costs no process.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use nftables::helper::{self, NftablesError};
use nftables::schema::Nftables;
use nftables::types::NfFamily;

use super::nftgen::RulesetGeneration;
use crate::exec::ExecError;
use crate::hostfw::{HOST_FAMILY, HOST_TABLE, HostFirewall, ObservedHostFirewall};
use crate::hostfw::{delete_table, parse_listing, render, update_sets};

/// State kept across calls: the last listing and the generation it saw.
#[derive(Debug, Default)]
pub(super) struct HostTable {
    generation: RulesetGeneration,
    listed: Option<(u32, Option<ObservedHostFirewall>)>,
}

impl HostTable {
    pub(super) fn observe(&mut self) -> Result<Option<ObservedHostFirewall>, ExecError> {
        let generation = self.generation.current();
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

fn apply(op: &str, nft: &Nftables<'_>) -> Result<(), ExecError> {
    super::nft::run_json(op, nft)
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
