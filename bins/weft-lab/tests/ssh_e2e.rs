//! End-to-end test of SSH through the mesh (issue 19): `weftd --ssh` on db1,
//! a policy `[[ssh]] from = ["node:ops"] to = ["node:db1"] users = [USER]`
//! with a throwaway local user made for the test (removed at the end, also on
//! failure). ops runs `weft ssh db1 -- id -un` and gets that user; web (a
//! member of the network, not granted) is refused by `weft ssh` and by the
//! server itself (plain `ssh` to db1's overlay address); `weft admin audit`
//! shows the `ssh.session` (who, user, from, duration) and the `ssh.refused`;
//! `scp -F` (the `weft ssh --config` snippet) copies a 10 MiB random file,
//! which arrives with the same SHA-256. Real binaries in network namespaces;
//! needs root and FAILS (never skips) without it. Binaries from
//! `WEFT_BIN_DIR`.

#![allow(clippy::disallowed_methods, reason = "tests wait on the real clock")]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::process::Command;
use std::time::{Duration, Instant};

use weft_lab::mesh::{Mesh, NetworkSpec};
use weft_lab::scripts::ECHO_SERVER;
use weft_lab::{Lab, Topology};

const NODES: [&str; 3] = ["ops", "db1", "web"];

/// A local user for the test, removed (with its home) when dropped.
struct TempUser(String);

impl TempUser {
    fn create() -> Self {
        let name = format!("weftssh{}", std::process::id() % 100_000);
        let _ = Command::new("userdel").args(["-r", &name]).output();
        let out = Command::new("useradd")
            .args(["-m", "-s", "/bin/sh", &name])
            .output()
            .expect("run useradd");
        assert!(
            out.status.success(),
            "useradd {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TempUser(name)
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        let _ = Command::new("pkill")
            .args(["-KILL", "-u", &self.0])
            .output();
        let _ = Command::new("userdel").args(["-r", &self.0]).output();
    }
}

fn lab() -> Lab {
    if let Err(e) = weft_lab::require_root() {
        panic!("{e}");
    }
    Lab::build(&Topology::office(&NODES)).expect("build the lab")
}

fn within(what: &str, timeout: Duration, check: impl FnMut() -> bool) -> Duration {
    weft_lab::timed_wait(what, timeout, check).unwrap_or_else(|e| panic!("{e}"))
}

fn sha256(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn ssh_logs_in_by_policy_refuses_others_audits_and_copies_files() {
    let user = TempUser::create();
    let lab = lab();
    let mut mesh = Mesh::start(&lab, "controller", NetworkSpec::default()).expect("controller");
    let token = mesh.token_file(NODES.len() as u32).unwrap();
    for n in NODES {
        let args: &[&str] = if n == "db1" { &["--ssh"] } else { &[] };
        mesh.start_agent_with_args(n, Some(&token), &[], args)
            .unwrap();
    }
    mesh.wait_full_mesh(&NODES, Duration::from_secs(60))
        .unwrap();

    let policy = format!(
        r#"[[rule]]
name = "members"
action = "allow"
from = "network:lab"
to = "network:lab"

[[ssh]]
name = "ops to db1"
from = ["node:ops"]
to = ["node:db1"]
users = ["{}"]
"#,
        user.0
    );
    let path = lab.log_dir().join("ssh-policy.toml");
    std::fs::write(&path, policy).unwrap();
    mesh.admin(&["policy", "set", path.to_str().unwrap()])
        .unwrap();

    // db1's server is up, its host key published to ops.
    let status = mesh.status("db1").unwrap();
    let ssh = status.ssh.expect("db1 reports its SSH server");
    assert!(ssh.error.is_none(), "{ssh:?}");
    assert!(ssh.host_key.starts_with("ssh-ed25519 "), "{ssh:?}");
    let took = within("ops may log in to db1", Duration::from_secs(30), || {
        mesh.weft("ops", &["ssh", "--config"])
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("Host db1 "))
    });
    println!("db1's host key reached ops' map in {took:?}");

    // ops logs in as the granted user.
    let started = Instant::now();
    let out = mesh
        .weft("ops", &["ssh", "db1", "--", "id", "-un"])
        .unwrap();
    println!("weft ssh db1 -- id -un: {:?}", started.elapsed());
    assert!(
        out.status.success(),
        "weft ssh failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        mesh.agent_log_tail("db1")
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), user.0);
    // Another user, and root, are refused before connecting.
    let out = mesh.weft("ops", &["ssh", "root@db1", "--", "id"]).unwrap();
    assert!(!out.status.success(), "root@db1 must be refused");

