//! Test harness: runs the real `weft-controller` binary on 127.0.0.1:0.
#![allow(dead_code, unreachable_pub, reason = "shared by several test binaries")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test harness: failing loudly is the point"
)]

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand_core::{OsRng, RngCore as _};
use weft_api_client::{Client, ClientConfig, ClientError, Trust, parse_fingerprint};
use weft_identity::{Identity, ProofOfWork};
use weft_proto::api::{
    CreateNetworkRequest, CreateTokenRequest, REGISTER_SIGNATURE_CONTEXT, RegisterResponse,
    UpdateNodeRequest, register_signed_message,
};

pub const BIN: &str = env!("CARGO_BIN_EXE_weft-controller");

/// The `weft` binary (`weft admin …` is the admin CLI): from `$WEFT_BIN_DIR`
/// or the target directory next to [`BIN`]. Run `cargo build --workspace
/// --bins` first (scripts/test.sh does); a missing binary fails the test with
/// that instruction, nothing is skipped.
pub fn weft_bin() -> PathBuf {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("WEFT_BIN_DIR") {
        dirs.push(PathBuf::from(d));
    }
    dirs.push(
        Path::new(BIN)
            .parent()
            .expect("binary directory")
            .to_path_buf(),
    );
    for d in &dirs {
        let p = d.join("weft");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "weft not found in {dirs:?}: run `cargo build --workspace --bins` first (or set WEFT_BIN_DIR)"
    );
}

/// `weft admin --data-dir DIR` (no admin token or controller URL from the
/// environment).
pub fn weft_admin(dir: &Path) -> Command {
    let mut cmd = Command::new(weft_bin());
    cmd.args(["admin", "--data-dir", dir.to_str().unwrap()])
        .env_remove("WEFT_ADMIN_TOKEN")
        .env_remove("WEFT_CONTROLLER_URL")
        .env_remove("WEFT_CONTROLLER_DATA_DIR");
    cmd
}

pub struct Controller {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub url: String,
    pub addr: String,
    pub fingerprint: Option<[u8; 32]>,
    pub admin_token: String,
    pub stdout: String,
}

impl Controller {
    /// Starts the controller on `dir` with extra flags and waits until it serves.
    pub fn start(dir: &Path, extra: &[&str]) -> Controller {
        let _ = std::fs::remove_file(dir.join("controller.url"));
        std::fs::create_dir_all(dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("controller.log"))
            .unwrap();
        let out = std::fs::File::create(dir.join("stdout.txt")).unwrap();
        let mut args = vec![
            "serve",
            "--data-dir",
            dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ];
        // Tests register many nodes from 127.0.0.1; the ones about rate limits
        // pass their own.
        if !extra.contains(&"--register-burst") {
            args.extend_from_slice(&[
                "--register-burst",
                "1000000",
                "--register-per-minute",
                "1000000",
            ]);
        }
        // Tests poll /healthz and try bad credentials from 127.0.0.1 too.
        for (flag, rate) in [
            ("--public-burst", "--public-per-minute"),
            ("--auth-fail-burst", "--auth-fail-per-minute"),
        ] {
            if !extra.contains(&flag) {
                args.extend_from_slice(&[flag, "1000000", rate, "1000000"]);
            }
        }
        args.extend_from_slice(extra);
        let database = test_database(dir);
        if let Some(url) = &database {
            args.extend_from_slice(&["--database", url]);
        }
        let child = Command::new(BIN)
            .args(&args)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn weft-controller");
        let mut c = Controller {
            child: Some(child),
            dir: dir.to_owned(),
            url: String::new(),
            addr: String::new(),
            fingerprint: None,
            admin_token: String::new(),
            stdout: String::new(),
        };
        for _ in 0..1000 {
            if let Ok(url) = std::fs::read_to_string(dir.join("controller.url")) {
                c.url = url.trim().to_owned();
                break;
            }
            if let Some(status) = c.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("controller exited early ({status}); log:\n{}", c.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            !c.url.is_empty(),
            "controller did not start; log:\n{}",
            c.log()
        );
        c.addr = std::fs::read_to_string(dir.join("listen.addr"))
            .unwrap()
            .trim()
            .to_owned();
        c.admin_token = std::fs::read_to_string(dir.join("admin.token"))
            .unwrap()
            .trim()
            .to_owned();
        // stdout is flushed before controller.url is written.
        c.stdout = std::fs::read_to_string(dir.join("stdout.txt")).unwrap();
        c.fingerprint = c
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("TLS certificate fingerprint: "))
            .map(|fp| parse_fingerprint(fp).unwrap());
        c
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("controller.log")).unwrap_or_default()
    }

    pub fn client(&self) -> Client {
        let trust = match self.fingerprint {
            Some(fp) => Trust::Fingerprint(fp),
            None => Trust::SystemRoots,
        };
        Client::new(ClientConfig {
            trust,
            ..ClientConfig::new(self.url.clone())
        })
        .unwrap()
    }

    pub fn admin(&self) -> Client {
        self.client().with_bearer(&self.admin_token).unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM, then waits (at most `limit`) for the exit status.
    pub fn sigterm(&mut self, limit: Duration) -> ExitStatus {
        let mut c = self.child.take().unwrap();
        let pid = rustix::process::Pid::from_raw(c.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let step = Duration::from_millis(20);
        let mut waited = Duration::ZERO;
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            if waited > limit {
                c.kill().unwrap();
                panic!("controller did not stop within {limit:?} of SIGTERM");
            }
            std::thread::sleep(step);
            waited += step;
        }
    }

    /// Runs `weft admin --data-dir DIR <args>`: success, stdout, stderr.
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = weft_admin(&self.dir).args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The first change `pick` takes from the deltas `s` brings within `wait`
/// (`None`: none came), each delta applied to `map` on the way.
pub async fn next_change<T>(
    s: &mut weft_api_client::MapStream,
    map: &mut weft_proto::netmap::NetworkMap,
    wait: Duration,
    pick: impl Fn(&weft_proto::netmap::MapChange) -> Option<T>,
) -> Option<T> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let ev = tokio::time::timeout_at(deadline, s.next_map()).await.ok()?;
        let Some(Ok(weft_proto::netmap::MapEvent::Delta(d))) = ev else {
            continue;
        };
        map.apply(&d).unwrap();
        if let Some(t) = d.changes.iter().find_map(&pick) {
            return Some(t);
        }
    }
}

