//! In a network namespace of its own that has no `/etc/netns/NS/resolv.conf`
//! (started with `nsenter --net`, `unshare -n`, or `ip netns exec` without that
//! file), `/etc/resolv.conf` is the host's file: the resolver must refuse to
//! manage it instead of pointing the host's DNS at a loopback address only the
//! namespace can reach. Needs root; fails (never skips) without it.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::fs::{self, File};
use std::path::Path;
use std::process::Command;

use nix::sched::{CloneFlags, setns};
use nix::unistd::Uid;
use weft_dns::{
    DnsConfig, DnsError, DnsService, NamespaceView, SystemMode, SystemPaths, Upstreams,
};

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn host_resolv_conf_is_refused_inside_a_foreign_network_namespace() {
    assert!(Uid::effective().is_root(), "this test needs root");
    let name = format!("weft-dns-guard-{}", std::process::id());
    let _ = Command::new("ip").args(["netns", "del", &name]).status();
    let st = Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .unwrap();
    assert!(st.success());
    let ns = Netns(name);
    let st = Command::new("ip")
        .args(["-n", &ns.0, "link", "set", "lo", "up"])
        .status()
        .unwrap();
    assert!(st.success());
    let resolv = Path::new("/etc/resolv.conf");
    let before = fs::read(resolv).ok();

    // In the host's namespace: nothing to refuse.
    assert!(NamespaceView::PROC.host_file_conflict(resolv).is_none());

    let netns_path = format!("/run/netns/{}", ns.0);
    let name = ns.0.clone();
    let backup = tempfile::tempdir().unwrap();
    let backup_dir = backup.path().to_owned();
    std::thread::spawn(move || {
        // This thread only: the test process stays in the host's namespace.
        setns(File::open(&netns_path).unwrap(), CloneFlags::CLONE_NEWNET).unwrap();
        let conflict = NamespaceView::PROC.host_file_conflict(resolv);
        let Some(DnsError::HostFileInNamespace {
            path,
            netns,
            private,
        }) = conflict
        else {
            panic!("not refused in a foreign namespace: {conflict:?}");
        };
        assert_eq!(path, resolv);
        assert_eq!(netns, name);
        assert_eq!(
            private,
            Path::new("/etc/netns").join(&name).join("resolv.conf")
        );
        // The service refuses to start, before writing anything.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let cfg = DnsConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            upstreams: Upstreams::Static(Vec::new()),
            system: SystemMode::Auto(SystemPaths::new(&backup_dir)),
            stats: Default::default(),
            ..DnsConfig::new("/nonexistent")
        };
        let err = rt.block_on(DnsService::start(cfg)).expect_err("refused");
        assert!(matches!(err, DnsError::HostFileInNamespace { .. }), "{err}");
        assert!(err.to_string().contains("--dns off"), "{err}");

        // With the namespace's own file, that file is managed; /etc/resolv.conf
        // stays refused while it is not mounted there (this thread kept the
        // host's mount namespace).
        let private = Path::new("/etc/netns").join(&name).join("resolv.conf");
        fs::create_dir_all(private.parent().unwrap()).unwrap();
        fs::write(&private, "nameserver 127.0.3.1\n").unwrap();
        let own_file = NamespaceView::PROC.host_file_conflict(&private);
        let still = NamespaceView::PROC.host_file_conflict(resolv);
        let _ = fs::remove_dir_all(private.parent().unwrap());
        let _ = fs::remove_dir("/etc/netns");
        assert!(own_file.is_none(), "{own_file:?}");
        assert!(still.is_some());
    })
    .join()
    .unwrap();
    assert_eq!(fs::read(resolv).ok(), before, "the host's file was changed");
    assert!(
        fs::read_dir(backup.path()).unwrap().next().is_none(),
        "nothing backed up"
    );
}
