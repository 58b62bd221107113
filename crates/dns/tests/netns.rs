//! End to end in a throwaway network namespace, the way the lab isolates a node:
//! `/etc/netns/NS/resolv.conf` is what `ip netns exec NS` mounts as
//! `/etc/resolv.conf`, so `getent` and `dig` there use the file weft manages.
//! A fake upstream listens on 127.0.3.1:53 in the namespace (the "previous
//! resolver"). Needs root; fails (never skips) without it. The namespace and its
//! `/etc/netns` directory are removed afterwards, also on failure.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use nix::sched::{CloneFlags, setns};
use nix::unistd::Uid;
use weft_dns::{
    DEFAULT_LISTEN, DnsConfig, DnsService, Record, SystemMode, SystemPaths, Upstreams, Zone,
};

const ORIGINAL: &[u8] =
    b"# the lab's resolver\nnameserver 127.0.3.1\noptions timeout:2 attempts:2\n";

struct Netns {
    name: String,
    etc: PathBuf,
}

impl Netns {
    fn new() -> Self {
        let name = format!("weft-dns-test-{}", std::process::id());
        let etc = PathBuf::from("/etc/netns").join(&name);
        if PathBuf::from("/run/netns").join(&name).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
        run_ok(&["ip", "netns", "add", &name]);
        let ns = Netns { name, etc };
        run_ok(&["ip", "-n", &ns.name, "link", "set", "lo", "up"]);
        fs::create_dir_all(&ns.etc).unwrap();
        fs::write(ns.resolv_conf(), ORIGINAL).unwrap();
        ns
    }

    fn resolv_conf(&self) -> PathBuf {
        self.etc.join("resolv.conf")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = fs::remove_dir_all(&self.etc);
        // Only if empty: other namespaces may keep files there.
        let _ = fs::remove_dir("/etc/netns");
    }
}

fn run_ok(args: &[&str]) {
    let st = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(st.success(), "{args:?}: {st}");
}

/// Runs `args` inside the namespace (with its resolv.conf) on a blocking thread,
/// so the resolver keeps serving meanwhile; (success, stdout).
async fn in_ns(ns: &str, args: &[&str]) -> (bool, String) {
    let mut full = vec!["netns".to_owned(), "exec".to_owned(), ns.to_owned()];
    full.extend(args.iter().map(|s| (*s).to_owned()));
    tokio::task::spawn_blocking(move || {
        let out = Command::new("ip").args(&full).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    })
    .await
    .unwrap()
}

fn rec(name: &str, network: &str, ip: [u8; 4], v6: Option<&str>) -> Record {
    Record {
        name: name.into(),
        network: network.into(),
        domain: "weft.internal".into(),
        ipv4: Some(Ipv4Addr::from(ip)),
        ipv6: v6.map(|s| s.parse().unwrap()),
    }
}

