//! `weft ssh [USER@]NODE [-- CMD...]`: log in to a node's `weftd --ssh` with
//! the system's `ssh`, trusting exactly the host key the map publishes (no
//! trust-on-first-use prompt), and `weft ssh --config`: an ssh_config snippet
//! so `scp -F FILE`, `rsync -e "ssh -F FILE"` and `ssh -F FILE -L ...` work
//! by node name.
//!
//! The agent answers which nodes this node may log in to (the map's
//! `ssh_hosts`: address, port, host key, users). This writes them to a
//! known_hosts file of its own (`$XDG_RUNTIME_DIR/weft/known_hosts`, else
//! `~/.cache/weft/known_hosts`, 0600), each key under the node's name, its
//! `NODE.NETWORK.DOMAIN` name and its overlay address, and runs `ssh` with
//! that file only, `StrictHostKeyChecking=yes` and `HostKeyAlias` set to the
//! node's full name.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Args;
use weft_proto::local::{LocalRequest, LocalResponse};
use weft_proto::ssh::{DEFAULT_SSH_PORT, SshHost, SshServerStatus};

use super::call;
use crate::CodedError;
use crate::cmd::format::{out, safe};

/// `weft ssh`.
#[derive(Debug, Args)]
pub struct SshArgs {
    /// The node to log in to: `NODE`, `NODE.NETWORK.DOMAIN` or its overlay
    /// address, optionally `USER@` in front (default: the first user the
    /// policy grants this node there).
    #[arg(value_name = "[USER@]NODE", required_unless_present = "config")]
    pub target: Option<String>,
    /// Print an ssh_config snippet for every node this node may log in to
    /// (Host NODE NODE.NETWORK.DOMAIN with HostName, Port, User and the
    /// known_hosts file), for `scp -F FILE`, `rsync -e "ssh -F FILE"`.
    #[arg(long, conflicts_with = "target")]
    pub config: bool,
    /// With `--config`: write the snippet to FILE (0600) instead of printing it.
    #[arg(long, value_name = "FILE", requires = "config")]
    pub output: Option<PathBuf>,
    /// Forward a local port through the node (`ssh -L`), e.g.
    /// `8080:localhost:80`; may be repeated.
    #[arg(short = 'L', value_name = "[BIND:]PORT:HOST:HOSTPORT")]
    pub local_forward: Vec<String>,
    /// Another option for `ssh` itself (`--ssh-arg=-N`); may be repeated.
    #[arg(long = "ssh-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub ssh_args: Vec<String>,
    /// The command to run there (after `--`); none: an interactive shell.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Options every `ssh` run gets: only the map's host keys count, and no key,
/// password or agent is offered (the overlay source address is the login).
fn fixed_options(known_hosts: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("UserKnownHostsFile", known_hosts.display().to_string()),
        ("GlobalKnownHostsFile", "/dev/null".into()),
        ("StrictHostKeyChecking", "yes".into()),
        ("CheckHostIP", "no".into()),
        ("UpdateHostKeys", "no".into()),
        ("PubkeyAuthentication", "no".into()),
        ("PasswordAuthentication", "no".into()),
        ("KbdInteractiveAuthentication", "no".into()),
        ("GSSAPIAuthentication", "no".into()),
    ]
}

