//! The full resolver end to end (issue 18): `weftd --dns system` in a lab node
//! serves every name through a DNS-over-TLS upstream that the lab runs itself
//! (dnsmasq behind stunnel4, a private CA), falls back past a dead first
//! upstream, bounds the cache by the minimum and maximum TTL, keeps a bounded,
//! rotating query log, and `weft dns log` / `weft dns stats` show it all. Needs
//! root, `dnsmasq`, `stunnel4` and `openssl` (`scripts/install-deps.sh`); FAILS
//! (never skips) without them.

#![allow(clippy::disallowed_methods, reason = "tests wait on the real clock")]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]
#![allow(clippy::print_stdout, reason = "the measured figures are reported")]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use weft_lab::mesh::{Mesh, NetworkSpec};
use weft_lab::{Lab, Net, Topology};

const NODE: &str = "db";
/// The lab's DoT server: a host on the internet segment.
const DOT_HOST: &str = "dot";
/// The name its certificate is valid for.
const DOT_NAME: &str = "dot.lab.test";
/// Nothing answers there: the first upstream is dead.
const DEAD: &str = "udp://198.18.0.77";
/// The cache bounds the node runs with (small, so the test sees both).
const MIN_TTL: u32 = 10;
const MAX_TTL: u32 = 14;
/// The query log's budget.
const LOG_BUDGET: u64 = 8192;

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A private CA and a server certificate for [`DOT_NAME`] (openssl).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |n: &str| dir.join(n);
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    sh(Command::new("openssl")
        .args(["req", "-x509"])
        .args(ec)
        .arg("-keyout")
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("ca.pem"))
        .args(["-subj", "/CN=weft lab DoT CA", "-days", "2"]));
    sh(Command::new("openssl")
        .arg("req")
        .args(ec)
        .arg("-keyout")
        .arg(p("server.key"))
        .arg("-out")
        .arg(p("server.csr"))
        .args(["-subj", &format!("/CN={DOT_NAME}")]));
    std::fs::write(
        p("ext.cnf"),
        format!("subjectAltName=DNS:{DOT_NAME}\nbasicConstraints=CA:FALSE\n"),
    )
    .unwrap();
    sh(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-in"])
        .arg(p("server.csr"))
        .arg("-CA")
        .arg(p("ca.pem"))
        .arg("-CAkey")
        .arg(p("ca.key"))
        .arg("-CAcreateserial")
        .arg("-out")
        .arg(p("server.pem"))
        .arg("-extfile")
        .arg(p("ext.cnf")));
    (p("ca.pem"), p("server.pem"), p("server.key"))
}

/// `dig` in the node through its /etc/resolv.conf: (TTL, address) of each A
/// record.
fn dig(lab: &Lab, name: &str) -> Vec<(u32, String)> {
    let netns = lab.netns(NODE).unwrap();
    let out = Command::new("ip")
        .args([
            "netns", "exec", &netns, "dig", "+noall", "+answer", "+time=5", "+tries=1",
        ])
        .args([name, "A"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [_, ttl, "IN", "A", addr] => Some((ttl.parse().ok()?, (*addr).to_owned())),
                _ => None,
            }
        })
        .collect()
}

