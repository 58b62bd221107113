//! Host facts: a node's best-effort inventory (OS, kernel, CPU, memory,
//! platform, virtualization, weftd's version and binary hash).
//!
//! The agent collects them from `/proc`, `/sys` and `/etc/os-release`, sends
//! them at registration (`RegisterRequest::facts`) and on a report when they
//! changed (`ReportRequest::facts`); the controller stores them per node and
//! shows them in `NodeInfo::facts`. Every field may be missing: a fact the
//! agent could not read stays empty and never blocks anything. Unknown
//! fields are ignored and an unknown virtualization kind reads as
//! [`Virtualization::Unknown`], so an older controller or CLI reads a newer
//! agent's facts.
//!
//! Bounds: every text is at most [`MAX_FACT_TEXT`] bytes without control,
//! bidirectional or zero-width characters, and `weftd_sha256` is 64
//! lowercase hex digits. [`HostFacts::sanitized`] (the agent, before sending)
//! makes any collected value fit; [`HostFacts::check`] (the controller) refuses
//! what does not.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::text::{find_spoofing_char, is_spoofing_char, spoofing_kind};

/// Longest fact text, in bytes.
pub const MAX_FACT_TEXT: usize = 256;

/// Boot times closer than this are the same boot: the kernel derives `btime`
/// from the wall clock minus the uptime, so it moves by a second or so when
/// the clock is adjusted, and that is not a reboot.
pub const BOOT_TIME_SLACK_MS: u64 = 60_000;

/// Whether the host is a container, a virtual machine or bare metal, as far
/// as the agent can tell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Virtualization {
    /// A container (Docker, Podman, LXC, systemd-nspawn, Kubernetes...).
    Container,
    /// A virtual machine (KVM, QEMU, Xen, VMware, Hyper-V, a cloud...).
    Vm,
    /// Real hardware: no sign of a hypervisor or a container.
    BareMetal,
    /// Not known (nothing conclusive could be read, or a kind this build does
    /// not know).
    #[default]
    #[serde(other)]
    Unknown,
}

impl Virtualization {
    /// The wire text: `container`, `vm`, `bare-metal`, `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Virtualization::Container => "container",
            Virtualization::Vm => "vm",
            Virtualization::BareMetal => "bare-metal",
            Virtualization::Unknown => "unknown",
        }
    }

    fn is_unknown(&self) -> bool {
        *self == Virtualization::Unknown
    }
}

impl fmt::Display for Virtualization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A node's host facts. Every field is optional; absent ones are left out of
/// the JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HostFacts {
    /// The OS name (`NAME` of os-release), e.g. `Debian GNU/Linux`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os_name: Option<String>,
    /// The OS version (`VERSION_ID`, else `VERSION`, else `BUILD_ID`), e.g. `12`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    /// The CPU architecture weftd runs as, e.g. `x86_64`, `aarch64`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// Logical CPUs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_cores: Option<u32>,
    /// The CPU model, e.g. `AMD EPYC 7B13`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_model: Option<String>,
    /// Physical memory, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_total_bytes: Option<u64>,
    /// Swap space, bytes (0: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_total_bytes: Option<u64>,
    /// The hardware platform as the firmware names it: DMI vendor and
    /// product (`QEMU Standard PC (Q35 + ICH9, 2009)`, `Amazon EC2 t3.micro`),
    /// or the device-tree model (`Raspberry Pi 4 Model B Rev 1.4`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// The kernel release, e.g. `6.1.0-18-amd64`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_version: Option<String>,
    /// The kernel's host name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// When the host booted, Unix milliseconds (second precision).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_time_ms: Option<u64>,
    /// Container, VM or bare metal.
    #[serde(skip_serializing_if = "Virtualization::is_unknown")]
    pub virtualization: Virtualization,
    /// Which container or hypervisor, when known: `docker`, `podman`, `lxc`,
    /// `kvm`, `qemu`, `xen`, `vmware`, `microsoft`, `amazon`...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virtualization_tech: Option<String>,
    /// weftd's version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weftd_version: Option<String>,
    /// SHA-256 of the weftd binary that runs, 64 lowercase hex digits (what
    /// `sha256sum $(command -v weftd)` prints).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weftd_sha256: Option<String>,
}

/// A fact the controller refuses, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("facts.{field}: {problem}")]
pub struct FactsError {
    /// The field, e.g. `cpu_model`.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

/// One changed fact: its value before and after (`null`: absent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FactChange {
    /// Before.
    pub from: serde_json::Value,
    /// After.
    pub to: serde_json::Value,
}

