//! Host facts (best-effort inventory): read from `/proc`, `/sys` and
//! `/etc/os-release` by [`collect_from`] (every file through a [`Root`], so
//! tests read fixture trees), with weftd's version and the SHA-256 of its
//! own binary. A file that is missing, unreadable or garbage leaves its
//! fact empty; nothing here fails.
//!
//! The agent sends them at registration and on the controller link's first
//! report of each session, then re-collects them every
//! [`REFRESH_EVERY`] and sends them again only when they changed
//! ([`FactsTracker`]).

mod parse;
mod virt;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use weft_proto::facts::HostFacts;

/// How often the facts are read again.
pub(crate) const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);

/// The longest file read (`/proc/cpuinfo` of a 512-CPU machine is under 1 MiB).
const MAX_FILE: u64 = 4 << 20;

/// A directory the host's files are read under: `/` on a host, a fixture
/// tree in tests.
pub(crate) struct Root(PathBuf);

impl Root {
    pub(crate) fn new(dir: impl Into<PathBuf>) -> Self {
        Self(dir.into())
    }

    /// The text of `rel` (a path like `proc/meminfo`), at most [`MAX_FILE`]
    /// bytes, invalid UTF-8 replaced; `None` when it cannot be read.
    fn read(&self, rel: &str) -> Option<String> {
        let f = std::fs::File::open(self.0.join(rel)).ok()?;
        let mut bytes = Vec::new();
        f.take(MAX_FILE).read_to_end(&mut bytes).ok()?;
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn line(&self, rel: &str) -> Option<String> {
        self.read(rel).as_deref().and_then(parse::one_line)
    }

    fn exists(&self, rel: &str) -> bool {
        self.0.join(rel).exists()
    }
}

/// DMI values that are placeholders, not names.
const DMI_PLACEHOLDERS: &[&str] = &[
    "to be filled by o.e.m.",
    "system product name",
    "system manufacturer",
    "default string",
    "not specified",
    "not applicable",
    "none",
    "o.e.m.",
];

/// Reads the host facts under `root`; `arch`, `version` and `sha256` are
/// weftd's own (the caller's: the build's and [`weftd_sha256`]).
pub(crate) fn collect_from(
    root: &Root,
    arch: &str,
    version: &str,
    sha256: Option<String>,
) -> HostFacts {
    let (os_name, os_version) = root
        .read("etc/os-release")
        .or_else(|| root.read("usr/lib/os-release"))
        .map(|t| parse::os_release(&t))
        .unwrap_or_default();
    let cpu = root
        .read("proc/cpuinfo")
        .map(|t| parse::cpuinfo(&t))
        .unwrap_or_default();
    let (memory, swap) = root
        .read("proc/meminfo")
        .map(|t| parse::meminfo(&t))
        .unwrap_or_default();
    let dmi = |field: &str| {
        root.line(&format!("sys/class/dmi/id/{field}"))
            .filter(|v| !DMI_PLACEHOLDERS.contains(&v.to_ascii_lowercase().as_str()))
    };
    let (vendor, product) = (dmi("sys_vendor"), dmi("product_name"));
    let platform = match (&vendor, &product) {
        (Some(v), Some(p)) => Some(format!("{v} {p}")),
        (Some(one), None) | (None, Some(one)) => Some(one.clone()),
        (None, None) => root
            .line("proc/device-tree/model")
            .or_else(|| root.line("sys/firmware/devicetree/base/model"))
            .or_else(|| cpu.board_model.clone()),
    };
    let dmi = [vendor, product, dmi("bios_vendor"), dmi("board_vendor")]
        .into_iter()
        .flatten()
        .collect();
    let (virtualization, virtualization_tech) = virt::detect(&virt::VirtInputs {
        systemd_container: root.line("run/systemd/container"),
        containerenv: root.exists("run/.containerenv"),
        dockerenv: root.exists(".dockerenv"),
        init_cgroup: root.read("proc/1/cgroup"),
        dmi,
        hypervisor_type: root.line("sys/hypervisor/type"),
        hypervisor_flag: cpu.hypervisor_flag,
        has_flags: cpu.has_flags,
    });
    HostFacts {
        os_name,
        os_version,
        arch: Some(arch.to_owned()),
        cpu_cores: cpu.cores.or_else(|| {
            root.read("sys/devices/system/cpu/online")
                .and_then(|t| parse::cpu_list_len(&t))
        }),
        cpu_model: cpu.model,
        memory_total_bytes: memory,
        swap_total_bytes: swap,
        platform,
        kernel_version: root.line("proc/sys/kernel/osrelease"),
        hostname: root.line("proc/sys/kernel/hostname"),
        boot_time_ms: root.read("proc/stat").and_then(|t| parse::boot_time_ms(&t)),
        virtualization,
        virtualization_tech,
        weftd_version: Some(version.to_owned()),
        weftd_sha256: sha256,
    }
    .sanitized()
}

/// The SHA-256 (lowercase hex) of the file at `path`.
fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(crate::state::hex(&hasher.finalize()))
}

