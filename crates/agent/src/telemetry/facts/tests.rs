//! The collector against fixture trees (`tests/fixtures/facts/<host>/`: the
//! files of a Docker container in a VM, an Ubuntu KVM guest, a Raspberry Pi,
//! a tree of garbage) and against nothing at all.

use std::time::Duration;

use weft_proto::facts::{HostFacts, Virtualization};

use super::*;

const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn fixture(host: &str) -> HostFacts {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/facts")
        .join(host);
    assert!(dir.is_dir(), "{}", dir.display());
    collect_from(&Root::new(dir), "x86_64", "0.1.0", Some(HASH.into()))
}

#[test]
fn a_docker_container_in_a_vm() {
    let f = fixture("debian-docker");
    assert_eq!(f.os_name.as_deref(), Some("Debian GNU/Linux"));
    assert_eq!(f.os_version.as_deref(), Some("12"));
    assert_eq!(f.cpu_cores, Some(2));
    assert_eq!(f.cpu_model.as_deref(), Some("AMD EPYC"));
    assert_eq!(f.memory_total_bytes, Some(24_683_784 * 1024));
    assert_eq!(f.swap_total_bytes, Some(0));
    assert_eq!(f.kernel_version.as_deref(), Some("6.18.44-fc-v1272"));
    assert_eq!(f.hostname.as_deref(), Some("build-7f3a"));
    assert_eq!(f.boot_time_ms, Some(1_796_481_744_000));
    assert_eq!(f.platform, None);
    // The hypervisor flag is there too, but a container in a VM is a container.
    assert_eq!(f.virtualization, Virtualization::Container);
    assert_eq!(f.virtualization_tech.as_deref(), Some("docker"));
    assert_eq!(f.arch.as_deref(), Some("x86_64"));
    assert_eq!(f.weftd_version.as_deref(), Some("0.1.0"));
    assert_eq!(f.weftd_sha256.as_deref(), Some(HASH));
    assert_eq!(f.check(), Ok(()));
}

#[test]
fn a_kvm_guest_with_os_release_only_under_usr_lib() {
    let f = fixture("ubuntu-kvm");
    assert_eq!(f.os_name.as_deref(), Some("Ubuntu"));
    assert_eq!(f.os_version.as_deref(), Some("24.04"));
    assert_eq!(f.cpu_cores, Some(4));
    assert_eq!(
        f.cpu_model.as_deref(),
        Some("Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz")
    );
    assert_eq!(f.memory_total_bytes, Some(16_365_236 * 1024));
    assert_eq!(f.swap_total_bytes, Some(0));
    assert_eq!(
        f.platform.as_deref(),
        Some("QEMU Standard PC (Q35 + ICH9, 2009)")
    );
    assert_eq!(f.kernel_version.as_deref(), Some("6.8.0-49-generic"));
    assert_eq!(f.boot_time_ms, Some(1_733_400_000_000));
    assert_eq!(f.virtualization, Virtualization::Vm);
    assert_eq!(f.virtualization_tech.as_deref(), Some("qemu"));
}

#[test]
fn a_raspberry_pi_on_bare_metal() {
    let f = fixture("raspberry-pi");
    assert_eq!(f.cpu_cores, Some(4));
    // arm64 names no CPU model; the board is the platform.
    assert_eq!(f.cpu_model, None);
    assert_eq!(
        f.platform.as_deref(),
        Some("Raspberry Pi 4 Model B Rev 1.4")
    );
    assert_eq!(f.swap_total_bytes, Some(102_396 * 1024));
    assert_eq!(f.hostname.as_deref(), Some("pi-gw"));
    assert_eq!(f.virtualization, Virtualization::BareMetal);
    assert_eq!(f.virtualization_tech, None);
}

#[test]
fn garbage_files_leave_their_facts_empty() {
    let f = fixture("garbage");
    let expected = HostFacts {
        arch: Some("x86_64".into()),
        weftd_version: Some("0.1.0".into()),
        weftd_sha256: Some(HASH.into()),
        ..HostFacts::default()
    };
    assert_eq!(f, expected, "garbage read as facts");
}

#[test]
fn missing_files_leave_their_facts_empty() {
    let dir = tempfile::tempdir().unwrap();
    let f = collect_from(
        &Root::new(dir.path().join("nothing-here")),
        "aarch64",
        "0.1.0",
        None,
    );
    assert_eq!(
        f,
        HostFacts {
            arch: Some("aarch64".into()),
            weftd_version: Some("0.1.0".into()),
            ..HostFacts::default()
        }
    );
    // Directories where files should be, and unreadable files, are missing too.
    std::fs::create_dir_all(dir.path().join("proc/cpuinfo")).unwrap();
    let f = collect_from(&Root::new(dir.path()), "aarch64", "0.1.0", None);
    assert_eq!(f.cpu_cores, None);
}

#[test]
fn this_hosts_facts_and_binary_hash() {
    // The test binary stands in for weftd: /proc/self/exe is what runs.
    let own = sha256_file(Path::new("/proc/self/exe")).unwrap();
    let exe = std::env::current_exe().unwrap();
    assert_eq!(own, sha256_file(&exe).unwrap());
    assert_eq!(weftd_sha256().as_deref(), Some(own.as_str()));
    let f = collect_from(
        &Root::new("/"),
        std::env::consts::ARCH,
        "0.1.0",
        weftd_sha256(),
    );
    assert_eq!(f.check(), Ok(()));
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(f.kernel_version.as_deref(), Some(release.trim()));
    assert!(f.cpu_cores.is_some_and(|n| n > 0), "{f:?}");
    assert!(f.memory_total_bytes.is_some_and(|n| n > 0), "{f:?}");
    assert!(f.boot_time_ms.is_some(), "{f:?}");
}

#[test]
fn the_tracker_sends_at_the_start_of_a_session_and_after_a_change() {
    let t0 = crate::clock::now();
    let facts = fixture("ubuntu-kvm");
    let mut t = FactsTracker::default();
    assert!(t.due(t0));
    assert_eq!(t.to_send(), None, "nothing collected yet");
    t.collected(facts.clone(), t0);
    assert!(!t.due(t0 + Duration::from_secs(60)));
    assert!(t.due(t0 + REFRESH_EVERY));
    // The first report of a session carries them; once taken, no more.
    assert_eq!(t.to_send().as_ref(), Some(&facts));
    t.accepted(facts.clone());
    assert_eq!(t.to_send(), None);
    // Collected again, the same but for a boot time a second off: nothing.
    let jitter = HostFacts {
        boot_time_ms: facts.boot_time_ms.map(|b| b + 1000),
        ..facts.clone()
    };
    t.collected(jitter, t0 + REFRESH_EVERY);
    assert_eq!(t.to_send(), None);
    // A kernel upgrade is sent, once.
    let upgraded = HostFacts {
        kernel_version: Some("6.8.0-50-generic".into()),
        ..facts.clone()
    };
    t.collected(upgraded.clone(), t0 + REFRESH_EVERY * 2);
    assert_eq!(t.to_send().as_ref(), Some(&upgraded));
    t.accepted(upgraded.clone());
    assert_eq!(t.to_send(), None);
    // A new session sends them again (the controller may have lost them).
    t.new_session();
    assert_eq!(t.to_send(), Some(upgraded));
}