/// `weft ssh`: execs `ssh` (only returns on an error) or prints the config.
pub fn ssh(socket: &Path, args: SshArgs) -> anyhow::Result<ExitCode> {
    let (hosts, domains) = match call(socket, &LocalRequest::SshHosts)? {
        LocalResponse::SshHosts { hosts, domains } => (hosts, domains),
        LocalResponse::Error { code, message } => return Err(CodedError { code, message }.into()),
        _ => bail!("the agent does not answer SSH questions (upgrade weftd)"),
    };
    let known_hosts = write_known_hosts(&hosts, &domains)?;
    if args.config {
        let text = config_snippet(&hosts, &domains, &known_hosts);
        match &args.output {
            Some(path) => {
                write_private(path, text.as_bytes())?;
                out(&format!(
                    "wrote {} ({} hosts); use scp -F {0} or rsync -e \"ssh -F {0}\"\n",
                    path.display(),
                    hosts.len()
                ));
            }
            None => out(&text),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let target = args.target.as_deref().unwrap_or_default();
    let (user, host) = resolve(&hosts, &domains, target)?;
    let mut cmd = std::process::Command::new("ssh");
    for (k, v) in fixed_options(&known_hosts) {
        cmd.arg("-o").arg(format!("{k}={v}"));
    }
    cmd.arg("-o")
        .arg(format!("HostKeyAlias={}", fqdn(host, &domains)));
    cmd.arg("-p").arg(host.port.to_string());
    for l in &args.local_forward {
        cmd.arg("-L").arg(l);
    }
    cmd.args(&args.ssh_args);
    cmd.arg(format!("{user}@{}", host.addr));
    if !args.command.is_empty() {
        cmd.arg("--").args(&args.command);
    }
    let err = cmd.exec();
    Err(CodedError {
        code: "ssh_missing".into(),
        message: format!(
            "cannot run ssh: {err} (install the OpenSSH client: apt-get install openssh-client)"
        ),
    }
    .into())
}

/// `weft status`'s SSH lines (weftd --ssh).
pub(super) fn render_status(o: &mut String, s: &SshServerStatus) {
    let listening = if s.listening.is_empty() {
        "no overlay address yet".to_owned()
    } else {
        s.listening
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        o,
        "ssh       listening {listening}; sessions: {} open, {} accepted, {} refused",
        s.sessions_open, s.sessions_total, s.refused_total
    );
    if !s.host_key.is_empty() {
        let _ = writeln!(o, "          host key {}", safe(&s.host_key));
    }
    if let Some(e) = &s.error {
        let _ = writeln!(o, "          not serving: {}", safe(e));
    }
}

/// `NODE.NETWORK.DOMAIN` of `h` (its `node` when the domain is unknown).
fn fqdn(h: &SshHost, domains: &BTreeMap<String, String>) -> String {
    match domains.get(&h.network) {
        Some(d) if !d.is_empty() => format!("{}.{}.{}", h.node, h.network, d.trim_end_matches('.')),
        _ => h.node.clone(),
    }
}

/// The user and host `target` names, or why not (a node this node may not
/// log in to, a user the policy does not grant).
fn resolve<'a>(
    hosts: &'a [SshHost],
    domains: &BTreeMap<String, String>,
    target: &str,
) -> anyhow::Result<(String, &'a SshHost)> {
    let (user, name) = match target.rsplit_once('@') {
        Some((u, n)) => (Some(u), n),
        None => (None, target),
    };
    let name = name.trim_end_matches('.');
    let Some(host) = hosts
        .iter()
        .find(|h| h.node == name || fqdn(h, domains) == name || h.addr.to_string() == name)
    else {
        let may: Vec<&str> = hosts.iter().map(|h| h.node.as_str()).collect();
        return Err(CodedError {
            code: "ssh_not_allowed".into(),
            message: format!(
                "this node may not log in to {name:?} over SSH: no [[ssh]] rule of the policy lets \
                 it, or {name} does not run weftd --ssh. {}",
                if may.is_empty() {
                    "It may log in to no node.".to_owned()
                } else {
                    format!("It may log in to: {}.", may.join(", "))
                }
            ),
        }
        .into());
    };
    let user = match user {
        Some(u) => u.to_owned(),
        None => match host.users.iter().find(|u| *u != "*") {
            Some(u) => u.clone(),
            None => local_user()?,
        },
    };
    let granted = host
        .users
        .iter()
        .any(|u| *u == user || (u == "*" && user != "root"));
    if !granted {
        return Err(CodedError {
            code: "ssh_not_allowed".into(),
            message: format!(
                "the policy does not let this node log in to {} as {user}; it may log in as: {}",
                host.node,
                host.users.join(", ")
            ),
        }
        .into());
    }
    Ok((user, host))
}

/// The name of the user running `weft` (for a `*` grant).
fn local_user() -> anyhow::Result<String> {
    let uid = nix::unistd::getuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(u)) => Ok(u.name),
        _ => bail!("cannot find the name of user {uid}: give one, weft ssh USER@NODE"),
    }
}

/// The known_hosts line of `h`: its names (node, full name, overlay address
/// with the port when not 22) and its key.
fn known_hosts_line(h: &SshHost, domains: &BTreeMap<String, String>) -> String {
    let addr = if h.port == DEFAULT_SSH_PORT {
        h.addr.to_string()
    } else {
        format!("[{}]:{}", h.addr, h.port)
    };
    format!(
        "{},{},{addr} {}\n",
        fqdn(h, domains),
        h.node,
        h.host_key.trim()
    )
}

