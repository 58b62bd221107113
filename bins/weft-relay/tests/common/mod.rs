//! Test harness: the real `weft-controller` and `weft-relay` binaries on
//! 127.0.0.1, nodes registered through the API, relay clients, and a raw TLS
//! client for misbehaving on purpose.
//!
//! `weft-relay` is this package's binary; `weft-controller` comes from
//! `$WEFT_BIN_DIR` or the target directory next to this test executable: run
//! `cargo build --workspace --bins` first (scripts/test.sh does). A missing
//! binary fails the tests with that instruction; nothing is skipped.
#![allow(dead_code, unreachable_pub, reason = "shared by several test binaries")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    reason = "test harness: failing loudly is the point; it waits on the real clock"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use weft_api_client::{Client, ClientConfig, Trust, parse_fingerprint, tls_client_config};
use weft_identity::{Identity, ProofOfWork};
use weft_proto::NodeKey;
use weft_proto::api::{CreateNetworkRequest, CreateTokenRequest};
use weft_proto::relay_api::CreateRelayRequest;
use weft_relay_client::{RelayClient, RelayClientConfig, RelayEvent, RelayEvents};
use weft_relay_core::frame::{
    ALPN, Frame, FrameDecoder, LOGIN_SIGNATURE_CONTEXT, PROTOCOL_VERSION, TLS_EXPORTER_LABEL,
    login_signed_message,
};

pub const RELAY_BIN: &str = env!("CARGO_BIN_EXE_weft-relay");

/// The `weft-controller` binary (see the module docs).
pub fn controller_bin() -> PathBuf {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("WEFT_BIN_DIR") {
        dirs.push(PathBuf::from(d));
    }
    dirs.push(
        Path::new(RELAY_BIN)
            .parent()
            .expect("binary directory")
            .to_path_buf(),
    );
    for d in &dirs {
        let p = d.join("weft-controller");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "weft-controller not found in {dirs:?}: run `cargo build --workspace --bins` first (or set WEFT_BIN_DIR)"
    );
}