/// The next event of a map stream; panics after 10 s, at the end of the
/// stream or on an error.
pub async fn next_event(s: &mut weft_api_client::MapStream) -> weft_proto::netmap::MapEvent {
    tokio::time::timeout(Duration::from_secs(10), s.next_map())
        .await
        .expect("no map event within 10 s")
        .expect("stream ended")
        .expect("stream error")
}

/// An identity whose proof of work reaches `bits` (found in microseconds for
/// small `bits`, without the minting thread pool).
pub fn identity(bits: u32) -> Identity {
    let mut seed = [0u8; 32];
    OsRng.fill_bytes(&mut seed);
    let key = Identity::from_parts(&seed, ProofOfWork { nonce: 0 }).node_key();
    let nonce = (0u64..)
        .find(|n| ProofOfWork { nonce: *n }.achieved(&key) >= bits)
        .unwrap();
    Identity::from_parts(&seed, ProofOfWork { nonce })
}

/// An identity whose proof of work is below `bits`.
pub fn weak_identity(bits: u32) -> Identity {
    loop {
        let mut seed = [0u8; 32];
        OsRng.fill_bytes(&mut seed);
        let id = Identity::from_parts(&seed, ProofOfWork { nonce: 0 });
        if id.difficulty_reached() < bits {
            return id;
        }
    }
}

pub async fn register(
    c: &Client,
    token: &str,
    id: &Identity,
) -> Result<RegisterResponse, ClientError> {
    c.register(
        token,
        id.node_key(),
        id.pow().nonce,
        |ctx, msg| id.sign(ctx, msg),
        None,
        Some("test-host".into()),
    )
    .await
}

/// A registration body signed over `challenge` (for raw-HTTP tests).
pub fn register_body(token: &str, id: &Identity, challenge_b64: &str) -> serde_json::Value {
    let ch: [u8; 32] = URL_SAFE_NO_PAD
        .decode(challenge_b64)
        .unwrap()
        .try_into()
        .unwrap();
    let sig = id.sign(
        REGISTER_SIGNATURE_CONTEXT,
        &register_signed_message(&ch, token),
    );
    serde_json::json!({
        "token": token,
        "node_key": id.node_key().to_string(),
        "pow_nonce": id.pow().nonce,
        "challenge": challenge_b64,
        "signature": URL_SAFE_NO_PAD.encode(sig),
    })
}

pub fn network(name: &str, cidr: &str, pow: u32) -> CreateNetworkRequest {
    CreateNetworkRequest {
        api_version: None,
        name: name.into(),
        ipv4_cidr: cidr.into(),
        ipv6_prefix: None,
        dns_domain: None,
        pow_difficulty: Some(pow),
    }
}

pub fn token_req(nets: &[&str], max_uses: Option<u32>, expires_in_secs: u64) -> CreateTokenRequest {
    CreateTokenRequest {
        api_version: None,
        networks: nets.iter().map(|s| s.to_string()).collect(),
        tags: vec![],
        expires_in_secs,
        max_uses,
        description: None,
    }
}