#[test]
fn getent_and_dig_in_a_namespace() {
    assert!(
        Uid::effective().is_root(),
        "this test creates a network namespace and must run as root (scripts/test.sh does)"
    );
    for tool in ["ip", "getent", "dig"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .unwrap()
                .status
                .success(),
            "{tool} is missing: run scripts/install-deps.sh"
        );
    }
    let ns = Netns::new();
    let backup = tempfile::tempdir().unwrap();
    // Enter the namespace before the runtime starts: its threads inherit it, so
    // every socket below lives there.
    setns(
        File::open(format!("/run/netns/{}", ns.name)).unwrap(),
        CloneFlags::CLONE_NEWNET,
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (_up, log) = common::fake_upstream("127.0.3.1:53".parse().unwrap()).await;
        let mut dns = DnsService::start(DnsConfig {
            listen: DEFAULT_LISTEN,
            upstreams: Upstreams::FromSystem,
            system: SystemMode::ResolvConf(SystemPaths {
                resolv_conf: ns.resolv_conf(),
                backup_dir: backup.path().to_owned(),
                resolved_stub: backup.path().join("absent"),
                resolved_upstreams: backup.path().join("absent"),
            }),
            stats: Default::default(),
            ..DnsConfig::new("/nonexistent")
        })
        .await
        .unwrap();
        assert_eq!(
            dns.upstreams(),
            [weft_dns::Upstream::Udp("127.0.3.1:53".parse().unwrap())]
        );
        let managed = fs::read_to_string(ns.resolv_conf()).unwrap();
        assert!(managed.contains("nameserver 127.0.2.53\n"), "{managed}");
        dns.set_zone(Zone::from_records(vec![
            rec("db", "prod", [100, 64, 0, 2], None),
            rec("web", "prod", [100, 64, 0, 3], Some("fd00::3")),
            rec("web", "dev", [100, 65, 0, 3], None),
        ]))
        .unwrap();

        let (ok, out) = in_ns(&ns.name, &["getent", "hosts", "db.prod.weft.internal"]).await;
        assert!(ok && out.starts_with("100.64.0.2 "), "{out}");
        let (ok, out) = in_ns(&ns.name, &["getent", "hosts", "100.64.0.2"]).await;
        assert!(
            ok && out.contains("db.prod.weft.internal"),
            "reverse: {out}"
        );
        let (ok, out) = in_ns(&ns.name, &["getent", "hosts", "db.weft.internal"]).await;
        assert!(ok && out.starts_with("100.64.0.2 "), "short name: {out}");
        let (ok, out) = in_ns(
            &ns.name,
            &["dig", "+short", "+tries=1", "db.prod.weft.internal"],
        )
        .await;
        assert!(ok && out.trim() == "100.64.0.2", "dig: {out}");
        let (ok, out) = in_ns(
            &ns.name,
            &[
                "dig",
                "+short",
                "+tries=1",
                "AAAA",
                "web.prod.weft.internal",
            ],
        )
        .await;
        assert!(ok && out.trim() == "fd00::3", "dig AAAA: {out}");
        let (ok, out) = in_ns(
            &ns.name,
            &["dig", "+short", "+tcp", "web.dev.weft.internal"],
        )
        .await;
        assert!(ok && out.trim() == "100.65.0.3", "dig +tcp: {out}");
        // Ambiguous short name and unknown names: no answer, and nothing leaks.
        let (ok, _) = in_ns(&ns.name, &["getent", "hosts", "web.weft.internal"]).await;
        assert!(!ok, "web is in two networks");
        let (ok, _) = in_ns(&ns.name, &["getent", "hosts", "nope.prod.weft.internal"]).await;
        assert!(!ok);
        assert!(
            log.0
                .lock()
                .unwrap()
                .iter()
                .all(|(_, n)| !n.ends_with("weft.internal.")),
            "overlay names reached the upstream: {:?}",
            log.0.lock().unwrap()
        );

        // Other names go to the previous resolver, once (then the cache). getent
        // asks AAAA (cached as no data) and A.
        let (ok, out) = in_ns(&ns.name, &["getent", "hosts", "www.example.test"]).await;
        assert!(ok && out.starts_with("192.0.2.10 "), "forwarded: {out}");
        let asked = log.count("www.example.test.");
        assert!((1..=2).contains(&asked), "{:?}", log.0.lock().unwrap());
        let (ok, out) = in_ns(&ns.name, &["dig", "+short", "www.example.test"]).await;
        assert!(ok && out.trim() == "192.0.2.10", "{out}");
        let (ok, _) = in_ns(&ns.name, &["getent", "hosts", "www.example.test"]).await;
        assert!(ok);
        assert_eq!(
            log.count("www.example.test."),
            asked,
            "answered from the cache"
        );

        // A rename is visible at once.
        dns.set_zone(Zone::from_records(vec![rec(
            "database",
            "prod",
            [100, 64, 0, 2],
            None,
        )]))
        .unwrap();
        let started = tokio::time::Instant::now();
        let (ok, out) = in_ns(
            &ns.name,
            &["getent", "hosts", "database.prod.weft.internal"],
        )
        .await;
        assert!(ok && out.starts_with("100.64.0.2 "), "after rename: {out}");
        assert!(started.elapsed() < Duration::from_secs(1));
        let (ok, _) = in_ns(&ns.name, &["getent", "hosts", "db.prod.weft.internal"]).await;
        assert!(!ok, "the old name is gone");

        // Another program rewrites resolv.conf: weft takes it as the new original.
        fs::write(ns.resolv_conf(), ORIGINAL).unwrap();
        assert!(matches!(
            dns.check_drift().unwrap(),
            weft_dns::Drift::NewOriginal { .. }
        ));
        let (ok, _) = in_ns(
            &ns.name,
            &["getent", "hosts", "database.prod.weft.internal"],
        )
        .await;
        assert!(ok, "managed again after the drift repair");

        // Stop: the file is exactly as before and other names still resolve.
        dns.stop().await.unwrap();
        assert_eq!(fs::read(ns.resolv_conf()).unwrap(), ORIGINAL);
        let (ok, out) = in_ns(&ns.name, &["getent", "hosts", "www.example.test"]).await;
        assert!(ok && out.starts_with("192.0.2.10 "), "after stop: {out}");
        assert!(log.count("www.example.test.") > asked, "asked directly now");
    });
}