/// The SHA-256 of weftd's own binary (`/proc/self/exe`: the file this process
/// runs, even when it was replaced on disk since). It cannot change while
/// the process runs, so it is hashed once; blocking (call it off the async
/// runtime).
pub(crate) fn weftd_sha256() -> Option<String> {
    static HASH: OnceLock<Option<String>> = OnceLock::new();
    HASH.get_or_init(|| match sha256_file(Path::new("/proc/self/exe")) {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!(error = %e, "cannot hash weftd's own binary (/proc/self/exe); the host facts go without it");
            None
        }
    })
    .clone()
}

/// This host's facts, read on the blocking pool.
pub(crate) async fn collect() -> HostFacts {
    match tokio::task::spawn_blocking(|| {
        collect_from(
            &Root::new("/"),
            std::env::consts::ARCH,
            env!("CARGO_PKG_VERSION"),
            weftd_sha256(),
        )
    })
    .await
    {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "collecting the host facts failed");
            HostFacts::default()
        }
    }
}

/// When to read the facts again and which ones to send on the controller
/// link (pure: the caller collects, reports and says what was accepted).
#[derive(Debug, Default)]
pub(crate) struct FactsTracker {
    /// The facts last collected, and when.
    latest: Option<(HostFacts, Instant)>,
    /// What the controller accepted in this session.
    accepted: Option<HostFacts>,
}

impl FactsTracker {
    /// Whether the facts are due to be collected at `now`.
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.latest
            .as_ref()
            .is_none_or(|(_, at)| now.saturating_duration_since(*at) >= REFRESH_EVERY)
    }

    /// Records freshly collected facts.
    pub(crate) fn collected(&mut self, facts: HostFacts, now: Instant) {
        self.latest = Some((facts, now));
    }

    /// The facts to put on the next report: the latest ones when the
    /// controller has not accepted them in this session (first report) or
    /// they changed since.
    pub(crate) fn to_send(&self) -> Option<HostFacts> {
        let (latest, _) = self.latest.as_ref()?;
        match &self.accepted {
            Some(a) if a.changes(latest).is_empty() => None,
            _ => Some(latest.clone()),
        }
    }

    /// Collects the facts when they are due; returns [`FactsTracker::to_send`].
    pub(crate) async fn for_report(&mut self) -> Option<HostFacts> {
        let now = crate::clock::now();
        if self.due(now) {
            let facts = collect().await;
            self.collected(facts, now);
        }
        self.to_send()
    }

    /// The controller took `facts` (the report carrying them succeeded).
    pub(crate) fn accepted(&mut self, facts: HostFacts) {
        self.accepted = Some(facts);
    }

    /// A new session: the next report carries the facts again.
    pub(crate) fn new_session(&mut self) {
        self.accepted = None;
    }
}

#[cfg(test)]
mod tests;
