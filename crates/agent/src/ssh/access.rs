//! Who may log in as whom: the connection's overlay source address names
//! the client node (the tunnel only delivers a peer's packets from that
//! peer's addresses), and this node's compiled policy lists, per client, the
//! local users it may use ([`CompiledPolicy::ssh_inbound`]). No key or
//! password is involved: a grant lets any process on the client node log in
//! as the granted users.

use std::net::IpAddr;

use weft_proto::policy::CompiledPolicy;
use weft_proto::ssh::check_user;

/// The local user a login runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LocalUser {
    pub(crate) name: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) home: std::path::PathBuf,
    pub(crate) shell: std::path::PathBuf,
}

impl LocalUser {
    /// Looks `name` up in the system's user database (`None`: no such user).
    pub(crate) fn lookup(name: &str) -> Result<Option<Self>, String> {
        match nix::unistd::User::from_name(name) {
            Ok(Some(u)) => Ok(Some(Self {
                name: u.name,
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
                home: u.dir,
                shell: u.shell,
            })),
            Ok(None) => Ok(None),
            Err(e) => Err(format!("cannot look up the local user {name:?}: {e}")),
        }
    }

    /// Whether its shell refuses logins (`nologin`, `false`).
    pub(crate) fn no_login(&self) -> bool {
        let base = self
            .shell
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        base.is_empty() || base == "nologin" || base == "false"
    }
}

/// Why a login was refused, and who asked if the address is a known client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) from_node: Option<String>,
    pub(crate) reason: String,
}

/// Whether the connection from `from` may log in as `user` under `policy`:
/// the client node's name, or why not. `*` grants any user but `root`, which
/// must be named.
pub(crate) fn decide(
    policy: Option<&CompiledPolicy>,
    from: IpAddr,
    user: &str,
) -> Result<String, Refusal> {
    let from = canonical(from);
    let refuse = |from_node: Option<String>, reason: String| Refusal { from_node, reason };
    let Some(policy) = policy else {
        return Err(refuse(
            None,
            "this node has no usable access policy (see weft status)".into(),
        ));
    };
    let grants: Vec<_> = policy
        .ssh_inbound
        .iter()
        .filter(|g| g.addrs.iter().any(|a| a.contains(&from)))
        .collect();
    let Some(first) = grants.first() else {
        return Err(refuse(
            None,
            format!("no [[ssh]] rule lets {from} log in to this node"),
        ));
    };
    let peer = first.peer.clone();
    if !check_user(user) || user == "*" {
        return Err(refuse(
            Some(peer),
            format!("{user:?} is not a valid user name"),
        ));
    }
    let granted = grants.iter().any(|g| {
        g.users
            .iter()
            .any(|u| u == user || (u == "*" && user != "root"))
    });
    if granted {
        Ok(peer)
    } else {
        let mut allowed: Vec<&str> = grants
            .iter()
            .flat_map(|g| g.users.iter().map(String::as_str))
            .collect();
        allowed.sort_unstable();
        allowed.dedup();
        Err(refuse(
            Some(peer.clone()),
            format!(
                "{peer} may not log in as {user} (the policy grants: {})",
                allowed.join(", ")
            ),
        ))
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it carries.
pub(crate) fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::policy::SshGrant;

    fn policy(grants: Vec<SshGrant>) -> CompiledPolicy {
        CompiledPolicy {
            ssh_inbound: grants,
            ..CompiledPolicy::default()
        }
    }

    fn grant(peer: &str, addr: &str, users: &[&str]) -> SshGrant {
        SshGrant {
            rules: vec![],
            peer: peer.into(),
            addrs: vec![addr.parse().unwrap()],
            users: users.iter().map(|u| (*u).to_owned()).collect(),
        }
    }

    #[test]
    fn the_source_address_names_the_client_and_the_grant_names_the_users() {
        let p = policy(vec![
            grant("ops", "100.64.0.2/32", &["deploy"]),
            grant("admin", "100.64.0.3/32", &["*"]),
            grant("root-ok", "100.64.0.4/32", &["*", "root"]),
        ]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            decide(Some(&p), ip("100.64.0.2"), "deploy"),
            Ok("ops".into())
        );
        let e = decide(Some(&p), ip("100.64.0.2"), "root").unwrap_err();
        assert_eq!(e.from_node.as_deref(), Some("ops"));
        assert!(e.reason.contains("may not log in as root"), "{e:?}");
        assert_eq!(
            decide(Some(&p), ip("100.64.0.3"), "alice"),
            Ok("admin".into())
        );
        assert!(
            decide(Some(&p), ip("100.64.0.3"), "root").is_err(),
            "* is not root"
        );
        assert_eq!(
            decide(Some(&p), ip("100.64.0.4"), "root"),
            Ok("root-ok".into())
        );
        let e = decide(Some(&p), ip("100.64.0.9"), "deploy").unwrap_err();
        assert_eq!(e.from_node, None);
        assert!(e.reason.contains("no [[ssh]] rule"), "{e:?}");
        // An IPv4-mapped source is the IPv4 address.
        assert_eq!(
            decide(Some(&p), ip("::ffff:100.64.0.2"), "deploy"),
            Ok("ops".into())
        );
        assert!(decide(Some(&p), ip("100.64.0.3"), "Bad User").is_err());
        assert!(decide(Some(&p), ip("100.64.0.3"), "*").is_err());
        assert!(decide(None, ip("100.64.0.2"), "deploy").is_err());
    }
}
