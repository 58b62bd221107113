//! Whether the resolv.conf weft would manage is the host's, seen from another
//! network namespace.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::RESOLV_CONF;
use crate::error::DnsError;

/// Where this thread's network namespace and the host's are seen. Configurable
/// for tests; [`NamespaceView::PROC`] is the real one.
#[derive(Debug, Clone, Copy)]
pub struct NamespaceView<'a> {
    /// This thread's network namespace (`/proc/thread-self/ns/net`: `setns`
    /// moves one thread).
    pub own_netns: &'a str,
    /// The host's (`/proc/1/ns/net`: the first process, the host's or the
    /// container's this runs in).
    pub host_netns: &'a str,
    /// The host's root directory, as seen from here (`/proc/1/root`).
    pub host_root: &'a str,
    /// Named network namespaces (`/run/netns`, where `ip netns add` keeps them).
    pub named_netns: &'a str,
    /// Their private configuration files (`/etc/netns`: `ip netns exec NAME`
    /// mounts `/etc/netns/NAME/resolv.conf` over `/etc/resolv.conf`).
    pub netns_etc: &'a str,
}

impl NamespaceView<'static> {
    /// The real one.
    pub const PROC: NamespaceView<'static> = NamespaceView {
        own_netns: "/proc/thread-self/ns/net",
        host_netns: "/proc/1/ns/net",
        host_root: "/proc/1/root",
        named_netns: "/run/netns",
        netns_etc: "/etc/netns",
    };
}

