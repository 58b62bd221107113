//! The controllers under test: one, or several replicas on one database
//! (SQLite: the replicas share the first one's file; PostgreSQL: a URL, or a
//! throwaway cluster the bench starts and removes), each a real
//! `weft-controller serve` process on plain HTTP on loopback.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use weft_controller::store::postgres::cluster::TestCluster;

const BIN: &str = env!("CARGO_BIN_EXE_weft-controller");

/// Where the replicas keep their state.
pub(crate) enum Database {
    /// SQLite in the first replica's data directory (the others link to it).
    Sqlite,
    /// This PostgreSQL database (empty; a password from `PGPASSWORD` or
    /// `WEFT_DATABASE_PASSWORD`, as `serve` reads it).
    Postgres(String),
    /// A throwaway PostgreSQL cluster started by the bench (`initdb` in a
    /// temporary directory, fsync off, removed at the end).
    Throwaway,
}

impl Database {
    /// Parses `--database`: absent is SQLite, `throwaway` a cluster of our
    /// own, anything else a PostgreSQL URL.
    pub(crate) fn parse(v: Option<&str>) -> Database {
        match v {
            None | Some("sqlite") => Database::Sqlite,
            Some("throwaway") => Database::Throwaway,
            Some(url) => Database::Postgres(url.to_owned()),
        }
    }

    pub(crate) fn describe(&self) -> &'static str {
        match self {
            Database::Sqlite => "SQLite",
            Database::Postgres(_) => "PostgreSQL",
            Database::Throwaway => "PostgreSQL (throwaway cluster, fsync off)",
        }
    }
}

/// One `weft-controller serve` process.
pub(crate) struct Replica {
    child: Option<Child>,
    dir: PathBuf,
    /// `http://127.0.0.1:PORT`.
    pub(crate) url: String,
    /// `127.0.0.1:PORT` (kept across restarts).
    pub(crate) listen: String,
}

impl Replica {
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGTERM: the controller drains its streams and exits.
    fn terminate(&self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }

    /// Waits for the exit.
    fn wait(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The replicas, their database, and the admin token.
pub(crate) struct Fleet {
    pub(crate) replicas: Vec<Replica>,
    pub(crate) admin_token: String,
    /// The PostgreSQL URL every replica is given.
    database: Option<String>,
    cluster: Option<TestCluster>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Fleet {
    /// Starts `n` replicas on `db`, one after the other (the first creates
    /// the schema and the admin token).
    pub(crate) fn start(n: usize, db: &Database) -> Fleet {
        let (cluster, database) = match db {
            Database::Sqlite => (None, None),
            Database::Postgres(url) => (None, Some(url.clone())),
            Database::Throwaway => {
                let c = TestCluster::start().unwrap_or_else(|e| panic!("{e}"));
                let url = c
                    .create_database("fanout")
                    .unwrap_or_else(|e| panic!("{e}"));
                (Some(c), Some(url))
            }
        };
        let dirs: Vec<_> = (0..n.max(1))
            .map(|_| tempfile::tempdir().unwrap())
            .collect();
        let mut fleet = Fleet {
            replicas: Vec::new(),
            admin_token: String::new(),
            database,
            cluster,
            _dirs: Vec::new(),
        };
        for (i, d) in dirs.iter().enumerate() {
            if i > 0 && fleet.database.is_none() {
                // SQLite replicas share the first one's database file.
                for f in ["controller.db", "controller.db-wal", "controller.db-shm"] {
                    std::os::unix::fs::symlink(dirs[0].path().join(f), d.path().join(f)).unwrap();
                }
            }
            let r = fleet.spawn(d.path(), "127.0.0.1:0");
            fleet.replicas.push(r);
        }
        fleet.admin_token = std::fs::read_to_string(dirs[0].path().join("admin.token"))
            .unwrap()
            .trim()
            .to_owned();
        fleet._dirs = dirs;
        fleet
    }

    /// PostgreSQL's server processes' CPU seconds (with their exited
    /// children's), when the bench started the cluster.
    pub(crate) fn database_cpu(&self) -> Option<f64> {
        let dir = self.cluster.as_ref()?.dir().join("data");
        let pid: u32 = std::fs::read_to_string(dir.join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()?;
        let mut total = cpu_with_children(pid);
        for e in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if parent(p) == Some(pid) {
                total += usage(p).2;
            }
        }
        Some(total)
    }

    /// Stops replica `i` (SIGTERM: it tells its streams to reconnect
    /// elsewhere, then exits).
    pub(crate) fn stop(&mut self, i: usize) {
        self.replicas[i].terminate();
        self.replicas[i].wait();
    }

    /// SIGTERM to every replica at once, then waits for them all.
    pub(crate) fn stop_all(&mut self) {
        for r in &self.replicas {
            r.terminate();
        }
        for r in &mut self.replicas {
            r.wait();
        }
    }

    /// Starts replica `i` again after [`Fleet::stop`], on the same data
    /// directory and address.
    pub(crate) fn restart(&mut self, i: usize) {
        let (dir, listen) = (
            self.replicas[i].dir.clone(),
            self.replicas[i].listen.clone(),
        );
        self.replicas[i] = self.spawn(&dir, &listen);
    }

    /// (RSS MiB, peak RSS MiB, CPU s) summed over the replicas.
    pub(crate) fn usage(&self) -> (f64, f64, f64) {
        self.replicas
            .iter()
            .map(|r| usage(r.pid()))
            .fold((0.0, 0.0, 0.0), |a, u| (a.0 + u.0, a.1 + u.1, a.2 + u.2))
    }

    /// Each replica's (RSS MiB, CPU s), for the report.
    pub(crate) fn each(&self) -> String {
        self.replicas
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let (rss, _, cpu) = usage(r.pid());
                format!("replica {i}: RSS {rss:.1} MiB, CPU {cpu:.2} s")
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Starts a controller on `dir` and waits until it serves.
    fn spawn(&self, dir: &Path, listen: &str) -> Replica {
        let _ = std::fs::remove_file(dir.join("controller.url"));
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
            listen,
            "--plain-http",
            "--log",
            "warn",
            // Presence is debounced (5 s by default): 1 s keeps the presence
            // storm inside the settle time after the streams open.
            "--online-after-ms",
            "1000",
        ];
        // Every simulated agent registers and connects from 127.0.0.1.
        for (burst, rate) in [
            ("--register-burst", "--register-per-minute"),
            ("--public-burst", "--public-per-minute"),
            ("--auth-fail-burst", "--auth-fail-per-minute"),
        ] {
            args.extend_from_slice(&[burst, "1000000", rate, "100000000"]);
        }
        if let Some(url) = &self.database {
            args.extend_from_slice(&["--database", url]);
        }
        let mut child = Command::new(BIN)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        for _ in 0..30_000 {
            if let Ok(url) = std::fs::read_to_string(dir.join("controller.url")) {
                let url = url.trim().to_owned();
                let listen = url.trim_start_matches("http://").to_owned();
                return Replica {
                    child: Some(child),
                    dir: dir.to_owned(),
                    url,
                    listen,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "controller exited at start: {status}; see {}/controller.log",
                    dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "controller did not start; see {}/controller.log",
            dir.display()
        );
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for r in &mut self.replicas {
            r.kill();
        }
    }
}

/// (RSS MiB, peak RSS MiB, CPU seconds) of a process.
pub(crate) fn usage(pid: u32) -> (f64, f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let f = stat(pid);
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the ")".
    let ticks = field(&f, 11) + field(&f, 12);
    (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0, ticks / 100.0)
}

/// The fields of `/proc/PID/stat` after the command name.
fn stat(pid: u32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    after.split_whitespace().map(str::to_owned).collect()
}

fn field(f: &[String], i: usize) -> f64 {
    f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
}

fn parent(pid: u32) -> Option<u32> {
    stat(pid).get(1)?.parse().ok()
}

/// CPU seconds of a process and its reaped children (utime, stime, cutime,
/// cstime).
fn cpu_with_children(pid: u32) -> f64 {
    let f = stat(pid);
    (11..15).map(|i| field(&f, i)).sum::<f64>() / 100.0
}
