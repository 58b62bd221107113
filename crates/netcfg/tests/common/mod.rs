//! Throwaway network namespaces for the root tests (`netlink_netns`,
//! `hostfw_netns`).

#![allow(dead_code, reason = "each test binary uses part of it")]

use std::fs::File;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::sched::{CloneFlags, setns};
use weft_netcfg::exec::linux::NetlinkExecutor;

/// A network namespace owned by one test.
pub(crate) struct Netns {
    pub(crate) name: String,
}

impl Netns {
    pub(crate) fn new() -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "weft-netcfg's netlink tests need root: they create network namespaces \
             (run `cargo nextest run -p weft-netcfg` as root)"
        );
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "wnc-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run_ip(&["netns", "add", &name]);
        Self { name }
    }

    /// Runs `ip -n <ns> args…`, panicking on failure; returns stdout.
    pub(crate) fn ip(&self, args: &[&str]) -> String {
        run_ip(&[&["-n", &self.name], args].concat())
    }

    /// An executor whose socket lives in this namespace: opened on a thread that
    /// entered it, then usable from any thread.
    pub(crate) fn executor(&self) -> NetlinkExecutor {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = File::open(&path).expect("open netns");
            setns(ns, CloneFlags::CLONE_NEWNET).expect("setns");
            NetlinkExecutor::new().expect("netlink socket")
        })
        .join()
        .expect("executor thread")
    }

    /// Namespace with a TUN `weft0` as the data plane makes it (down, MTU 1500).
    pub(crate) fn with_weft0() -> Self {
        let ns = Self::new();
        ns.ip(&["tuntap", "add", "mode", "tun", "name", "weft0"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub(crate) fn run_ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("the `ip` command (iproute2) is needed");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Netns {
    /// Runs `f` on a thread that entered this namespace (sockets it opens,
    /// `nft` it starts and sysctls it writes are this namespace's).
    pub(crate) fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = File::open(&path).expect("open netns");
            setns(ns, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("thread in the namespace")
    }

    /// Runs `nft args…` in this namespace; returns (success, stdout + stderr).
    pub(crate) fn nft(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft"])
            .args(args)
            .output()
            .expect("the `nft` command is needed");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}
