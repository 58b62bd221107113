//! A throwaway PostgreSQL cluster for tests: `initdb` in a fresh temporary
//! directory, a server on a free port with its Unix socket in that
//! directory, and everything stopped and removed on drop.
//!
//! PostgreSQL refuses to run as root, so under root (CI, the lab) the
//! cluster runs as the `postgres` user (the distribution package creates
//! it), else `nobody`; otherwise as the current user. A watchdog process
//! stops the server and removes the directory when the test process dies
//! without dropping the cluster (a panic with `panic=abort`, a SIGKILL, a
//! test time-out), so no cluster outlives its test.
//!
//! The binaries are found in `$WEFT_PG_BINDIR`, else the newest
//! `/usr/lib/postgresql/*/bin` (Debian's `postgresql` package), else
//! `pg_config --bindir`. A missing installation fails with how to install it.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use weft_controller::store::postgres::cluster::TestCluster;
//! let cluster = TestCluster::start()?;
//! let url = cluster.create_database("t1")?; // postgresql://weft@%2Ftmp%2F…:PORT/t1
//! # Ok(()) }
//! ```

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// The superuser the clusters are created with.
pub const SUPERUSER: &str = "weft";

/// Why a test cluster could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No PostgreSQL server binaries.
    #[error(
        "PostgreSQL server binaries not found ({0}): install them (Debian: apt-get install postgresql; scripts/install-deps.sh does) or set WEFT_PG_BINDIR to the directory holding initdb and pg_ctl"
    )]
    NoBinaries(String),
    /// A step failed.
    #[error("{what}: {why}")]
    Step {
        /// What was being done.
        what: String,
        /// What went wrong (with the command's output).
        why: String,
    },
}

fn step(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |e| ClusterError::Step {
        what,
        why: e.to_string(),
    }
}

/// A running throwaway cluster.
pub struct TestCluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    owner: Option<(u32, u32)>,
    watchdog: Option<Child>,
}