/// A file's identity (device and inode), following symlinks.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl NamespaceView<'_> {
    /// Refuses to manage `resolv_conf` when this thread runs in a network
    /// namespace other than the host's but `resolv_conf` is still the host's
    /// resolver configuration. That is what `ip netns exec NAME` gives when
    /// `/etc/netns/NAME/resolv.conf` does not exist, and what `nsenter --net` or
    /// `unshare -n` always give: writing the file would point the host's DNS at
    /// a resolver on this namespace's loopback, which the host cannot reach.
    ///
    /// Decided by the first of these that can be read:
    /// 1. the host's namespace and root (`/proc/1`, readable with
    ///    `CAP_SYS_PTRACE`): same namespace, no conflict; else a conflict when
    ///    `resolv_conf` is the inode the host sees at `/etc/resolv.conf`
    ///    (symlinks followed on each side, the host's under its root);
    /// 2. the named namespaces (`/run/netns`): in namespace NAME, a conflict
    ///    unless `resolv_conf` is `/etc/netns/NAME/resolv.conf` (mounted over
    ///    `/etc/resolv.conf` by `ip netns exec`, or named directly).
    ///
    /// `None` when neither tells (not root, no `/proc`, a namespace that is not
    /// named): nothing is refused.
    pub fn host_file_conflict(&self, resolv_conf: &Path) -> Option<DnsError> {
        let own = file_id(Path::new(self.own_netns))?;
        let conflict = |name: Option<&str>| {
            Some(DnsError::HostFileInNamespace {
                path: resolv_conf.to_owned(),
                netns: name.map_or_else(
                    || {
                        fs::read_link(self.own_netns)
                            .map_or_else(|_| "unnamed".into(), |l| l.display().to_string())
                    },
                    str::to_owned,
                ),
                private: Path::new(self.netns_etc)
                    .join(name.unwrap_or("NAME"))
                    .join("resolv.conf"),
            })
        };
        if let Some(host) = file_id(Path::new(self.host_netns)) {
            if host == own {
                return None;
            }
            let hosts_file = self
                .host_path(Path::new(RESOLV_CONF))
                .and_then(|p| file_id(&p));
            if let Some(theirs) = hosts_file {
                return if file_id(resolv_conf)? == theirs {
                    conflict(self.named(own).as_deref())
                } else {
                    None
                };
            }
        }
        let name = self.named(own)?;
        let private = Path::new(self.netns_etc).join(&name).join("resolv.conf");
        match file_id(&private) {
            Some(p) if file_id(resolv_conf) == Some(p) => None,
            _ => conflict(Some(&name)),
        }
    }

    /// The name under which `ip netns` knows the namespace `id`, if any.
    fn named(&self, id: (u64, u64)) -> Option<String> {
        fs::read_dir(self.named_netns)
            .ok()?
            .filter_map(Result::ok)
            .find(|e| file_id(&e.path()) == Some(id))
            .map(|e| e.file_name().to_string_lossy().into_owned())
    }

    /// `path` as the host sees it: under its root, each symlink resolved there
    /// (an absolute target means the host's root, not ours).
    fn host_path(&self, path: &Path) -> Option<PathBuf> {
        let root = Path::new(self.host_root);
        let mut p = root.join(path.strip_prefix("/").unwrap_or(path));
        for _ in 0..16 {
            let Ok(target) = fs::read_link(&p) else {
                return Some(p);
            };
            p = match target.strip_prefix("/") {
                Ok(abs) => root.join(abs),
                Err(_) => p.parent()?.join(target),
            };
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::ORIGINAL;
    use super::*;

    #[test]
    fn a_namespace_sharing_the_hosts_resolv_conf_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = |p: &str| dir.path().join(p);
        let s = |p: &Path| p.to_str().unwrap().to_owned();
        // Two namespace "inodes"; a host root whose /etc/resolv.conf is an
        // absolute symlink into /run (as with systemd-resolved); `ip netns`'
        // directories, where `lab1` is this thread's namespace.
        fs::write(d("ns-own"), "").unwrap();
        fs::write(d("ns-host"), "").unwrap();
        fs::create_dir_all(d("root/etc")).unwrap();
        fs::create_dir_all(d("root/run/resolve")).unwrap();
        fs::write(d("root/run/resolve/stub.conf"), ORIGINAL).unwrap();
        std::os::unix::fs::symlink("/run/resolve/stub.conf", d("root/etc/resolv.conf")).unwrap();
        fs::create_dir_all(d("run-netns")).unwrap();
        fs::hard_link(d("ns-own"), d("run-netns/lab1")).unwrap();
        fs::create_dir_all(d("etc-netns/lab1")).unwrap();
        fs::write(d("etc-netns/lab1/resolv.conf"), ORIGINAL).unwrap();
        let hosts = d("root/run/resolve/stub.conf");
        let private = d("etc-netns/lab1/resolv.conf");
        let (own, host, root) = (s(&d("ns-own")), s(&d("ns-host")), s(&d("root")));
        let (named, etc) = (s(&d("run-netns")), s(&d("etc-netns")));
        let view = NamespaceView {
            own_netns: &own,
            host_netns: &host,
            host_root: &root,
            named_netns: &named,
            netns_etc: &etc,
        };
        let refused = |v: &NamespaceView<'_>, ours: &Path| match v.host_file_conflict(ours) {
            Some(DnsError::HostFileInNamespace {
                netns, private: p, ..
            }) => (netns, p),
            other => panic!("not refused: {other:?}"),
        };

        // 1. The host is visible: the file its /etc/resolv.conf leads to (the
        // absolute symlink resolved under the host's root, not ours) is
        // refused; the namespace's own file is managed.
        assert_eq!(refused(&view, &hosts), ("lab1".into(), private.clone()));
        let msg = view.host_file_conflict(&hosts).unwrap().to_string();
        for part in [
            "etc-netns/lab1/resolv.conf",
            "--dns off",
            "network namespace",
            "lab1",
        ] {
            assert!(msg.contains(part), "{msg}");
        }
        assert!(view.host_file_conflict(&private).is_none());
        assert!(view.host_file_conflict(&d("root/etc/other.conf")).is_none());
        // In the host's namespace itself: managed.
        let host_ns = NamespaceView {
            own_netns: &host,
            ..view
        };
        assert!(host_ns.host_file_conflict(&hosts).is_none());

        // 2. The host is not visible (no CAP_SYS_PTRACE): in the named
        // namespace, anything but its own file is refused.
        let blind = NamespaceView {
            host_netns: "/nonexistent/ns/net",
            host_root: "/nonexistent/root",
            ..view
        };
        assert_eq!(refused(&blind, &hosts).0, "lab1");
        assert!(blind.host_file_conflict(&private).is_none());
        fs::remove_file(&private).unwrap();
        assert_eq!(refused(&blind, &private.with_file_name("x")).1, private);
        // A namespace `ip netns` does not know (or the initial one): nothing to
        // compare, managed as before.
        let unnamed = NamespaceView {
            named_netns: "/nonexistent/run/netns",
            ..blind
        };
        assert!(unnamed.host_file_conflict(&hosts).is_none());
    }
}
