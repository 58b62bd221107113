//! [`Lab`]: a built topology, alive until dropped.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::cmd;
use crate::error::{LabError, Result};
use crate::guard::RunGuard;
use crate::names;
use crate::nat;
use crate::netem::{self, Impairment, NetemSupport};
use crate::process::{self, Process, Proto};
use crate::resolv;
use crate::topology::{Node, Plan, Role, Topology};
use crate::wire::{Wire, WireStats};

/// Where per-run log directories are created.
pub const LOG_ROOT: &str = "/tmp/weft-lab";

/// A lab node's network namespace, held open ([`Lab::open_netns`]).
#[derive(Debug)]
pub struct Netns {
    name: String,
    file: std::fs::File,
}

impl Netns {
    /// Moves the calling thread (only it) into the namespace: the sockets it
    /// opens afterwards live in the node, so an in-process client reaches
    /// the lab's addresses. Threads it then starts inherit the namespace; a
    /// runtime whose every thread enters (tokio's `on_thread_start`) serves
    /// the node's side of a test. Processes are better started with
    /// [`Lab::spawn`].
    pub fn enter(&self) -> Result<()> {
        use std::os::fd::AsRawFd as _;
        crate::sys::enter_netns(self.file.as_raw_fd())
            .map_err(|e| LabError::io(format!("cannot enter namespace {}", self.name), e))
    }
}

/// A running lab: namespaces, links, NATs and impairments of one [`Topology`].
///
/// Dropping it (also while unwinding from a panic) kills every process in its
/// namespaces and deletes them; see [`crate::guard`] for the SIGKILL case.
/// `Lab` is `Sync`: threads may spawn and wait on processes concurrently.
#[derive(Debug)]
pub struct Lab {
    plan: Plan,
    log_dir: PathBuf,
    netem: NetemSupport,
    /// The upstream resolver (dnsmasq in the internet switch), if installed.
    upstream_dns: Option<Process>,
    /// Userspace impairments by (node, interface); declared before `guard` so
    /// they stop before the namespaces go.
    wires: Mutex<BTreeMap<(String, String), Wire>>,
    guard: RunGuard,
}

impl Lab {
    /// Builds `topology`: checks for root, sweeps leftovers of dead runs, records
    /// this run, then creates every namespace, bridge, veth, address, route, NAT
    /// ruleset and impairment. On any failure what was created is removed again.
    pub fn build(topology: &Topology) -> Result<Self> {
        crate::require_root()?;
        let plan = topology.plan()?;
        match crate::sweep::sweep() {
            Ok(report) if !report.removed.is_empty() => tracing::info!("{report}"),
            Ok(_) => {}
            Err(e) => tracing::warn!("sweeping leftovers of earlier runs failed: {e}"),
        }
        let guard = RunGuard::start()?;
        let log_dir = Path::new(LOG_ROOT).join(guard.run_id());
        std::fs::create_dir_all(&log_dir)
            .map_err(|e| LabError::io(format!("cannot create {}", log_dir.display()), e))?;
        let mut lab = Self {
            plan,
            log_dir,
            netem: NetemSupport::default(),
            upstream_dns: None,
            wires: Mutex::new(BTreeMap::new()),
            guard,
        };
        lab.create()?;
        lab.upstream_dns = lab.start_upstream_dns()?;
        tracing::info!(
            run = lab.run_id(),
            nodes = lab.plan.nodes.len(),
            "lab built"
        );
        Ok(lab)
    }

    /// This run's id (the `<id>` in `wl-<id>-<node>`).
    pub fn run_id(&self) -> &str {
        self.guard.run_id()
    }