fn wait_for_file(path: &Path, child: &mut Child, log: &Path, what: &str) -> String {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if let Ok(s) = std::fs::read_to_string(path)
            && !s.trim().is_empty()
        {
            return s.trim().to_owned();
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "{what} exited early ({status}); log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!(
        "{what} did not start; log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

fn sigterm_child(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("{what} did not stop within {limit:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Controller {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub url: String,
    pub addr: String,
    pub fingerprint: [u8; 32],
    pub admin_token: String,
}

impl Controller {
    /// Starts the controller on `dir`, listening on `listen`.
    pub fn start(dir: &Path, listen: &str) -> Controller {
        let _ = std::fs::remove_file(dir.join("controller.url"));
        std::fs::create_dir_all(dir).unwrap();
        let log = dir.join("controller.log");
        let child = Command::new(controller_bin())
            .args([
                "serve",
                "--data-dir",
                dir.to_str().unwrap(),
                "--listen",
                listen,
            ])
            .args(["--keepalive-secs", "2"])
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                std::fs::File::create(dir.join("stdout.txt")).unwrap(),
            ))
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            ))
            .spawn()
            .expect("spawn weft-controller");
        let mut child = child;
        let url = wait_for_file(&dir.join("controller.url"), &mut child, &log, "controller");
        let addr = std::fs::read_to_string(dir.join("listen.addr"))
            .unwrap()
            .trim()
            .to_owned();
        let stdout = std::fs::read_to_string(dir.join("stdout.txt")).unwrap();
        let fingerprint = stdout
            .lines()
            .find_map(|l| l.strip_prefix("TLS certificate fingerprint: "))
            .map(|fp| parse_fingerprint(fp).unwrap())
            .expect("controller fingerprint on stdout");
        let admin_token = std::fs::read_to_string(dir.join("admin.token"))
            .unwrap()
            .trim()
            .to_owned();
        Controller {
            child: Some(child),
            dir: dir.to_owned(),
            url,
            addr,
            fingerprint,
            admin_token,
        }
    }

    pub fn client(&self) -> Client {
        Client::new(ClientConfig {
            trust: Trust::Fingerprint(self.fingerprint),
            ..ClientConfig::new(self.url.clone())
        })
        .unwrap()
    }

    pub fn admin(&self) -> Client {
        self.client().with_bearer(&self.admin_token).unwrap()
    }

    pub fn fingerprint_text(&self) -> String {
        let hex: String = self
            .fingerprint
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("sha256:{hex}")
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM (the controller drains), then waits for its exit.
    pub fn sigterm(&mut self) -> ExitStatus {
        let mut c = self.child.take().unwrap();
        sigterm_child(&mut c, Duration::from_secs(15), "the controller")
    }

    /// A second replica of this controller in `dir`, on the same SQLite
    /// database (linked), with copies of its TLS pair and admin token.
    pub fn replica(&self, dir: &Path) -> Controller {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::create_dir_all(dir.join("tls")).unwrap();
        for d in [dir, &dir.join("tls")] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        for f in ["admin.token", "tls/cert.pem", "tls/key.pem"] {
            std::fs::copy(self.dir.join(f), dir.join(f)).unwrap();
        }
        for f in ["controller.db", "controller.db-wal", "controller.db-shm"] {
            std::os::unix::fs::symlink(self.dir.join(f), dir.join(f)).unwrap();
        }
        Controller::start(dir, "127.0.0.1:0")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("controller.log")).unwrap_or_default()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct Relay {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub addr: String,
    pub stun_addr: String,
    pub fingerprint: [u8; 32],
    pub fingerprint_text: String,
    args: Vec<String>,
}

/// `weft-relay serve` on `data_dir` for `ctl` (pinned) with the relay token in
/// `token_file`, listening on `listen` (TLS) and 127.0.0.1:0 (STUN).
pub fn serve_args(
    data_dir: &Path,
    ctl: &Controller,
    listen: &str,
    token_file: &Path,
) -> Vec<String> {
    [
        "serve",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--listen",
        listen,
        "--stun-listen",
        "127.0.0.1:0",
        "--controller",
        &ctl.url,
        "--pin-sha256",
        &ctl.fingerprint_text(),
        "--relay-token-file",
        token_file.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

impl Relay {
    /// Starts `weft-relay serve` on `dir` for `ctl` with the relay token in
    /// `dir/relay.token`, listening on `listen` (TLS) and 127.0.0.1:0 (STUN).
    pub fn start(dir: &Path, ctl: &Controller, listen: &str, extra: &[&str]) -> Relay {
        Relay::start_urls(dir, ctl, &ctl.url, listen, extra)
    }

    /// As [`Relay::start`], with `--controller urls` (several replicas of
    /// `ctl`, comma-separated, all with `ctl`'s certificate).
    pub fn start_urls(
        dir: &Path,
        ctl: &Controller,
        urls: &str,
        listen: &str,
        extra: &[&str],
    ) -> Relay {
        std::fs::create_dir_all(dir).unwrap();
        let mut args = serve_args(dir, ctl, listen, &dir.join("relay.token"));
        let i = args.iter().position(|a| a == "--controller").unwrap();
        args[i + 1] = urls.to_owned();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut r = Relay {
            child: None,
            dir: dir.to_owned(),
            addr: String::new(),
            stun_addr: String::new(),
            fingerprint: [0; 32],
            fingerprint_text: String::new(),
            args,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let dir = &self.dir;
        let _ = std::fs::remove_file(dir.join("listen.addr"));
        let _ = std::fs::remove_file(dir.join("stun.addr"));
        let log = dir.join("relay.log");
        let mut child = Command::new(RELAY_BIN)
            .args(&self.args)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                std::fs::File::create(dir.join("stdout.txt")).unwrap(),
            ))
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            ))
            .spawn()
            .expect("spawn weft-relay");
        self.addr = wait_for_file(&dir.join("listen.addr"), &mut child, &log, "relay");
        self.stun_addr = std::fs::read_to_string(dir.join("stun.addr"))
            .unwrap()
            .trim()
            .to_owned();
        let stdout = std::fs::read_to_string(dir.join("stdout.txt")).unwrap();
        self.fingerprint_text = stdout
            .lines()
            .find_map(|l| l.strip_prefix("TLS certificate fingerprint: "))
            .expect("relay fingerprint on stdout")
            .to_owned();
        self.fingerprint = parse_fingerprint(&self.fingerprint_text).unwrap();
        self.child = Some(child);
    }

    /// Starts it again with the same arguments, on the same port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        let i = self.args.iter().position(|a| a == "--listen").unwrap();
        self.args[i + 1] = self.addr.clone();
        self.spawn();
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("relay.log")).unwrap_or_default()
    }

    pub fn sigterm(&mut self) -> ExitStatus {
        let mut c = self.child.take().unwrap();
        sigterm_child(&mut c, Duration::from_secs(10), "relay")
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// The counters of the last `relay summary` line in the log.
    pub fn summary(&self) -> String {
        let log = self.log();
        log.lines()
            .rev()
            .find(|l| l.contains("relay summary"))
            .unwrap_or_else(|| panic!("no summary in the relay log:\n{log}"))
            .to_owned()
    }

    /// A counter of the last summary line, for example `drop_malformed`.
    pub fn counter(&self, name: &str) -> u64 {
        let line = self.summary();
        let pat = format!("{name}=");
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&pat))
            .unwrap_or_else(|| panic!("{name} not in {line}"))
            .trim_end_matches('"')
            .parse()
            .unwrap()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// An identity (no proof of work needed: the test network asks for 0 bits).
