//! Small Python programs the end-to-end tests run inside lab nodes (python3 is a
//! test dependency), and the [`Lab`] helpers that run them, so every test speaks
//! to the overlay with the same TCP echo server and checks.

use std::net::IpAddr;
use std::process::{Command, Output};
use std::time::Duration;

use crate::Lab;
use crate::error::{LabError, Result};
use crate::process;

/// A threaded TCP echo server on the port in argv[1].
pub const ECHO_SERVER: &str = r#"
import socket, sys, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(64)
def serve(c):
    try:
        while True:
            d = c.recv(4096)
            if not d:
                break
            c.sendall(d)
    except OSError:
        pass
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// Exits 0 if a TCP connection to argv[1]:argv[2] opens and echoes a byte within
/// argv[3] seconds.
pub const TCP_ECHO_CHECK: &str = r#"
import socket, sys
t = float(sys.argv[3])
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=t)
    s.settimeout(t)
    s.sendall(b"x")
    ok = s.recv(1) == b"x"
except OSError:
    ok = False
sys.exit(0 if ok else 1)
"#;

/// Holds a TCP connection to argv[1]:argv[2], sending a byte every 50 ms and
/// appending a line to the file argv[3] for each echo; exits when an echo does
/// not come back within argv[4] seconds, or after argv[5] seconds.
pub const TCP_FLOW: &str = r#"
import socket, sys, time
t = float(sys.argv[4])
end = time.time() + float(sys.argv[5])
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
s.settimeout(t)
f = open(sys.argv[3], "a")
while time.time() < end:
    s.sendall(b"y")
    if s.recv(1) != b"y":
        break
    f.write("%f\n" % time.time())
    f.flush()
    time.sleep(0.05)
"#;

/// Sends argv[3] one-byte UDP datagrams to argv[1]:argv[2].
pub const UDP_BURST: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[3])):
    s.sendto(b"x", (sys.argv[1], int(sys.argv[2])))
"#;

impl Lab {
    /// Runs `python3 -c script args...` in node `node` and returns its output,
    /// whatever its exit status.
    pub fn python(&self, node: &str, script: &str, args: &[&str]) -> Result<Output> {
        let mut py = Command::new("python3");
        py.arg("-c").arg(script).args(args);
        let mut cmd = process::in_netns_like(&self.netns(node)?, &py);
        crate::cmd::output(&mut cmd, None)
    }

    /// Whether `node` opens a TCP connection to `ip:port` (an [`ECHO_SERVER`])
    /// and gets a byte echoed within a second.
    pub fn tcp_echoes(&self, node: &str, ip: impl Into<IpAddr>, port: u16) -> bool {
        let ip: IpAddr = ip.into();
        self.python(
            node,
            TCP_ECHO_CHECK,
            &[&ip.to_string(), &port.to_string(), "1"],
        )
        .is_ok_and(|o| o.status.success())
    }

    /// One iperf3 TCP run of `secs` seconds from `from` to a one-shot server in
    /// `to` listening on `ip` (port 5201): the bytes received and iperf3's JSON.
    pub fn iperf3_bytes(
        &self,
        from: &str,
        to: &str,
        ip: impl Into<IpAddr>,
        secs: u32,
    ) -> Result<(f64, String)> {
        let ip = ip.into().to_string();
        let mut server = Command::new("iperf3");
        server.args(["-s", "-1", "-B", &ip, "-p", "5201"]);
        let mut srv = self.spawn(to, "iperf3-server", &server)?;
        srv.wait_for_tcp_listen(5201, Duration::from_secs(10))?;
        let out = self.run(
            from,
            &[
                "iperf3",
                "-c",
                &ip,
                "-p",
                "5201",
                "-t",
                &secs.to_string(),
                "-J",
            ],
        )?;
        let bytes = serde_json::from_str::<serde_json::Value>(&out)
            .ok()
            .and_then(|v| v["end"]["sum_received"]["bytes"].as_f64())
            .ok_or_else(|| LabError::Probe(format!("iperf3 printed no received bytes: {out}")))?;
        Ok((bytes, out))
    }

    /// Whether one ping from `node` to `ip` is answered within 500 ms (no retry:
    /// for measuring when a path starts or stops working).
    pub fn ping_once(&self, node: &str, ip: impl Into<IpAddr>) -> bool {
        let ip: IpAddr = ip.into();
        let Ok(netns) = self.netns(node) else {
            return false;
        };
        let mut cmd = process::in_netns_like(&netns, &Command::new("ping"));
        cmd.args(["-c", "1", "-W", "0.5", "-n", "-q"])
            .arg(ip.to_string());
        crate::cmd::output(&mut cmd, None).is_ok_and(|o| o.status.success())
    }
}