    // A shell with a pty (forced: no terminal here).
    let out = mesh
        .weft("ops", &["ssh", "db1", "--ssh-arg=-tt", "--", "tty"])
        .unwrap();
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && tty.contains("/dev/pts/"),
        "no pty: {tty} {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Port forwarding (ssh -L): ops's 127.0.0.1:17007 reaches db1's own
    // 127.0.0.1:7007 through the session.
    let mut echo = Command::new("python3");
    echo.args(["-c", ECHO_SERVER, "7007"]);
    let _echo = lab.spawn("db1", "echo", &echo).unwrap();
    lab.wait_for_tcp_port("db1", 7007, Duration::from_secs(10))
        .unwrap();
    let mut fwd = Command::new(weft_lab::bin_path("weft").unwrap());
    fwd.arg("--socket")
        .arg(lab.log_dir().join("ops.sock"))
        .args([
            "ssh",
            "-L",
            "127.0.0.1:17007:127.0.0.1:7007",
            "--ssh-arg=-N",
            "db1",
        ]);
    let _fwd = lab.spawn("ops", "ssh-forward", &fwd).unwrap();
    within("a forwarded port echoes", Duration::from_secs(20), || {
        lab.tcp_echoes("ops", std::net::Ipv4Addr::LOCALHOST, 17007)
    });

    // web is not granted: weft ssh refuses, and so does the server itself.
    let out = mesh
        .weft("web", &["ssh", "db1", "--", "id", "-un"])
        .unwrap();
    assert!(!out.status.success(), "web must be refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("may not log in"), "{err}");
    let db1 = mesh.overlay_ip("db1").unwrap();
    let mut raw = Command::new("ssh");
    raw.args([
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=10",
    ])
    .arg(format!("{}@{db1}", user.0))
    .args(["id", "-un"]);
    let refused = lab.exec("web", &raw);
    assert!(refused.is_err(), "the server let web in: {refused:?}");

    // The audit log has the session (who, user, from, duration) and the refusal.
    let mut shown = String::new();
    let found = weft_lab::timed_wait(
        "the session and the refusal in the audit log",
        Duration::from_secs(30),
        || {
            let Ok(text) = mesh.admin(&["audit", "--limit", "200", "--json"]) else {
                return false;
            };
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let entries = v["entries"].as_array().cloned().unwrap_or_default();
            let session = entries.iter().find(|e| {
                let d = &e["detail"];
                e["action"] == "ssh.session"
                    && d["state"] == "closed"
                    && d["from_node"] == "ops"
                    && d["user"] == user.0.as_str()
                    && d["server"] == "db1"
                    && d["command"] == "id -un"
                    && d["duration_ms"].is_u64()
            });
            let refused = entries
                .iter()
                .find(|e| e["action"] == "ssh.refused" && e["detail"]["from_node"] == "web");
            if let (Some(s), Some(r)) = (session, refused) {
                shown = format!("{s}\n{r}");
                true
            } else {
                shown = text;
                false
            }
        },
    );
    assert!(found.is_ok(), "not in the audit log: {shown}");
    println!("audit:\n{shown}");

    // scp of a 10 MiB random file through the ssh_config snippet.
    let config = lab.log_dir().join("ops-ssh-config");
    let out = mesh
        .weft(
            "ops",
            &["ssh", "--config", "--output", config.to_str().unwrap()],
        )
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let src = lab.log_dir().join("blob.bin");
    let blob: Vec<u8> = {
        let mut f = std::fs::File::open("/dev/urandom").unwrap();
        let mut b = vec![0u8; 10 * 1024 * 1024];
        std::io::Read::read_exact(&mut f, &mut b).unwrap();
        b
    };
    std::fs::write(&src, &blob).unwrap();
    let started = Instant::now();
    let mut scp = Command::new("scp");
    scp.arg("-F").arg(&config).arg(&src).arg("db1:blob.bin");
    lab.exec("ops", &scp)
        .unwrap_or_else(|e| panic!("scp failed: {e}\n{}", mesh.agent_log_tail("db1")));
    let secs = started.elapsed().as_secs_f64();
    println!(
        "scp of 10 MiB through weft ssh: {secs:.2} s ({:.1} MiB/s)",
        10.0 / secs
    );
    let dst = std::path::Path::new("/home").join(&user.0).join("blob.bin");
    assert_eq!(sha256(&dst), sha256(&src), "the copy differs");
    drop(mesh);
    drop(user);
}
