//! A weft deployment inside a lab: a real `weft-controller` and real `weftd`
//! agents in lab nodes, driven through their CLIs (`weft admin`,
//! `weft status --json`) exactly as a user would. Used by the demo and the
//! end-to-end tests.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context as _, bail};
use weft_proto::local::AgentStatus;

use crate::{Lab, Process, bin_path, wait_until};

/// The controller's port inside the lab.
pub const CONTROLLER_PORT: u16 = 8443;

/// The overlay network a mesh creates.
#[derive(Debug, Clone)]
pub struct NetworkSpec {
    /// Name.
    pub name: String,
    /// IPv4 prefix.
    pub cidr: String,
    /// Proof-of-work bits required to join (small in the lab: debug builds mint
    /// slowly).
    pub pow_difficulty: u32,
}

impl Default for NetworkSpec {
    fn default() -> Self {
        Self {
            name: "lab".into(),
            cidr: "100.64.0.0/24".into(),
            pow_difficulty: 12,
        }
    }
}

/// The running controller.
#[derive(Debug)]
pub struct Controller {
    /// Lab node it runs in.
    pub node: String,
    /// The process.
    pub process: Process,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// URL agents use.
    pub url: String,
    /// TLS certificate fingerprint (`sha256:<hex>`), pinned by the agents.
    pub fingerprint: String,
}

/// A running (or stopped) agent.
#[derive(Debug)]
pub struct Agent {
    /// Lab node it runs in.
    pub node: String,
    /// The process, while running.
    pub process: Option<Process>,
    /// Its state directory.
    pub state_dir: PathBuf,
    /// Its local API socket.
    pub socket: PathBuf,
}

/// A running relay.
#[derive(Debug)]
pub struct RelayProc {
    /// Lab node it runs in.
    pub node: String,
    /// The process.
    pub process: Process,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its name on the controller.
    pub name: String,
    /// Its token file.
    pub token_file: PathBuf,
}

/// The relay's TLS port inside the lab.
pub const RELAY_PORT: u16 = 443;
/// The relay's STUN port inside the lab.
pub const STUN_PORT: u16 = 3478;
/// The relay's alternate STUN port (RFC 5780 OTHER-ADDRESS), for `weft netcheck`.
pub const STUN_ALT_PORT: u16 = 3479;

/// A controller, a network, and agents.
#[derive(Debug)]
pub struct Mesh<'l> {
    lab: &'l Lab,
    /// The controller.
    pub controller: Controller,
    /// The relay, once started.
    pub relay: Option<RelayProc>,
    /// Agents by node name.
    pub agents: BTreeMap<String, Agent>,
    /// The network.
    pub network: NetworkSpec,
    restarts: u32,
    /// Extra `weft-controller serve` arguments, for every start and replica.
    controller_args: Vec<String>,
}

impl<'l> Mesh<'l> {
    /// Starts a controller in `controller_node` and creates `network`.
    pub fn start(
        lab: &'l Lab,
        controller_node: &str,
        network: NetworkSpec,
    ) -> anyhow::Result<Self> {
        Self::start_with_args(lab, controller_node, network, &[])
    }

    /// [`Mesh::start`] with extra `weft-controller serve` arguments, kept for
    /// restarts and replicas: `--database postgres://…` keeps the state in
    /// PostgreSQL, so that [`Mesh::start_replica`] can add replicas.
    pub fn start_with_args(
        lab: &'l Lab,
        controller_node: &str,
        network: NetworkSpec,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        let data_dir = lab.log_dir().join("controller-data");
        std::fs::create_dir_all(&data_dir)?;
        let controller_args: Vec<String> = args.iter().map(|&a| a.to_owned()).collect();
        let controller = start_controller(lab, controller_node, &data_dir, 0, &controller_args)?;
        let mesh = Self {
            lab,
            controller,
            relay: None,
            agents: BTreeMap::new(),
            network,
            restarts: 0,
            controller_args,
        };
        mesh.admin(&[
            "network",
            "create",
            &mesh.network.name,
            "--cidr",
            &mesh.network.cidr,
            "--pow-difficulty",
            &mesh.network.pow_difficulty.to_string(),
        ])?;
        Ok(mesh)
    }

