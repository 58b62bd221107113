//! The host-wide executor part: the nftables table `inet weft` (through the
//! `nft` program, one atomic script per change) and `net.ipv4.ip_forward`.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::exec::ExecError;
use crate::firewall::{
    NFT_TABLE, NftRule, ObservedFirewall, delete_script, parse_listing, render_script,
};

/// Where IPv4 forwarding is switched.
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// Largest `nft` output read (the table holds a few rules).
const MAX_OUTPUT: usize = 1 << 20;
/// Observations answered from the last `nft` listing before `nft` runs again.
/// Listing means starting the `nft` program (a few milliseconds of CPU and a
/// burst of page faults); the reconciler observes every 2 s, so running it each
/// time cost an idle agent more CPU than everything else together and disturbed
/// the data plane's latency. A table changed behind weft's back is now repaired
/// within about 30 s; every change weft makes itself drops the cached listing.
const LIST_EVERY: u32 = 15;

/// State kept across calls: what forwarding was before weft turned it on, and
/// the last listing of the table with how many observations it has answered.
#[derive(Debug, Default)]
pub(super) struct Firewall {
    forward_set_by_weft: bool,
    listed: Option<(Option<BTreeSet<String>>, u32)>,
}

fn failed(op: &str, detail: impl Into<String>) -> ExecError {
    ExecError::Decode {
        op: op.to_owned(),
        detail: detail.into(),
    }
}

fn io_err(op: &str, e: &std::io::Error) -> ExecError {
    ExecError::Kernel {
        op: op.to_owned(),
        errno: e.raw_os_error().unwrap_or(libc::EIO),
        message: e.to_string(),
    }
}

impl Firewall {
    pub(super) fn observe(&mut self) -> Result<ObservedFirewall, ExecError> {
        let table = match &mut self.listed {
            Some((table, uses)) if *uses < LIST_EVERY => {
                *uses += 1;
                table.clone()
            }
            _ => {
                let table = Self::list()?;
                self.listed = Some((table.clone(), 1));
                table
            }
        };
        let fwd = std::fs::read_to_string(IP_FORWARD).map_err(|e| io_err(IP_FORWARD, &e))?;
        Ok(ObservedFirewall {
            table,
            ip_forward: fwd.trim() == "1",
            forward_set_by_weft: self.forward_set_by_weft,
        })
    }

    /// The comments of the rules in table `inet weft` as `nft` lists them.
    fn list() -> Result<Option<BTreeSet<String>>, ExecError> {
        let op = "observe nftables";
        let out = Command::new("nft")
            .args(["-j", "list", "table"])
            .args(NFT_TABLE.split(' '))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| io_err(op, &e))?;
        let table = if out.status.success() {
            if out.stdout.len() > MAX_OUTPUT {
                return Err(failed(op, "nft output too large"));
            }
            Some(parse_listing(&String::from_utf8_lossy(&out.stdout)).map_err(|e| failed(op, e))?)
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("No such file or directory") || err.contains("does not exist") {
                None
            } else {
                return Err(failed(op, format!("nft list table: {}", err.trim())));
            }
        };
        Ok(table)
    }

    pub(super) fn set_table(
        &mut self,
        op: &str,
        rules: &BTreeSet<NftRule>,
    ) -> Result<(), ExecError> {
        self.listed = None;
        run_nft(op, &render_script(rules))
    }

    pub(super) fn delete_table(&mut self, op: &str) -> Result<(), ExecError> {
        self.listed = None;
        run_nft(op, &delete_script())
    }

    pub(super) fn set_forward(&mut self, op: &str, on: bool) -> Result<(), ExecError> {
        let before = std::fs::read_to_string(IP_FORWARD).map_err(|e| io_err(op, &e))?;
        std::fs::write(IP_FORWARD, if on { "1\n" } else { "0\n" }).map_err(|e| io_err(op, &e))?;
        if on && before.trim() != "1" {
            self.forward_set_by_weft = true;
        }
        if !on {
            self.forward_set_by_weft = false;
        }
        Ok(())
    }
}

fn run_nft(op: &str, script: &str) -> Result<(), ExecError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io_err(op, &e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| io_err(op, &e))?;
    }
    let out = child.wait_with_output().map_err(|e| io_err(op, &e))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let err: String = err.chars().take(2000).collect();
        return Err(ExecError::Kernel {
            op: op.to_owned(),
            errno: libc::EINVAL,
            message: format!("nft refused the script: {}", err.trim()),
        });
    }
    Ok(())
}