/// Where the known_hosts file goes: `$XDG_RUNTIME_DIR/weft`, else
/// `~/.cache/weft` (made 0700).
fn state_dir() -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("weft"),
        None => match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
            Some(h) => PathBuf::from(h).join(".cache").join("weft"),
            None => {
                bail!("neither XDG_RUNTIME_DIR nor HOME is set: cannot place the known_hosts file")
            }
        },
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Writes every host's key; the file's path.
fn write_known_hosts(
    hosts: &[SshHost],
    domains: &BTreeMap<String, String>,
) -> anyhow::Result<PathBuf> {
    let path = state_dir()?.join("known_hosts");
    let mut text = String::from(
        "# written by weft ssh from this node's network map; rewritten on every run\n",
    );
    for h in hosts {
        text.push_str(&known_hosts_line(h, domains));
    }
    write_private(&path, text.as_bytes())?;
    Ok(path)
}

/// Writes `bytes` to `path` (0600) through a temporary file and a rename.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.set_permissions(fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(f);
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// The ssh_config snippet for `hosts`.
fn config_snippet(
    hosts: &[SshHost],
    domains: &BTreeMap<String, String>,
    known_hosts: &Path,
) -> String {
    let mut s = String::from(
        "# written by weft ssh --config from this node's network map; run it again when the map changes\n",
    );
    if hosts.is_empty() {
        s.push_str("# (this node may log in to no node over SSH)\n");
    }
    for h in hosts {
        let full = fqdn(h, domains);
        let _ = writeln!(s, "Host {} {full}", h.node);
        let _ = writeln!(s, "    HostName {}", h.addr);
        let _ = writeln!(s, "    Port {}", h.port);
        if let Some(u) = h.users.iter().find(|u| *u != "*") {
            let _ = writeln!(s, "    User {u}");
        }
        let _ = writeln!(s, "    HostKeyAlias {full}");
        for (k, v) in fixed_options(known_hosts) {
            let _ = writeln!(s, "    {k} {v}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(node: &str, users: &[&str], port: u16) -> SshHost {
        SshHost {
            node_key: weft_proto::NodeKey::from_bytes([1; 32]),
            node: node.into(),
            network: "prod".into(),
            addr: "100.64.0.3".parse().unwrap(),
            port,
            host_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA".into(),
            users: users.iter().map(|u| (*u).to_owned()).collect(),
        }
    }

    fn domains() -> BTreeMap<String, String> {
        [("prod".to_owned(), "weft.internal".to_owned())].into()
    }

    #[test]
    fn a_target_names_a_listed_node_and_a_granted_user() {
        let hosts = vec![host("db1", &["deploy", "ops"], 22)];
        let d = domains();
        let (u, h) = resolve(&hosts, &d, "db1").unwrap();
        assert_eq!((u.as_str(), h.node.as_str()), ("deploy", "db1"));
        let (u, _) = resolve(&hosts, &d, "ops@db1.prod.weft.internal.").unwrap();
        assert_eq!(u, "ops");
        assert!(resolve(&hosts, &d, "root@db1").is_err());
        let e = resolve(&hosts, &d, "web1").unwrap_err().to_string();
        assert!(
            e.contains("may not log in to \"web1\"") && e.contains("db1"),
            "{e}"
        );
        let star = vec![host("db2", &["*"], 22)];
        assert!(resolve(&star, &d, "alice@db2").is_ok());
        assert!(
            resolve(&star, &d, "root@db2").is_err(),
            "* never means root"
        );
    }

    #[test]
    fn known_hosts_and_config_name_the_node_every_way() {
        let d = domains();
        assert_eq!(
            known_hosts_line(&host("db1", &["deploy"], 22), &d),
            "db1.prod.weft.internal,db1,100.64.0.3 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA\n"
        );
        assert!(
            known_hosts_line(&host("db1", &["deploy"], 2222), &d).contains("[100.64.0.3]:2222")
        );
        let c = config_snippet(&[host("db1", &["deploy"], 2222)], &d, Path::new("/k"));
        for want in [
            "Host db1 db1.prod.weft.internal\n",
            "    HostName 100.64.0.3\n",
            "    Port 2222\n",
            "    User deploy\n",
            "    HostKeyAlias db1.prod.weft.internal\n",
            "    UserKnownHostsFile /k\n",
            "    StrictHostKeyChecking yes\n",
        ] {
            assert!(c.contains(want), "{want:?} in {c}");
        }
    }
}