    /// The directory holding this run's process logs (`/tmp/weft-lab/<run id>`);
    /// it is kept after teardown for post-mortems.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// The resolved topology: every node, interface, address and route.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The pid of this run's reaper process, if it started.
    pub fn reaper_pid(&self) -> Option<u32> {
        self.guard.reaper_pid()
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Result<&Node> {
        self.plan
            .node(name)
            .ok_or_else(|| LabError::UnknownNode(name.to_owned()))
    }

    /// The network namespace of node `name` (for `ip netns exec` by hand).
    pub fn netns(&self, name: &str) -> Result<String> {
        Ok(names::netns_name(self.run_id(), &self.node(name)?.name))
    }

    /// Node `name`'s network namespace, held open, for code of this process
    /// that must talk to the lab itself: see [`Netns::enter`].
    pub fn open_netns(&self, name: &str) -> Result<Netns> {
        let netns = self.netns(name)?;
        let path = Path::new(crate::guard::NETNS_DIR).join(&netns);
        let file = std::fs::File::open(&path)
            .map_err(|e| LabError::io(format!("cannot open {}", path.display()), e))?;
        Ok(Netns { name: netns, file })
    }

    /// Every namespace of this run, switches included.
    pub fn namespaces(&self) -> Vec<String> {
        let switches = self.plan.segments.iter().map(|s| s.netns_suffix.as_str());
        let nodes = self.plan.nodes.iter().map(|n| n.name.as_str());
        switches
            .chain(nodes)
            .map(|name| names::netns_name(self.run_id(), name))
            .collect()
    }

    /// The address of the lab's upstream DNS resolver (every node's private
    /// resolv.conf names it); see [`crate::resolv`].
    pub fn upstream_dns(&self) -> Ipv4Addr {
        resolv::UPSTREAM_DNS
    }

    /// Whether the upstream resolver runs (dnsmasq is installed).
    pub fn has_upstream_dns(&self) -> bool {
        self.upstream_dns.is_some()
    }

    /// Node `name`'s private resolv.conf (`/etc/netns/<netns>/resolv.conf`), which
    /// `ip netns exec` mounts over `/etc/resolv.conf` for everything run in it.
    pub fn resolv_conf_path(&self, name: &str) -> Result<PathBuf> {
        Ok(resolv::netns_resolv_conf(&self.netns(name)?))
    }

    /// Whether node `name` has its private resolv.conf (so a program in it that
    /// manages `/etc/resolv.conf` cannot touch the host's).
    pub fn has_private_resolv_conf(&self, name: &str) -> Result<bool> {
        Ok(self.resolv_conf_path(name)?.is_file())
    }

    /// Node `name`'s uplink address (a router's WAN address).
    pub fn addr(&self, name: &str) -> Result<Ipv4Addr> {
        Ok(self.node(name)?.uplink().addr)
    }

    /// Router `name`'s LAN-side address (the gateway of its LAN).
    pub fn lan_addr(&self, name: &str) -> Result<Ipv4Addr> {
        self.node(name)?
            .lan_iface()
            .map(|i| i.addr)
            .ok_or_else(|| LabError::Topology(format!("`{name}` is not a router")))
    }

    /// Starts `cmd` in node `node`, logging stdout and stderr to
    /// `<log dir>/<node>-<name>.log`. The process is killed when the returned
    /// [`Process`] is dropped, or at teardown.
    ///
    /// The child gets `PR_SET_PDEATHSIG` = SIGKILL, which the kernel ties to the
    /// spawning *thread*: spawn long-lived processes from a thread that lives as
    /// long as they should (the test's own thread, not a short-lived worker).
    pub fn spawn(&self, node: &str, name: &str, cmd: &Command) -> Result<Process> {
        let netns = self.netns(node)?;
        Process::spawn(node, &netns, name, &self.log_dir, cmd)
    }

    /// Runs `cmd` to completion in node `node`; fails (with the command line and
    /// stderr) unless it exits successfully.
    pub fn exec(&self, node: &str, cmd: &Command) -> Result<Output> {
        let mut full = process::in_netns_like(&self.netns(node)?, cmd);
        cmd::run(&mut full, None)
    }

    /// Runs `program args...` in node `node` and returns its stdout.
    pub fn run(&self, node: &str, argv: &[&str]) -> Result<String> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| LabError::Topology("empty command".to_owned()))?;
        let mut cmd = Command::new(program);
        cmd.args(args);
        let out = self.exec(node, &cmd)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether `node` gets an answer to a ping of `to` within two seconds (it pings
    /// every 200 ms until the first answer, so a pending ARP retry does not fail it).
    pub fn ping(&self, node: &str, to: Ipv4Addr) -> Result<bool> {
        let mut cmd = process::in_netns_like(&self.netns(node)?, &Command::new("ping"));
        cmd.args(["-c", "1", "-i", "0.2", "-w", "2", "-n", "-q"])
            .arg(to.to_string());
        Ok(cmd::output(&mut cmd, None)?.status.success())
    }

    /// Sets (or with [`Impairment::NONE`] clears) the impairment of `node`'s uplink,
    /// in both directions.
    ///
    /// The mechanism is `tc netem`. A kernel without `sch_netem` gets loss from
    /// nftables and delay or jitter from a userspace wire spliced into the link
    /// (see [`crate::wire`]); either way a delay D per direction adds 2·D to a
    /// round trip.
    pub fn impair(&self, node: &str, impairment: Impairment) -> Result<()> {
        self.impair_iface(node, "eth0", impairment)
    }

    /// Sets the impairment of `node`'s interface `iface` (`eth0` uplink, `eth1` a
    /// router's LAN side), in both directions.
    pub fn impair_iface(&self, node: &str, iface: &str, impairment: Impairment) -> Result<()> {
        let link = self.link(node, iface)?;
        let mut wires = self.wires.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (node.to_owned(), iface.to_owned());
        if let Some(wire) = wires.get(&key) {
            // A link with a wire keeps it until the impairment is cleared.
            if impairment.is_none() {
                if let Some(wire) = wires.remove(&key) {
                    wire.remove()?;
                }
            } else {
                wire.set(&impairment);
            }
            return Ok(());
        }
        let applied = netem::apply(&link.node_ns, &link.dev, &impairment, &self.netem)
            .and_then(|()| netem::apply(&link.switch_ns, &link.port, &impairment, &self.netem));
        match applied {
            Err(LabError::NetemUnavailable { .. }) => {
                tracing::info!(
                    node,
                    iface,
                    "no sch_netem: impairing the link with a userspace wire"
                );
                self.insert_wire(&mut wires, key, &link, impairment)
            }
            other => other,
        }
    }

    /// Like [`Lab::impair_iface`], but always with the userspace wire (also on
    /// kernels that have netem), so it can be tested and compared anywhere.
    /// [`Impairment::NONE`] removes the wire.
    pub fn impair_with_wire(&self, node: &str, iface: &str, impairment: Impairment) -> Result<()> {
        let link = self.link(node, iface)?;
        let mut wires = self.wires.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (node.to_owned(), iface.to_owned());
        if let Some(wire) = wires.get(&key) {
            if impairment.is_none() {
                if let Some(wire) = wires.remove(&key) {
                    wire.remove()?;
                }
            } else {
                wire.set(&impairment);
            }
            return Ok(());
        }
        if impairment.is_none() {
            return Ok(());
        }
        self.insert_wire(&mut wires, key, &link, impairment)
    }

    /// The frame counters of the userspace wire on `node`'s interface `iface`, if
    /// one is in place.
    pub fn wire_stats(&self, node: &str, iface: &str) -> Option<WireStats> {
        let wires = self.wires.lock().unwrap_or_else(PoisonError::into_inner);
        wires
            .get(&(node.to_owned(), iface.to_owned()))
            .map(Wire::stats)
    }

    fn insert_wire(
        &self,
        wires: &mut BTreeMap<(String, String), Wire>,
        key: (String, String),
        link: &Link,
        impairment: Impairment,
    ) -> Result<()> {
        // Clear whatever netem or nftables state is on the link first.
        netem::apply(&link.node_ns, &link.dev, &Impairment::NONE, &self.netem)?;
        netem::apply(&link.switch_ns, &link.port, &Impairment::NONE, &self.netem)?;
        let wire = Wire::insert(&link.switch_ns, &link.port, &impairment)?;
        wires.insert(key, wire);
        Ok(())
    }

    fn link(&self, node: &str, iface: &str) -> Result<Link> {
        let n = self.node(node)?;
        let i = n.iface(iface).ok_or_else(|| {
            LabError::Topology(format!("node `{node}` has no interface `{iface}`"))
        })?;
        let switch = self
            .plan
            .segment(&i.segment)
            .ok_or_else(|| LabError::Topology(format!("no segment `{}`", i.segment)))?;
        Ok(Link {
            node_ns: self.netns(node)?,
            dev: i.name.clone(),
            switch_ns: names::netns_name(self.run_id(), &switch.netns_suffix),
            port: i.port.clone(),
        })
    }

    /// Waits until something in `node` listens on TCP `port`.
    pub fn wait_for_tcp_port(&self, node: &str, port: u16, timeout: Duration) -> Result<()> {
        self.wait_for_port(node, port, Proto::Tcp, timeout)
    }

    /// Waits until something in `node` has a UDP socket bound to `port`.
    pub fn wait_for_udp_port(&self, node: &str, port: u16, timeout: Duration) -> Result<()> {
        self.wait_for_port(node, port, Proto::Udp, timeout)
    }

    fn wait_for_port(&self, node: &str, port: u16, proto: Proto, timeout: Duration) -> Result<()> {
        let netns = self.netns(node)?;
        let what = format!("{proto:?} port {port} on `{node}`");
        process::wait_until(&what, timeout, || {
            let mut cat = cmd::in_netns(&netns, "cat");
            cat.args(proto.files().map(|f| format!("/proc/net/{f}")));
            let out = cmd::output(&mut cat, None)?;
            Ok(process::bound_ports(&String::from_utf8_lossy(&out.stdout), proto).contains(&port))
        })
    }

    /// Tears the lab down now, reporting errors (dropping does the same silently).
    pub fn teardown(mut self) -> Result<()> {
        self.wires
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.guard.teardown()
    }

    fn create(&self) -> Result<()> {
        let run = self.run_id();
        let ns = |name: &str| names::netns_name(run, name);
        let adds: String = self
            .namespaces()
            .iter()
            .map(|n| format!("netns add {n}\n"))
            .collect();
        cmd::ip_batch(None, &adds)?;
        // Before anything runs in a node: its private resolv.conf (see
        // `crate::resolv`), so nothing in it can rewrite the host's.
        for node in &self.plan.nodes {
            resolv::write_node_resolv_conf(&ns(&node.name))?;
        }
        // Veth pairs are created directly inside their namespaces: nothing of the
        // lab ever appears in the root namespace.
        let mut veths = String::new();
        for node in &self.plan.nodes {
            for iface in &node.ifaces {
                let seg = self.segment_ns(&iface.segment)?;
                veths.push_str(&format!(
                    "link add name {} netns {} type veth peer name {} netns {seg}\n",
                    iface.name,
                    ns(&node.name),
                    iface.port
                ));
            }
        }
        cmd::ip_batch(None, &veths)?;
        for seg in &self.plan.segments {
            let mut script =
                String::from("link set lo up\nlink add name br0 type bridge\nlink set br0 up\n");
            for iface in self
                .plan
                .nodes
                .iter()
                .flat_map(|n| &n.ifaces)
                .filter(|i| i.segment == seg.name)
            {
                script.push_str(&format!(
                    "link set {} master br0\nlink set {} up\n",
                    iface.port, iface.port
                ));
            }
            cmd::ip_batch(Some(&ns(&seg.netns_suffix)), &script)?;
        }
        for node in &self.plan.nodes {
            let mut script = String::from("link set lo up\n");
            for iface in &node.ifaces {
                script.push_str(&format!(
                    "addr add {}/{} dev {}\nlink set {} up\n",
                    iface.addr, iface.prefix, iface.name, iface.name
                ));
            }
            for route in &node.routes {
                script.push_str(&format!("route add {route}\n"));
            }
            cmd::ip_batch(Some(&ns(&node.name)), &script)?;
            if let Role::Router { nat, .. } = &node.role {
                let mut sysctl = cmd::in_netns(&ns(&node.name), "sysctl");
                sysctl.args(["-q", "-w", "net.ipv4.ip_forward=1"]);
                cmd::run(&mut sysctl, None)?;
                let lan = node.lan_iface().ok_or_else(|| {
                    LabError::Topology(format!("router `{}` has no LAN", node.name))
                })?;
                let mut nft = cmd::in_netns(&ns(&node.name), "nft");
                nft.args(["-f", "-"]);
                cmd::run(
                    &mut nft,
                    Some(&nat::ruleset(*nat, &node.uplink().name, &lan.name)),
                )?;
            }
        }
        for node in &self.plan.nodes {
            if let Some(impairment) = node.impairment {
                self.impair(&node.name, impairment)?;
            }
        }
        Ok(())
    }

    /// Gives the internet switch the upstream resolver's address (and routes to
    /// `open` routers' public LANs) and starts dnsmasq there, if installed.
    fn start_upstream_dns(&self) -> Result<Option<Process>> {
        let internet = names::netns_name(self.run_id(), names::INTERNET);
        let mut script = format!(
            "addr add {}/{} dev br0\n",
            resolv::UPSTREAM_DNS,
            crate::topology::INTERNET_CIDR.prefix
        );
        for node in &self.plan.nodes {
            if node.nat() == Some(crate::Nat::Open)
                && node.uplink().segment == names::INTERNET
                && let Some(lan) = node.lan_iface()
                && let Some(seg) = self.plan.segment(&lan.segment)
            {
                script.push_str(&format!(
                    "route add {} via {}\n",
                    seg.subnet,
                    node.uplink().addr
                ));
            }
        }
        cmd::ip_batch(Some(&internet), &script)?;
        let Some(program) = resolv::dnsmasq_path() else {
            tracing::warn!(
                "dnsmasq not found (apt-get install dnsmasq-base): the lab has no upstream DNS resolver"
            );
            return Ok(None);
        };
        // Not fatal: only tests that resolve non-overlay names need it (they check
        // `has_upstream_dns`).
        let started = Process::spawn(
            names::INTERNET,
            &internet,
            "dnsmasq",
            &self.log_dir,
            &resolv::dnsmasq_command(&program),
        )
        .and_then(|mut p| {
            p.wait_for_udp_bound(53, Duration::from_secs(10))?;
            Ok(p)
        });
        match started {
            Ok(p) => Ok(Some(p)),
            Err(e) => {
                tracing::warn!("the lab's upstream DNS resolver (dnsmasq) did not start: {e}");
                Ok(None)
            }
        }
    }

    fn segment_ns(&self, segment: &str) -> Result<String> {
        let seg = self
            .plan
            .segment(segment)
            .ok_or_else(|| LabError::Topology(format!("no segment `{segment}`")))?;
        Ok(names::netns_name(self.run_id(), &seg.netns_suffix))
    }
}

/// Both ends of one node interface's link.
struct Link {
    node_ns: String,
    dev: String,
    switch_ns: String,
    port: String,
}