impl HostFacts {
    /// The text fields, by name.
    fn texts(&self) -> [(&'static str, &Option<String>); 10] {
        [
            ("os_name", &self.os_name),
            ("os_version", &self.os_version),
            ("arch", &self.arch),
            ("cpu_model", &self.cpu_model),
            ("platform", &self.platform),
            ("kernel_version", &self.kernel_version),
            ("hostname", &self.hostname),
            ("virtualization_tech", &self.virtualization_tech),
            ("weftd_version", &self.weftd_version),
            ("weftd_sha256", &self.weftd_sha256),
        ]
    }

    fn texts_mut(&mut self) -> [&mut Option<String>; 10] {
        [
            &mut self.os_name,
            &mut self.os_version,
            &mut self.arch,
            &mut self.cpu_model,
            &mut self.platform,
            &mut self.kernel_version,
            &mut self.hostname,
            &mut self.virtualization_tech,
            &mut self.weftd_version,
            &mut self.weftd_sha256,
        ]
    }

    /// Whether no fact is known.
    pub fn is_empty(&self) -> bool {
        *self == HostFacts::default()
    }

    /// These facts made to pass [`HostFacts::check`]: each text trimmed, its
    /// control, bidirectional and zero-width characters removed, cut to
    /// [`MAX_FACT_TEXT`] bytes at a character boundary, and dropped when
    /// empty; a `weftd_sha256` that is not 64 hex digits is dropped.
    pub fn sanitized(mut self) -> HostFacts {
        for t in self.texts_mut() {
            *t = t.take().and_then(|s| {
                let mut clean: String = s.chars().filter(|c| !is_spoofing_char(*c)).collect();
                let mut cut = clean.len().min(MAX_FACT_TEXT);
                while !clean.is_char_boundary(cut) {
                    cut -= 1;
                }
                clean.truncate(cut);
                let clean = clean.trim();
                (!clean.is_empty()).then(|| clean.to_owned())
            });
        }
        self.weftd_sha256 = self
            .weftd_sha256
            .map(|h| h.to_ascii_lowercase())
            .filter(|h| is_sha256_hex(h));
        self
    }

    /// Checks the bounds: every text at most [`MAX_FACT_TEXT`] bytes, not
    /// empty, without control, bidirectional or zero-width characters;
    /// `weftd_sha256` 64 lowercase hex digits.
    pub fn check(&self) -> Result<(), FactsError> {
        for (field, value) in self.texts() {
            let Some(s) = value else { continue };
            let bad = |problem: String| FactsError { field, problem };
            if s.len() > MAX_FACT_TEXT {
                return Err(bad(format!("{} bytes, at most {MAX_FACT_TEXT}", s.len())));
            }
            if s.is_empty() {
                return Err(bad("empty (leave it out instead)".into()));
            }
            if let Some((i, c)) = find_spoofing_char(s) {
                return Err(bad(format!(
                    "character {i} (U+{:04X}, {}) is not allowed",
                    u32::from(c),
                    spoofing_kind(c)
                )));
            }
        }
        if let Some(h) = &self.weftd_sha256
            && !is_sha256_hex(h)
        {
            return Err(FactsError {
                field: "weftd_sha256",
                problem: "not 64 lowercase hex digits".into(),
            });
        }
        Ok(())
    }

    /// What differs from `self` in `newer`, by field name (sorted); empty when
    /// nothing did. Boot times less than [`BOOT_TIME_SLACK_MS`] apart count as
    /// the same.
    pub fn changes(&self, newer: &HostFacts) -> BTreeMap<String, FactChange> {
        let map = |f: &HostFacts| match serde_json::to_value(f) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        let (old, new) = (map(self), map(newer));
        let mut out = BTreeMap::new();
        for key in old.keys().chain(new.keys()) {
            let from = old.get(key).cloned().unwrap_or(serde_json::Value::Null);
            let to = new.get(key).cloned().unwrap_or(serde_json::Value::Null);
            if from == to || out.contains_key(key) {
                continue;
            }
            if key == "boot_time_ms"
                && let (Some(a), Some(b)) = (from.as_u64(), to.as_u64())
                && a.abs_diff(b) < BOOT_TIME_SLACK_MS
            {
                continue;
            }
            out.insert(key.clone(), FactChange { from, to });
        }
        out
    }
}

/// Whether `s` is 64 lowercase hex digits.
fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> HostFacts {
        HostFacts {
            os_name: Some("Debian GNU/Linux".into()),
            os_version: Some("12".into()),
            arch: Some("x86_64".into()),
            cpu_cores: Some(4),
            cpu_model: Some("AMD EPYC 7B13".into()),
            memory_total_bytes: Some(8 << 30),
            swap_total_bytes: Some(0),
            platform: Some("QEMU Standard PC (i440FX + PIIX, 1996)".into()),
            kernel_version: Some("6.1.0-18-amd64".into()),
            hostname: Some("web1".into()),
            boot_time_ms: Some(1_700_000_000_000),
            virtualization: Virtualization::Vm,
            virtualization_tech: Some("kvm".into()),
            weftd_version: Some("0.1.0".into()),
            weftd_sha256: Some("ab".repeat(32)),
        }
    }