    /// The lab.
    pub fn lab(&self) -> &'l Lab {
        self.lab
    }

    /// Runs `weft admin --data-dir DIR ARGS...` next to the controller and
    /// returns its stdout.
    pub fn admin(&self, args: &[&str]) -> anyhow::Result<String> {
        self.admin_at(&self.controller, args)
    }

    /// [`Mesh::admin`] through `replica` (its data directory names its URL,
    /// the admin token and the certificate).
    pub fn admin_at(&self, replica: &Controller, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new(bin_path("weft")?);
        cmd.arg("admin")
            .arg("--data-dir")
            .arg(&replica.data_dir)
            .args(args);
        let out = self
            .lab
            .exec(&replica.node, &cmd)
            .with_context(|| format!("weft admin {} (at {})", args.join(" "), replica.url))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts another replica of the controller in `node`, on the database
    /// of the first (the mesh must keep its state in one, see
    /// [`Mesh::start_with_args`]). Its own data directory holds copies of the
    /// first replica's TLS pair (one certificate, so agents pin one
    /// fingerprint for all replicas) and admin token.
    pub fn start_replica(&mut self, node: &str) -> anyhow::Result<Controller> {
        if !self.controller_args.iter().any(|a| a == "--database") {
            bail!("replicas share a database: start the mesh with --database");
        }
        let dir = self.lab.log_dir().join(format!("controller-data-{node}"));
        for d in [dir.clone(), dir.join("tls")] {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))?;
        }
        for f in ["admin.token", "tls/cert.pem", "tls/key.pem"] {
            let from = self.controller.data_dir.join(f);
            std::fs::copy(&from, dir.join(f))
                .with_context(|| format!("copying {} to {}", from.display(), dir.display()))?;
        }
        self.restarts += 1;
        start_controller(self.lab, node, &dir, self.restarts, &self.controller_args)
    }

    /// Starts `replica` again on its data directory (after a kill).
    pub fn restart_replica(&mut self, replica: &mut Controller) -> anyhow::Result<()> {
        let _ = replica.process.kill();
        self.restarts += 1;
        *replica = start_controller(
            self.lab,
            &replica.node,
            &replica.data_dir,
            self.restarts,
            &self.controller_args,
        )?;
        Ok(())
    }

    /// Registers a relay on the controller and starts `weft-relay` in `node`
    /// (TLS on [`RELAY_PORT`], STUN on [`STUN_PORT`] and [`STUN_ALT_PORT`]). Start it before the agents so
    /// their first map already lists it.
    pub fn start_relay(&mut self, node: &str) -> anyhow::Result<()> {
        let addr = self.lab.addr(node)?;
        let name = "relay1";
        let json = self.admin(&[
            "relay",
            "create",
            name,
            "--url",
            &format!("https://{addr}:{RELAY_PORT}"),
            "--json",
        ])?;
        let v: serde_json::Value =
            serde_json::from_str(&json).context("relay create --json output")?;
        let token = v["token"]
            .as_str()
            .context("no token in relay create output")?;
        let token_file = self.lab.log_dir().join("relay.token");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&token_file)?;
        f.write_all(token.as_bytes())?;
        let data_dir = self.lab.log_dir().join("relay-data");
        std::fs::create_dir_all(&data_dir)?;
        self.spawn_relay(node, name, &data_dir, &token_file, 0)
    }

    fn spawn_relay(
        &mut self,
        node: &str,
        name: &str,
        data_dir: &Path,
        token_file: &Path,
        generation: u32,
    ) -> anyhow::Result<()> {
        let addr = self.lab.addr(node)?;
        let mut cmd = Command::new(bin_path("weft-relay")?);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", &format!("0.0.0.0:{RELAY_PORT}")])
            .args(["--stun-listen", &format!("0.0.0.0:{STUN_PORT}")])
            .args(["--stun-alt-port", &STUN_ALT_PORT.to_string()])
            .args(["--controller", &self.controller.url])
            .arg("--relay-token-file")
            .arg(token_file)
            .args(["--pin-sha256", &self.controller.fingerprint])
            .args(["--tls-san", &addr.to_string()])
            .args(["--name", name])
            .args(["--log", "info"]);
        let mut process = self.lab.spawn(node, &format!("relay-{generation}"), &cmd)?;
        process
            .wait_for_tcp_listen(RELAY_PORT, Duration::from_secs(30))
            .context("relay did not start")?;
        self.relay = Some(RelayProc {
            node: node.to_owned(),
            process,
            data_dir: data_dir.to_owned(),
            name: name.to_owned(),
            token_file: token_file.to_owned(),
        });
        Ok(())
    }

    /// Kills the relay (SIGKILL).
    pub fn kill_relay(&mut self) -> anyhow::Result<()> {
        if let Some(r) = self.relay.as_mut() {
            r.process.kill()?;
        }
        Ok(())
    }

    /// Starts the relay again with the same identity and token.
    pub fn restart_relay(&mut self) -> anyhow::Result<()> {
        let r = self.relay.take().context("no relay started")?;
        let (node, name, dir, token) = (
            r.node.clone(),
            r.name.clone(),
            r.data_dir.clone(),
            r.token_file.clone(),
        );
        drop(r);
        self.spawn_relay(&node, &name, &dir, &token, 1)
    }

    /// The path `node` uses to `peer` (`direct ip:port`, `relay`, `none`), from
    /// `weft status`.
    pub fn path(&self, node: &str, peer: &str) -> Option<String> {
        self.try_status(node)?
            .peers
            .into_iter()
            .find(|p| p.name == peer)
            .map(|p| p.path)
    }

    /// Kills the controller (SIGKILL).
    pub fn kill_controller(&mut self) -> anyhow::Result<()> {
        self.controller.process.kill()?;
        Ok(())
    }

    /// Starts the controller again on the same data directory.
    pub fn restart_controller(&mut self) -> anyhow::Result<()> {
        let _ = self.controller.process.kill();
        self.restarts += 1;
        let node = self.controller.node.clone();
        let dir = self.controller.data_dir.clone();
        self.controller =
            start_controller(self.lab, &node, &dir, self.restarts, &self.controller_args)?;
        Ok(())
    }

    /// Creates a join token for the network and writes it to a 0600 file.
    pub fn token_file(&self, uses: u32) -> anyhow::Result<PathBuf> {
        let json = self.admin(&[
            "token",
            "create",
            "--network",
            &self.network.name,
            "--uses",
            &uses.to_string(),
            "--json",
        ])?;
        let v: serde_json::Value =
            serde_json::from_str(&json).context("token create --json output")?;
        let token = v["token"]
            .as_str()
            .context("no token in token create output")?;
        let path = self.lab.log_dir().join(format!("token-{}", rand_suffix()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(token.as_bytes())?;
        Ok(path)
    }

    /// Starts `weftd` in `node`; with `token` it joins, else it reuses its state.
    ///
    /// Overlay DNS (`--dns auto`) is enabled only when the node has its private
    /// `/etc/netns/<netns>/resolv.conf` (the lab always creates it): the agent then
    /// manages that file, never the host's `/etc/resolv.conf`. Otherwise `--dns off`.
    pub fn start_agent(&mut self, node: &str, token: Option<&Path>) -> anyhow::Result<()> {
        self.start_agent_with_env(node, token, &[])
    }

    /// [`Mesh::start_agent`] with extra environment variables for `weftd` (e.g.
    /// `WEFTD_OFFLOAD=0` to exercise the fallback without offloads).
    pub fn start_agent_with_env(
        &mut self,
        node: &str,
        token: Option<&Path>,
        env: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        self.start_agent_with_args(node, token, env, &[])
    }

    /// [`Mesh::start_agent_with_env`] with extra `weftd` arguments (e.g.
    /// `--allow-exec`), after the mesh's own.
    pub fn start_agent_with_args(
        &mut self,
        node: &str,
        token: Option<&Path>,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> anyhow::Result<()> {
        let state_dir = self.lab.log_dir().join(format!("{node}-state"));
        let socket = self.lab.log_dir().join(format!("{node}.sock"));
        let mut cmd = Command::new(bin_path("weftd")?);
        cmd.arg("--state-dir")
            .arg(&state_dir)
            .arg("--socket")
            .arg(&socket)
            .args([
                "--mint-difficulty",
                &self.network.pow_difficulty.to_string(),
            ])
            .args(["--log", "info"]);
        let dns = if self.lab.has_private_resolv_conf(node)? {
            "auto"
        } else {
            "off"
        };
        // A test that chooses the DNS mode itself (`--dns system`) passes it in `args`.
        if !args.contains(&"--dns") {
            cmd.args(["--dns", dns]);
        }
        cmd.envs(env.iter().copied());
        cmd.args(args);
        if let Some(t) = token {
            cmd.args(["--controller", &self.controller.url])
                .arg("--token-file")
                .arg(t)
                .args(["--pin-sha256", &self.controller.fingerprint])
                .args(["--name", node]);
        }
        let n = self
            .agents
            .get(node)
            .map_or(0, |a| usize::from(a.process.is_some()) + 1);
        let process = self
            .lab
            .spawn(node, &format!("weftd-{}", rand_suffix_n(n)), &cmd)?;
        self.agents.insert(
            node.to_owned(),
            Agent {
                node: node.to_owned(),
                process: Some(process),
                state_dir,
                socket,
            },
        );
        wait_until("agent local API", Duration::from_secs(30), || {
            Ok(self.try_status(node).is_some())
        })
        .with_context(|| {
            format!(
                "weftd in {node} did not come up: {}",
                self.agent_log_tail(node)
            )
        })?;
        Ok(())
    }

    /// Kills an agent with SIGKILL (nothing is cleaned up by it).
    pub fn kill_agent(&mut self, node: &str) -> anyhow::Result<()> {
        if let Some(p) = self.agents.get_mut(node).and_then(|a| a.process.as_mut()) {
            p.kill()?;
        }
        Ok(())
    }

    /// Stops an agent with SIGTERM and waits for it.
    pub fn stop_agent(&mut self, node: &str) -> anyhow::Result<()> {
        if let Some(p) = self.agents.get_mut(node).and_then(|a| a.process.as_mut()) {
            let status = p.stop(Duration::from_secs(10))?;
            if !status.success() {
                bail!("weftd in {node} exited with {status}");
            }
        }
        Ok(())
    }

    /// Runs `weft --socket SOCK ARGS...` in `node`.
    pub fn weft(&self, node: &str, args: &[&str]) -> anyhow::Result<Output> {
        let a = self
            .agents
            .get(node)
            .with_context(|| format!("no agent in {node}"))?;
        let mut cmd = Command::new(bin_path("weft")?);
        cmd.arg("--socket").arg(&a.socket).args(args);
        let netns = self.lab.netns(node)?;
        let out = Command::new("ip")
            .args(["netns", "exec", &netns])
            .arg(cmd.get_program())
            .args(cmd.get_args())
            .output()
            .context("running weft")?;
        Ok(out)
    }

    /// The agent's status, or None if its API does not answer.
    pub fn try_status(&self, node: &str) -> Option<AgentStatus> {
        let out = self.weft(node, &["status", "--json"]).ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The agent's status.
    pub fn status(&self, node: &str) -> anyhow::Result<AgentStatus> {
        let out = self.weft(node, &["status", "--json"])?;
        if !out.status.success() {
            bail!(
                "weft status in {node} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout).context("weft status --json output")
    }

    /// The agent's overlay IPv4 address (waits until it has one).
    pub fn overlay_ip(&self, node: &str) -> anyhow::Result<Ipv4Addr> {
        let mut ip = None;
        wait_until("overlay address", Duration::from_secs(20), || {
            ip = self.try_status(node).and_then(|s| {
                s.networks
                    .first()
                    .and_then(|n| n.addresses.iter().find_map(|a| a.parse::<Ipv4Addr>().ok()))
            });
            Ok(ip.is_some())
        })
        .with_context(|| {
            format!(
                "{node} got no overlay address: {}",
                self.agent_log_tail(node)
            )
        })?;
        ip.context("no overlay address")
    }

    /// Waits until every listed node can ping every other over the overlay.
    pub fn wait_full_mesh(&self, nodes: &[&str], timeout: Duration) -> anyhow::Result<()> {
        let ips: Vec<(String, Ipv4Addr)> = nodes
            .iter()
            .map(|n| Ok(((*n).to_owned(), self.overlay_ip(n)?)))
            .collect::<anyhow::Result<_>>()?;
        for (a, _) in &ips {
            for (b, ip) in &ips {
                if a == b {
                    continue;
                }
                wait_until(&format!("{a} pings {b} ({ip})"), timeout, || {
                    self.lab.ping(a, *ip)
                })
                .with_context(|| {
                    format!(
                        "{a} cannot ping {b} at {ip}; {a}: {}; {b}: {}",
                        self.agent_log_tail(a),
                        self.agent_log_tail(b)
                    )
                })?;
            }
        }
        Ok(())
    }

    /// The whole log of `node`'s current weftd (empty when it has none).
    pub fn agent_log(&self, node: &str) -> String {
        self.agents
            .get(node)
            .and_then(|a| a.process.as_ref())
            .and_then(|p| p.log().ok())
            .unwrap_or_default()
    }

    /// The last log lines of an agent (for error messages).
    pub fn agent_log_tail(&self, node: &str) -> String {
        self.agents
            .get(node)
            .and_then(|a| a.process.as_ref())
            .map(Process::log_tail)
            .unwrap_or_default()
    }

    /// A table of every agent's view: node, overlay address, peers with their
    /// endpoint and last handshake.
    pub fn status_table(&self) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "{:<10} {:<14} {:<10} {:<14} {:<28} {:>10} {:>10} {:>10}",
            "NODE", "OVERLAY", "PEER", "PEER ADDR", "PATH", "HANDSHAKE", "RX", "TX"
        );
        for node in self.agents.keys() {
            let Some(st) = self.try_status(node) else {
                let _ = writeln!(o, "{node:<10} (agent not answering)");
                continue;
            };
            let me = st
                .networks
                .first()
                .and_then(|n| n.addresses.first().cloned())
                .unwrap_or_else(|| "-".into());
            if st.peers.is_empty() {
                let _ = writeln!(o, "{node:<10} {me:<14} (no peers)");
            }
            for (i, p) in st.peers.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "{:<10} {:<14} {:<10} {:<14} {:<28} {:>10} {:>10} {:>10}",
                    if i == 0 { node.as_str() } else { "" },
                    if i == 0 { me.as_str() } else { "" },
                    p.name,
                    p.addresses.first().map_or("-", String::as_str),
                    if p.path.is_empty() {
                        "-"
                    } else {
                        p.path.as_str()
                    },
                    p.last_handshake_secs
                        .map_or("-".to_owned(), |s| format!("{s}s ago")),
                    p.rx_bytes,
                    p.tx_bytes
                );
            }
        }
        o
    }
}

fn start_controller(
    lab: &Lab,
    node: &str,
    data_dir: &Path,
    generation: u32,
    args: &[String],
) -> anyhow::Result<Controller> {
    let mut cmd = Command::new(bin_path("weft-controller")?);
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", &format!("0.0.0.0:{CONTROLLER_PORT}")])
        .args(["--tls-san", &lab.addr(node)?.to_string()])
        .args(["--log", "info"])
        .args(args);
    let mut process = lab.spawn(node, &format!("controller-{generation}"), &cmd)?;
    let line = process
        .wait_for_log("TLS certificate fingerprint:", Duration::from_secs(30))
        .context("controller did not start")?;
    let fingerprint = line
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .context("no fingerprint in the controller's output")?
        .to_owned();
    process.wait_for_tcp_listen(CONTROLLER_PORT, Duration::from_secs(10))?;
    Ok(Controller {
        node: node.to_owned(),
        process,
        data_dir: data_dir.to_owned(),
        url: format!("https://{}:{CONTROLLER_PORT}", lab.addr(node)?),
        fingerprint,
    })
}

fn rand_suffix() -> String {
    let mut b = [0u8; 4];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read as _;
        let _ = f.read_exact(&mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn rand_suffix_n(n: usize) -> String {
    format!("{n}-{}", rand_suffix())
}
