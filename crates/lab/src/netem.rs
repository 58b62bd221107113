//! Link impairment: delay, jitter and loss on a veth link, in both directions.
//!
//! The mechanism is `tc qdisc replace dev <if> root netem ...` on both ends of the
//! link. Kernels built without `sch_netem` (some VM kernels) still get packet loss,
//! from an nftables `netdev` ingress chain using `numgen random`; asking such a
//! kernel for delay or jitter fails with [`LabError::NetemUnavailable`].

use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use crate::cmd;
use crate::error::{LabError, Result};

/// One link's impairment, applied to each direction separately (so a 50 ms delay
/// adds 100 ms to a round trip).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Impairment {
    /// Added one-way delay.
    pub delay: Duration,
    /// Random variation of the delay (uniform, +/-).
    pub jitter: Duration,
    /// Loss probability in parts per million (10 000 = 1 %).
    pub loss_ppm: u32,
}

impl Impairment {
    /// No impairment (clears a previous one).
    pub const NONE: Self = Self {
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
        loss_ppm: 0,
    };

    /// A fixed one-way delay.
    pub fn delay(delay: Duration) -> Self {
        Self {
            delay,
            ..Self::NONE
        }
    }

    /// A loss probability in percent (clamped to 0..=100).
    pub fn loss(percent: f64) -> Self {
        Self::NONE.with_loss(percent)
    }

    /// Adds jitter to the delay.
    #[must_use]
    pub fn with_jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// Adds a loss probability in percent (clamped to 0..=100).
    #[must_use]
    pub fn with_loss(mut self, percent: f64) -> Self {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "clamped to 0..=1e6 first"
        )]
        let ppm = (percent.clamp(0.0, 100.0) * 10_000.0).round() as u32;
        self.loss_ppm = ppm;
        self
    }

    /// Whether this is no impairment at all.
    pub fn is_none(&self) -> bool {
        *self == Self::NONE
    }

    /// The `tc ... netem` arguments after `netem`.
    pub fn netem_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if !self.delay.is_zero() || !self.jitter.is_zero() {
            args.push("delay".to_owned());
            args.push(format!("{}us", self.delay.as_micros()));
            if !self.jitter.is_zero() {
                args.push(format!("{}us", self.jitter.as_micros()));
            }
        }
        if self.loss_ppm > 0 {
            args.push("loss".to_owned());
            args.push(format!(
                "{}.{:04}%",
                self.loss_ppm / 10_000,
                self.loss_ppm % 10_000
            ));
        }
        args
    }
}

/// Whether the kernel has netem (0 unknown, then AVAILABLE or MISSING): probed on
/// first use and remembered per lab.
#[derive(Debug, Default)]
pub(crate) struct NetemSupport(AtomicU8);

const AVAILABLE: u8 = 1;
const MISSING: u8 = 2;

/// The nft table holding the loss fallback for device `dev`.
pub(crate) fn loss_table(dev: &str) -> String {
    format!("wl_imp_{dev}")
}

/// The nft ruleset implementing `loss_ppm` on packets arriving at `dev` (or just
/// removing the table when `loss_ppm` is 0).
pub(crate) fn loss_ruleset(dev: &str, loss_ppm: u32) -> String {
    let table = loss_table(dev);
    let mut text = format!("table netdev {table} {{}}\ndelete table netdev {table}\n");
    if loss_ppm > 0 {
        let rule = if loss_ppm >= 1_000_000 {
            "drop".to_owned()
        } else {
            format!("numgen random mod 1000000 < {loss_ppm} drop")
        };
        text.push_str(&format!(
            "table netdev {table} {{\n  chain ingress {{\n    type filter hook ingress device \"{dev}\" priority 0; \
             policy accept;\n    {rule}\n  }}\n}}\n"
        ));
    }
    text
}

/// Applies `imp` to the egress of `dev` in `netns` (the caller does both ends).
pub(crate) fn apply(
    netns: &str,
    dev: &str,
    imp: &Impairment,
    support: &NetemSupport,
) -> Result<()> {
    if imp.is_none() {
        // Clearing: remove whichever mechanism was in place; absence is fine.
        let mut del = tc(netns, &["qdisc", "del", "dev", dev, "root"]);
        cmd::output(&mut del, None)?;
        return set_nft_loss(netns, dev, 0);
    }
    if support.0.load(Ordering::Relaxed) != MISSING {
        let mut args = vec!["qdisc", "replace", "dev", dev, "root", "netem"];
        let netem = imp.netem_args();
        args.extend(netem.iter().map(String::as_str));
        let mut replace = tc(netns, &args);
        let line = cmd::cmdline(&replace);
        let out = cmd::output(&mut replace, None)?;
        if out.status.success() {
            support.0.store(AVAILABLE, Ordering::Relaxed);
            return set_nft_loss(netns, dev, 0);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !stderr.contains("qdisc kind is unknown") {
            return Err(cmd::command_error(line, &out));
        }
        tracing::warn!(
            "the kernel has no sch_netem; link loss falls back to nftables, delay is unavailable"
        );
        support.0.store(MISSING, Ordering::Relaxed);
    }
    if !imp.delay.is_zero() || !imp.jitter.is_zero() {
        return Err(LabError::NetemUnavailable {
            cmdline: format!(
                "tc -n {netns} qdisc replace dev {dev} root netem {}",
                imp.netem_args().join(" ")
            ),
            stderr: "Error: Specified qdisc kind is unknown.".to_owned(),
        });
    }
    set_nft_loss(netns, dev, imp.loss_ppm)
}

fn set_nft_loss(netns: &str, dev: &str, loss_ppm: u32) -> Result<()> {
    let mut nft = cmd::in_netns(netns, "nft");
    nft.args(["-f", "-"]);
    cmd::run(&mut nft, Some(&loss_ruleset(dev, loss_ppm))).map(drop)
}

fn tc(netns: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("tc");
    cmd.args(["-n", netns]).args(args);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netem_arguments() {
        let imp = Impairment::delay(Duration::from_millis(50))
            .with_jitter(Duration::from_millis(5))
            .with_loss(1.5);
        assert_eq!(
            imp.netem_args(),
            ["delay", "50000us", "5000us", "loss", "1.5000%"]
        );
        assert_eq!(Impairment::loss(100.0).netem_args(), ["loss", "100.0000%"]);
        assert_eq!(Impairment::loss(250.0).loss_ppm, 1_000_000);
        assert!(Impairment::NONE.netem_args().is_empty());
        assert!(Impairment::loss(0.0).is_none());
    }

    #[test]
    fn loss_fallback_ruleset() {
        let r = loss_ruleset("eth0", 10_000);
        assert!(r.contains("hook ingress device \"eth0\""), "{r}");
        assert!(r.contains("numgen random mod 1000000 < 10000 drop"));
        assert!(loss_ruleset("eth0", 1_000_000).contains("policy accept;\n    drop\n"));
        let clear = loss_ruleset("p3", 0);
        assert_eq!(
            clear,
            "table netdev wl_imp_p3 {}\ndelete table netdev wl_imp_p3\n"
        );
    }
}