    #[test]
    fn missing_and_unknown_fields_read_as_empty_and_round_trip() {
        let empty: HostFacts = serde_json::from_str("{}").unwrap();
        assert!(empty.is_empty());
        assert_eq!(serde_json::to_string(&empty).unwrap(), "{}");
        // A newer agent: an unknown field and an unknown virtualization kind.
        let newer: HostFacts = serde_json::from_str(
            r#"{"os_name":"Alpine Linux","gpu":"none","virtualization":"enclave","cpu_cores":2}"#,
        )
        .unwrap();
        assert_eq!(newer.os_name.as_deref(), Some("Alpine Linux"));
        assert_eq!(newer.cpu_cores, Some(2));
        assert_eq!(newer.virtualization, Virtualization::Unknown);
        let s = sample();
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains(r#""virtualization":"vm""#), "{json}");
        assert_eq!(serde_json::from_str::<HostFacts>(&json).unwrap(), s);
        for v in [
            Virtualization::Container,
            Virtualization::Vm,
            Virtualization::BareMetal,
        ] {
            let t = serde_json::to_string(&v).unwrap();
            assert_eq!(t, format!("\"{v}\""));
            assert_eq!(serde_json::from_str::<Virtualization>(&t).unwrap(), v);
        }
    }

    #[test]
    fn check_refuses_oversized_spoofing_empty_and_malformed_facts() {
        assert_eq!(sample().check(), Ok(()));
        assert_eq!(HostFacts::default().check(), Ok(()));
        let long = HostFacts {
            cpu_model: Some("x".repeat(MAX_FACT_TEXT + 1)),
            ..sample()
        };
        let e = long.check().unwrap_err();
        assert_eq!(e.field, "cpu_model");
        assert_eq!(e.to_string(), "facts.cpu_model: 257 bytes, at most 256");
        let spoof = HostFacts {
            hostname: Some("a\u{202e}b".into()),
            ..sample()
        };
        assert!(
            spoof
                .check()
                .unwrap_err()
                .to_string()
                .contains("U+202E, a bidirectional control")
        );
        let empty = HostFacts {
            os_name: Some(String::new()),
            ..sample()
        };
        assert_eq!(empty.check().unwrap_err().field, "os_name");
        for bad in ["AB".repeat(32), "ab".repeat(31), "zz".repeat(32)] {
            let f = HostFacts {
                weftd_sha256: Some(bad),
                ..sample()
            };
            assert_eq!(f.check().unwrap_err().field, "weftd_sha256");
        }
    }

    #[test]
    fn sanitized_facts_always_pass_the_check() {
        let messy = HostFacts {
            os_name: Some("  Debian\n".into()),
            cpu_model: Some("é".repeat(200)),
            hostname: Some("\u{200b}\u{7}".into()),
            platform: Some("Vendor\u{202e} Board\t".into()),
            weftd_sha256: Some("AB".repeat(32)),
            kernel_version: Some("x".repeat(1000)),
            ..HostFacts::default()
        };
        let clean = messy.sanitized();
        assert_eq!(clean.check(), Ok(()));
        assert_eq!(clean.os_name.as_deref(), Some("Debian"));
        assert_eq!(clean.cpu_model.as_ref().map(String::len), Some(256));
        assert_eq!(clean.hostname, None);
        assert_eq!(clean.platform.as_deref(), Some("Vendor Board"));
        assert_eq!(clean.weftd_sha256, Some("ab".repeat(32)));
        assert_eq!(clean.kernel_version.map(|k| k.len()), Some(MAX_FACT_TEXT));
        let bad_hash = HostFacts {
            weftd_sha256: Some("not a hash".into()),
            ..HostFacts::default()
        };
        assert_eq!(bad_hash.sanitized().weftd_sha256, None);
    }

    #[test]
    fn changes_name_each_changed_field_and_ignore_boot_time_jitter() {
        let a = sample();
        assert!(a.changes(&a).is_empty());
        let b = HostFacts {
            kernel_version: Some("6.8.0-1-amd64".into()),
            swap_total_bytes: None,
            virtualization: Virtualization::Unknown,
            boot_time_ms: a.boot_time_ms.map(|t| t + 1000),
            ..a.clone()
        };
        let c = a.changes(&b);
        assert_eq!(
            c.keys().collect::<Vec<_>>(),
            ["kernel_version", "swap_total_bytes", "virtualization"]
        );
        assert_eq!(c["kernel_version"].from, "6.1.0-18-amd64");
        assert_eq!(c["kernel_version"].to, "6.8.0-1-amd64");
        assert_eq!(c["swap_total_bytes"].to, serde_json::Value::Null);
        assert_eq!(c["virtualization"].to, serde_json::Value::Null);
        // A reboot is a change.
        let rebooted = HostFacts {
            boot_time_ms: a.boot_time_ms.map(|t| t + 3_600_000),
            ..a.clone()
        };
        assert_eq!(
            a.changes(&rebooted).keys().collect::<Vec<_>>(),
            ["boot_time_ms"]
        );
        // From nothing, every known fact is new.
        assert_eq!(HostFacts::default().changes(&a).len(), 15);
    }
}