fn weft_json(mesh: &Mesh, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = mesh.weft(NODE, &all).unwrap();
    assert!(out.status.success(), "weft {args:?}: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `weft dns log --json -n N`: one entry a line.
fn log_entries(mesh: &Mesh, n: usize) -> Vec<serde_json::Value> {
    let out = mesh
        .weft(NODE, &["--json", "dns", "log", "-n", &n.to_string()])
        .unwrap();
    assert!(out.status.success(), "weft dns log: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn last_entry_for(mesh: &Mesh, name: &str) -> serde_json::Value {
    log_entries(mesh, 200)
        .into_iter()
        .rev()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no query log entry for {name}"))
}

/// How many times dnsmasq was asked for `name` (its `--log-queries` lines).
fn upstream_asked(log: &Path, name: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&format!("query[A] {name} ")))
        .count()
}

#[test]
fn system_resolver_over_dot_with_fallback_ttl_bounds_and_a_bounded_log() {
    if let Err(e) = weft_lab::require_root() {
        panic!("{e}");
    }
    for tool in ["openssl", "dig"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool} >/dev/null")])
                .status()
                .unwrap()
                .success(),
            "{tool} is missing: run scripts/install-deps.sh"
        );
    }
    let stunnel = [
        "/usr/bin/stunnel4",
        "/usr/bin/stunnel",
        "/usr/sbin/stunnel4",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("stunnel4 is missing: run scripts/install-deps.sh (package stunnel4)");
    let dnsmasq = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("dnsmasq is missing: run scripts/install-deps.sh (package dnsmasq-base)");

    let topo = Topology::office(&[NODE]).host(DOT_HOST, Net::Internet);
    let lab = Lab::build(&topo).expect("build the lab");
    let dir = lab.log_dir().join("dot");
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = certificates(&dir);
    let dot_ip: Ipv4Addr = lab.node(DOT_HOST).unwrap().uplink().addr;

    // The lab's TLS resolver: dnsmasq answers the test names (each with its
    // own TTL) on DOT_HOST:53, stunnel4 terminates TLS on :853 in front of it.
    let mut dns_cmd = Command::new(dnsmasq);
    dns_cmd.args([
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--pid-file",
        "--log-facility=-",
        "--log-queries",
        "--user=root",
        "--group=root",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--port=53",
        &format!("--listen-address={dot_ip}"),
        "--host-record=short.test,198.18.0.50,5",
        "--host-record=long.test,198.18.0.51,999999",
        "--address=/bulk.test/198.18.0.60",
    ]);
    let mut upstream = lab.spawn(DOT_HOST, "dnsmasq", &dns_cmd).unwrap();
    upstream
        .wait_for_udp_bound(53, Duration::from_secs(10))
        .unwrap();
    let dnsmasq_log = lab.log_dir().join(format!("{DOT_HOST}-dnsmasq.log"));
    let conf = dir.join("stunnel.conf");
    std::fs::write(
        &conf,
        format!(
            "foreground = yes\npid =\n[dot]\naccept = {dot_ip}:853\nconnect = {dot_ip}:53\n\
             cert = {}\nkey = {}\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let mut tls = lab
        .spawn(DOT_HOST, "stunnel", Command::new(stunnel).arg(&conf))
        .unwrap();
    tls.wait_for_tcp_listen(853, Duration::from_secs(10))
        .unwrap();

    let resolv_before = std::fs::read(lab.resolv_conf_path(NODE).unwrap()).unwrap();
    let network = NetworkSpec {
        name: "prod".into(),
        cidr: "100.64.0.0/24".into(),
        ..NetworkSpec::default()
    };
    let mut mesh = Mesh::start(&lab, "controller", network).expect("controller");
    let token = mesh.token_file(1).unwrap();
    let tls_upstream = format!("tls://{dot_ip}#{DOT_NAME}");
    let (min, max, budget) = (
        MIN_TTL.to_string(),
        MAX_TTL.to_string(),
        LOG_BUDGET.to_string(),
    );
    let ca_arg = ca.display().to_string();
    let args = [
        "--dns",
        "system",
        "--dns-upstream",
        DEAD,
        "--dns-upstream",
        &tls_upstream,
        "--dns-upstream-ca",
        &ca_arg,
        "--dns-min-ttl",
        &min,
        "--dns-max-ttl",
        &max,
        "--dns-query-log",
        "--dns-query-log-max-bytes",
        &budget,
    ];
    mesh.start_agent_with_args(NODE, Some(&token), &[], &args)
        .unwrap();
    mesh.overlay_ip(NODE).unwrap();

    // The system's only resolver is weft's.
    let resolv = lab.resolv_conf_path(NODE).unwrap();
    weft_lab::timed_wait(
        "resolv.conf names only weft",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(&resolv).is_ok_and(|t| {
                let ns: Vec<&str> = t.lines().filter(|l| l.starts_with("nameserver")).collect();
                ns == ["nameserver 127.0.2.53"]
            })
        },
    )
    .unwrap();

    // Names outside the overlay resolve through the DoT upstream, past the
    // dead first one (the first query waits out its timeout once).
    let t = Instant::now();
    let first = dig(&lab, "short.test");
    let took = t.elapsed();
    println!("first query with a dead first upstream: {took:?}");
    assert_eq!(first.len(), 1, "short.test: {first:?}");
    assert_eq!(first[0].1, "198.18.0.50");
    assert_eq!(
        first[0].0, MIN_TTL,
        "a 5 s record is served with the minimum TTL"
    );
    let e = last_entry_for(&mesh, "short.test");
    assert_eq!(e["source"], "upstream");
    assert_eq!(e["upstream"], format!("tls://{dot_ip}:853#{DOT_NAME}"));
    assert_eq!(upstream_asked(&dnsmasq_log, "short.test"), 1);
    // The dead one is skipped now: the next new name is fast.
    let t = Instant::now();
    let long = dig(&lab, "long.test");
    let fast = t.elapsed();
    println!("a new name with the dead upstream in backoff: {fast:?}");
    assert!(fast < Duration::from_secs(1), "{fast:?}");
    assert_eq!(long.len(), 1, "long.test: {long:?}");
    assert_eq!(
        long[0].0, MAX_TTL,
        "a 999999 s record is capped at the maximum TTL"
    );
    let stats = weft_json(&mesh, &["dns", "stats"]);
    assert_eq!(stats["mode"], "system");
    assert_eq!(
        (stats["min_ttl"].as_u64(), stats["max_ttl"].as_u64()),
        (Some(u64::from(MIN_TTL)), Some(u64::from(MAX_TTL)))
    );
    let ups = stats["upstreams"].as_array().unwrap();
    assert_eq!(ups[0]["upstream"], "udp://198.18.0.77:53");
    assert_eq!(ups[0]["healthy"], false, "{stats}");
    assert!(ups[0]["last_error"].is_string(), "{stats}");
    assert_eq!(ups[1]["healthy"], true, "{stats}");
    assert!(ups[1]["answered"].as_u64().unwrap() >= 2, "{stats}");

    // Min TTL: 6 s later the 5 s record still comes from the cache (upstream
    // asked once). Max TTL: after 16 s the record capped at 14 s is asked again.
    std::thread::sleep(Duration::from_secs(6));
    let again = dig(&lab, "short.test");
    assert_eq!(again.len(), 1);
    assert!(again[0].0 <= MIN_TTL && again[0].0 >= 1, "{again:?}");
    assert_eq!(last_entry_for(&mesh, "short.test")["source"], "cache");
    assert_eq!(
        upstream_asked(&dnsmasq_log, "short.test"),
        1,
        "kept for the minimum"
    );
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(dig(&lab, "long.test").len(), 1);
    assert_eq!(last_entry_for(&mesh, "long.test")["source"], "upstream");
    assert_eq!(
        upstream_asked(&dnsmasq_log, "long.test"),
        2,
        "kept at most the maximum"
    );

    // The query log stays within its budget: 300 names through one dig.
    let batch = dir.join("names.txt");
    let names: String = (0..300).map(|i| format!("n{i}.bulk.test A\n")).collect();
    std::fs::write(&batch, names).unwrap();
    let netns = lab.netns(NODE).unwrap();
    sh(Command::new("ip")
        .args([
            "netns", "exec", &netns, "dig", "+short", "+time=5", "+tries=1", "-f",
        ])
        .arg(&batch));
    let state = lab.log_dir().join(format!("{NODE}-state"));
    let (log, rotated) = (state.join("dns-query.log"), state.join("dns-query.log.1"));
    weft_lab::timed_wait("the last name logged", Duration::from_secs(5), || {
        log_entries(&mesh, 1)
            .first()
            .is_some_and(|e| e["name"] == "n299.bulk.test")
    })
    .unwrap();
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let total = size(&log) + size(&rotated);
    println!(
        "query log after 300+ queries: {} + {} = {total} bytes (budget {LOG_BUDGET})",
        size(&log),
        size(&rotated)
    );
    assert!(rotated.exists(), "the log rotated");
    assert!(total <= LOG_BUDGET, "{total} bytes");
    let tail = log_entries(&mesh, 5);
    assert_eq!(tail.len(), 5);
    let seqs: Vec<u64> = tail.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] + 1 == w[1]), "{seqs:?}");
    // Human output too.
    let out = mesh.weft(NODE, &["dns", "log", "-n", "2"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("n299.bulk.test A NoError upstream tls://"),
        "{text}"
    );
    let out = mesh.weft(NODE, &["dns", "stats"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("resolver: --dns system (running)"), "{text}");
    assert!(text.contains("DOWN"), "{text}");
    assert!(text.contains("query log: "), "{text}");
    println!("{text}");

    // `weft dns log --follow` prints a new answer as it is logged.
    let mut follow = Command::new("ip")
        .args(["netns", "exec", &netns])
        .arg(weft_lab::bin_path("weft").unwrap())
        .arg("--socket")
        .arg(lab.log_dir().join(format!("{NODE}.sock")))
        .args(["dns", "log", "--follow", "-n", "0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(dig(&lab, "followed.bulk.test").len(), 1);
    let line = rx.recv_timeout(Duration::from_secs(5));
    let _ = follow.kill();
    let _ = follow.wait();
    let line = line.expect("weft dns log --follow printed the new answer");
    assert!(
        line.contains("followed.bulk.test A NoError upstream"),
        "{line}"
    );

    // `weft down`: the node's resolver configuration exactly as before.
    let out = mesh.weft(NODE, &["down"]).unwrap();
    assert!(out.status.success(), "weft down: {out:?}");
    assert_eq!(std::fs::read(&resolv).unwrap(), resolv_before);
    drop(tls);
    drop(upstream);
}