/// A token for `nets`, unlimited uses, valid an hour.
pub async fn token_for(admin: &Client, nets: &[&str]) -> String {
    admin
        .create_token(&token_req(nets, None, 3600))
        .await
        .unwrap()
        .token
}

/// Creates network `name` (`cidr`, `pow` bits of proof of work) and returns a
/// token for it (see [`token_for`]).
pub async fn network_with_token(admin: &Client, name: &str, cidr: &str, pow: u32) -> String {
    admin
        .create_network(&network(name, cidr, pow))
        .await
        .unwrap();
    token_for(admin, &[name]).await
}

/// Tags node `name` `gateway` (the tag subnet routes need).
pub async fn tag_gateway(admin: &Client, name: &str) {
    admin
        .update_node(
            name,
            &UpdateNodeRequest {
                tags: Some(vec!["gateway".into()]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
}

/// The status, code and message of a refused call; panics on anything else.
pub fn refused<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (u16, String, String) {
    match r {
        Err(ClientError::Api { status, body }) => {
            assert!(!body.message.is_empty());
            (status, body.code, body.message)
        }
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// `weft-controller serve --data-dir <dir> --listen 127.0.0.1:0`, to add to.
pub fn serve_command(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "serve",
        "--data-dir",
        dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    if let Some(url) = test_database(dir) {
        cmd.args(["--database", &url]);
    }
    cmd
}

static SQLITE_ONLY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Marks this test binary's tests as about SQLite's file (they run on SQLite
/// whatever `WEFT_TEST_DATABASE` says).
pub fn sqlite_only() {
    SQLITE_ONLY.store(true, std::sync::atomic::Ordering::Relaxed);
}

static DBS: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<PathBuf, String>>> =
    std::sync::OnceLock::new();

/// Makes the controller on `dir` a replica of the one on `first`: with
/// `WEFT_TEST_DATABASE=postgres` it gets the same database (`true`); on
/// SQLite nothing is done (`false`: link the database file instead).
pub fn share_database(first: &Path, dir: &Path) -> bool {
    let Some(url) = test_database(first) else {
        return false;
    };
    DBS.get_or_init(std::sync::Mutex::default)
        .lock()
        .unwrap()
        .insert(dir.to_owned(), url);
    true
}

/// Starts a replica in `dir` on the database of `first`, with `flags`: its
/// own data directory with a copy of the TLS pair and admin token; on
/// SQLite its `controller.db` (with the WAL and shared-memory files) links
/// to the first's.
pub fn replica_of(first: &Controller, dir: &Path, flags: &[&str]) -> Controller {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir.join("tls")).unwrap();
    for d in [dir, &dir.join("tls")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    for f in ["admin.token", "tls/cert.pem", "tls/key.pem"] {
        std::fs::copy(first.dir.join(f), dir.join(f)).unwrap();
    }
    if !share_database(&first.dir, dir) {
        for f in ["controller.db", "controller.db-wal", "controller.db-shm"] {
            std::os::unix::fs::symlink(first.dir.join(f), dir.join(f)).unwrap();
        }
    }
    Controller::start(dir, flags)
}

/// With `WEFT_TEST_DATABASE=postgres`: the PostgreSQL database of the
/// controller on `dir` (made on first use in this process's throwaway
/// cluster; the same one each time the controller on `dir` restarts).
/// Otherwise `None`: SQLite in `dir`.
pub fn test_database(dir: &Path) -> Option<String> {
    if SQLITE_ONLY.load(std::sync::atomic::Ordering::Relaxed)
        || !weft_controller::store::testing::postgres_wanted()
    {
        return None;
    }
    let mut dbs = DBS.get_or_init(std::sync::Mutex::default).lock().unwrap();
    let url = dbs
        .entry(dir.to_owned())
        .or_insert_with(|| weft_controller::store::testing::fresh_postgres_database("ctl"));
    Some(url.clone())
}

/// A raw HTTP/1.1 exchange over cleartext TCP: returns status and body.
pub fn raw(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    // The server may answer (413) before reading the whole body.
    let _ = s.write_all(body);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Asserts a `{code, message}` error with this status and code.
pub fn expect_error(resp: (u16, String), status: u16, code: &str) {
    let (got, body) = resp;
    assert_eq!(got, status, "body: {body}");
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body:?}"));
    assert_eq!(v["code"], code, "body: {body}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "body: {body}"
    );
}

/// A raw HTTP/1.1 exchange from the local address `src` (say `127.0.0.2`, to
/// act as another client): returns status, head and body.
pub async fn raw_from(
    src: &str,
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    let mut s = sock.connect(addr.parse().unwrap()).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let _ = s.write_all(body).await;
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut resp)).await;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_owned(), body.to_owned())
}