pub fn identity() -> Arc<Identity> {
    let mut seed = [0u8; 32];
    OsRng.fill_bytes(&mut seed);
    Arc::new(Identity::from_parts(&seed, ProofOfWork { nonce: 0 }))
}

/// A controller with network `lab` and a relay `r1` whose token is in
/// `relay_dir/relay.token`; returns the controller and a reusable join token.
pub async fn setup(ctl_dir: &Path, relay_dir: &Path) -> (Controller, String) {
    let ctl = Controller::start(ctl_dir, "127.0.0.1:0");
    let admin = ctl.admin();
    admin
        .create_network(&CreateNetworkRequest {
            api_version: None,
            name: "lab".into(),
            ipv4_cidr: "100.64.0.0/24".into(),
            ipv6_prefix: None,
            dns_domain: None,
            pow_difficulty: Some(0),
        })
        .await
        .unwrap();
    let token = admin
        .create_token(&CreateTokenRequest {
            api_version: None,
            networks: vec!["lab".into()],
            tags: vec![],
            expires_in_secs: 3600,
            max_uses: None,
            description: None,
        })
        .await
        .unwrap()
        .token;
    let relay = admin
        .create_relay(&CreateRelayRequest {
            api_version: None,
            name: "r1".into(),
            url: "https://127.0.0.1:443".into(),
        })
        .await
        .unwrap();
    std::fs::create_dir_all(relay_dir).unwrap();
    std::fs::write(relay_dir.join("relay.token"), relay.token).unwrap();
    (ctl, token)
}

/// Registers `id` with the join token; returns its node credential.
pub async fn register(ctl: &Controller, token: &str, id: &Identity) -> String {
    ctl.client()
        .register(
            token,
            id.node_key(),
            id.pow().nonce,
            |c, m| id.sign(c, m),
            None,
            None,
        )
        .await
        .unwrap()
        .credential
}

/// A relay client for `id`, pinned to the relay's certificate.
pub fn client(relay: &Relay, id: &Arc<Identity>) -> (RelayClient, RelayEvents) {
    let mut cfg = RelayClientConfig::new(
        relay.url(),
        Trust::Fingerprint(relay.fingerprint),
        id.node_key(),
    );
    cfg.keepalive = Duration::from_secs(2);
    let signer = id.clone();
    RelayClient::connect(cfg, Arc::new(move |c, m| signer.sign(c, m))).unwrap()
}