impl TestCluster {
    /// Creates and starts a cluster (a few seconds: `initdb`, then start).
    pub fn start() -> Result<TestCluster, ClusterError> {
        let bin = bindir()?;
        let owner = owner()?;
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "weft-pg-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            crate::clock::now_unix_ms() % 1_000_000
        ));
        std::fs::create_dir(&dir).map_err(step(format!("creating {}", dir.display())))?;
        let mut cluster = TestCluster {
            dir,
            bin,
            port: 0,
            owner,
            watchdog: None,
        };
        cluster.init()?;
        cluster.start_watchdog()?;
        let mut last = None;
        for _ in 0..5 {
            cluster.port = free_port()?;
            match cluster.start_server() {
                Ok(()) => return Ok(cluster),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ClusterError::Step {
            what: "starting PostgreSQL".into(),
            why: "no attempt".into(),
        }))
    }

    /// One cluster shared by every test of this process (started by the
    /// first caller). It is stopped and removed when the process exits (by
    /// its watchdog); each test makes its own database in it.
    pub fn shared() -> Result<Arc<TestCluster>, ClusterError> {
        static SHARED: OnceLock<Mutex<Option<Arc<TestCluster>>>> = OnceLock::new();
        let slot = SHARED.get_or_init(|| Mutex::new(None));
        let mut slot = slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = Arc::new(TestCluster::start()?);
        *slot = Some(c.clone());
        Ok(c)
    }

    /// The directory holding the data (`data/`), the socket and the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The TCP port (on 127.0.0.1) and the socket's number.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Creates database `name` (letters, digits, `_`) and returns its URL
    /// over the Unix socket.
    pub fn create_database(&self, name: &str) -> Result<String, ClusterError> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(ClusterError::Step {
                what: format!("creating database {name:?}"),
                why: "use letters, digits and _".into(),
            });
        }
        self.run(
            &format!("createdb {name}"),
            Command::new(self.bin.join("createdb")).args([
                "-h",
                &self.socket_dir(),
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                name,
            ]),
        )?;
        Ok(self.url(name))
    }

    /// The URL of database `name` over the Unix socket.
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgresql://{SUPERUSER}@{}:{}/{name}",
            self.socket_dir().replace('/', "%2F"),
            self.port
        )
    }

    /// The URL of database `name` over TCP to 127.0.0.1.
    pub fn tcp_url(&self, name: &str) -> String {
        format!("postgresql://{SUPERUSER}@127.0.0.1:{}/{name}", self.port)
    }

    /// Runs `sql` with psql as the superuser in database `db`; returns its
    /// output (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, ClusterError> {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                &self.socket_dir(),
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                db,
                "-c",
                sql,
            ])
            .env_remove("PGPASSWORD")
            .stdin(Stdio::null())
            .output()
            .map_err(step("running psql"))?;
        if !out.status.success() {
            return Err(ClusterError::Step {
                what: format!("psql -c {sql:?}"),
                why: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Gives the superuser `password` and makes TCP connections prove it
    /// (SCRAM); the Unix socket stays trusted.
    pub fn require_password_over_tcp(&self, password: &str) -> Result<(), ClusterError> {
        let quoted = password.replace('\'', "''");
        self.psql(
            "postgres",
            &format!("ALTER ROLE {SUPERUSER} PASSWORD '{quoted}'"),
        )?;
        let hba = self.dir.join("data").join("pg_hba.conf");
        std::fs::write(
            &hba,
            "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\nhost all all ::1/128 scram-sha-256\n",
        )
        .map_err(step(format!("writing {}", hba.display())))?;
        self.pg_ctl("reloading PostgreSQL", &["reload"])
    }

    /// Turns TLS on with this certificate chain and key (PEM): the files go
    /// in the data directory, owned by the server's user, the key 0600, and
    /// the server reloads. Connections over the Unix socket stay cleartext.
    pub fn enable_tls(&self, cert_pem: &str, key_pem: &str) -> Result<(), ClusterError> {
        let data = self.dir.join("data");
        for (name, text, mode) in [
            ("server.crt", cert_pem, 0o644),
            ("server.key", key_pem, 0o600),
        ] {
            let path = data.join(name);
            std::fs::write(&path, text).map_err(step(format!("writing {}", path.display())))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .map_err(step(format!("chmod {}", path.display())))?;
            if let Some((uid, gid)) = self.owner {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                    .map_err(step(format!("giving {} to uid {uid}", path.display())))?;
            }
        }
        self.psql("postgres", "ALTER SYSTEM SET ssl = on")?;
        self.pg_ctl("reloading PostgreSQL", &["reload"])?;
        // The reload is asynchronous: wait until new sessions see it.
        for _ in 0..100 {
            if self.psql("postgres", "SHOW ssl")?.trim() == "on" {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Err(ClusterError::Step {
            what: "turning TLS on".into(),
            why: format!(
                "the server did not load its certificate\nserver log:\n{}",
                self.log()
            ),
        })
    }

    /// Stops the server (fast shutdown: connections are cut), keeping the
    /// data: [`TestCluster::restart`] brings it back on the same port.
    pub fn stop(&self) -> Result<(), ClusterError> {
        self.pg_ctl("stopping PostgreSQL", &["stop", "-w", "-m", "fast"])
    }

    /// Starts the server again after [`TestCluster::stop`].
    pub fn restart(&self) -> Result<(), ClusterError> {
        self.start_server()
    }

    fn socket_dir(&self) -> String {
        self.dir.display().to_string()
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn init(&self) -> Result<(), ClusterError> {
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(&self.dir, Some(uid), Some(gid))
                .map_err(step(format!("giving {} to uid {uid}", self.dir.display())))?;
        }
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(step(format!("chmod 700 {}", self.dir.display())))?;
        self.run(
            "initdb",
            Command::new(self.bin.join("initdb")).args([
                "-D",
                &self.data(),
                "-U",
                SUPERUSER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ]),
        )
    }

    fn start_server(&self) -> Result<(), ClusterError> {
        // fsync off: a test cluster is thrown away, and it makes commits
        // (each test's many small transactions) cheap.
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
            self.port,
            self.socket_dir()
        );
        let log = self.dir.join("server.log").display().to_string();
        self.pg_ctl(
            "starting PostgreSQL",
            &["start", "-w", "-t", "60", "-l", &log, "-o", &opts],
        )
    }

    fn pg_ctl(&self, what: &str, args: &[&str]) -> Result<(), ClusterError> {
        let data = self.data();
        let mut cmd = Command::new(self.bin.join("pg_ctl"));
        cmd.args(["-D", &data]).args(args);
        self.run(what, &mut cmd).map_err(|e| match e {
            ClusterError::Step { what, why } => ClusterError::Step {
                what,
                why: format!("{why}\nserver log:\n{}", self.log()),
            },
            other => other,
        })
    }

    /// Runs `cmd` as the cluster's owner; fails with its output.
    fn run(&self, what: &str, cmd: &mut Command) -> Result<(), ClusterError> {
        cmd.current_dir(&self.dir)
            .env_remove("PGPASSWORD")
            .env_remove("PGHOST")
            .env_remove("PGPORT")
            .stdin(Stdio::null());
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        let out = cmd.output().map_err(step(what))?;
        if out.status.success() {
            return Ok(());
        }
        Err(ClusterError::Step {
            what: what.to_owned(),
            why: format!(
                "{}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        })
    }

    /// A process that waits for this one to exit, then stops the server and
    /// removes the directory (the test may never drop the cluster).
    fn start_watchdog(&mut self) -> Result<(), ClusterError> {
        let script = format!(
            "while [ -e /proc/{pid} ]; do sleep 1; done; \"$0\" -D \"$1\" stop -m immediate >/dev/null 2>&1; rm -rf \"$2\"",
            pid = std::process::id()
        );
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .arg(self.bin.join("pg_ctl"))
            .arg(self.data())
            .arg(&self.dir)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        // Its own process group: a test runner killing the test's group
        // leaves the watchdog to clean up.
        cmd.process_group(0);
        self.watchdog = Some(
            cmd.spawn()
                .map_err(step("starting the cluster's watchdog"))?,
        );
        Ok(())
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let _ = self.pg_ctl("stopping PostgreSQL", &["stop", "-m", "immediate"]);
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The newest installed PostgreSQL's binaries.
fn bindir() -> Result<PathBuf, ClusterError> {
    if let Some(d) = std::env::var_os("WEFT_PG_BINDIR") {
        let d = PathBuf::from(d);
        return if d.join("initdb").is_file() {
            Ok(d)
        } else {
            Err(ClusterError::NoBinaries(format!(
                "WEFT_PG_BINDIR={} has no initdb",
                d.display()
            )))
        };
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Ok(bin);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if d.join("initdb").is_file() {
            return Ok(d);
        }
    }
    Err(ClusterError::NoBinaries(
        "no /usr/lib/postgresql/*/bin/initdb, no pg_config".into(),
    ))
}

/// Under root: the uid and gid to run PostgreSQL as (`postgres`, else
/// `nobody`). Otherwise `None` (the current user).
fn owner() -> Result<Option<(u32, u32)>, ClusterError> {
    if !rustix::process::geteuid().is_root() {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(step("reading /etc/passwd"))?;
    for user in ["postgres", "nobody"] {
        for line in passwd.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() > 3
                && f[0] == user
                && let (Ok(uid), Ok(gid)) = (f[2].parse(), f[3].parse())
            {
                return Ok(Some((uid, gid)));
            }
        }
    }
    Err(ClusterError::Step {
        what: "choosing a user for PostgreSQL".into(),
        why: "running as root and there is no postgres or nobody user in /etc/passwd (PostgreSQL refuses to run as root)".into(),
    })
}

/// A port free right now on 127.0.0.1 (a start that loses the race retries).
fn free_port() -> Result<u16, ClusterError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(step("finding a free port"))?;
    Ok(l.local_addr().map_err(step("finding a free port"))?.port())
}