/// The next event matching `pred`, skipping others, within `limit`.
pub async fn expect_event(
    events: &mut RelayEvents,
    limit: Duration,
    what: &str,
    mut pred: impl FnMut(&RelayEvent) -> bool,
) -> RelayEvent {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(ev)) if pred(&ev) => return ev,
            Ok(Some(_)) => {}
            Ok(None) => panic!("client stopped while waiting for {what}"),
            Err(_) => panic!("no {what} within {limit:?}"),
        }
    }
}

pub async fn connected(events: &mut RelayEvents) {
    expect_event(events, Duration::from_secs(10), "Connected", |e| {
        matches!(e, RelayEvent::Connected)
    })
    .await;
}

/// Sends from `from` to `to` until `to` receives one (the first packets may be
/// dropped while sessions come up); returns how long it took.
pub async fn exchange(
    from: &RelayClient,
    to_key: NodeKey,
    to_events: &mut RelayEvents,
    from_key: NodeKey,
    limit: Duration,
) -> Duration {
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        assert!(
            start.elapsed() < limit,
            "no packet from {from_key} reached {to_key} within {limit:?}"
        );
        tokio::select! {
            _ = tick.tick() => { let _ = from.send(to_key, b"probe"); }
            ev = to_events.recv() => match ev {
                Some(RelayEvent::Packet { src, payload }) if src == from_key && &payload[..] == b"probe" => {
                    return start.elapsed();
                }
                Some(_) => {}
                None => panic!("client stopped"),
            }
        }
    }
}

pub type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// A raw TLS connection to the relay (no login yet); returns it, the nonce and
/// the channel binding.
pub async fn raw_connect(relay: &Relay) -> (Tls, [u8; 32], [u8; 32], FrameDecoder) {
    let cfg = tls_client_config(&Trust::Fingerprint(relay.fingerprint), &[ALPN]).unwrap();
    let tcp = TcpStream::connect(&relay.addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(cfg)
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let mut binding = [0u8; 32];
    tls.get_ref()
        .1
        .export_keying_material(&mut binding, TLS_EXPORTER_LABEL, None)
        .unwrap();
    let mut dec = FrameDecoder::new();
    let Frame::ServerChallenge { nonce } = raw_next(&mut tls, &mut dec).await.unwrap() else {
        panic!("expected a challenge");
    };
    (tls, nonce, binding, dec)
}

/// Logs in on a raw connection; returns the relay's answer.
pub async fn raw_login(relay: &Relay, id: &Identity) -> (Tls, FrameDecoder, Frame) {
    let (mut tls, nonce, binding, mut dec) = raw_connect(relay).await;
    let login = Frame::ClientLogin {
        node_key: id.node_key(),
        signature: id.sign(
            LOGIN_SIGNATURE_CONTEXT,
            &login_signed_message(&nonce, &binding),
        ),
        version: PROTOCOL_VERSION,
    };
    tls.write_all(&login.to_vec()).await.unwrap();
    tls.flush().await.unwrap();
    let answer = raw_next(&mut tls, &mut dec).await.unwrap();
    (tls, dec, answer)
}

/// Logs in on a raw connection, retrying while the relay has not yet heard of
/// the node from the controller.
pub async fn raw_login_ok(relay: &Relay, id: &Identity) -> (Tls, FrameDecoder) {
    let start = Instant::now();
    loop {
        let (tls, dec, answer) = raw_login(relay, id).await;
        if answer == Frame::LoginOk {
            return (tls, dec);
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "login never accepted: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the relay log contains `text`.
pub async fn wait_log(relay: &Relay, text: &str) {
    let start = Instant::now();
    while !relay.log().contains(text) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{text:?} never appeared in the relay log:\n{}",
            relay.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next frame, or `None` at EOF (or after 10 s).
pub async fn raw_next(tls: &mut Tls, dec: &mut FrameDecoder) -> Option<Frame> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if let Some(r) = dec.next_frame() {
            return r.ok();
        }
        let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        dec.feed(&buf[..n]);
    }
}
