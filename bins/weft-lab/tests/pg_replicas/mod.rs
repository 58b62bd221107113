//! Helpers of `pg_replicas_e2e`: a replica as the test's API client sees
//! it (HTTP client, `curl` in its node, its metrics), and the test's own
//! side of the network (a tokio runtime inside a lab node).

use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::Arc;

use prometheus_parse::{Scrape, Value};
use weft_api_client::{Client, ClientConfig, Trust, parse_fingerprint};
use weft_lab::Lab;
use weft_lab::mesh::{CONTROLLER_PORT, Controller};

/// One replica as the test's API client sees it.
#[derive(Clone)]
pub(crate) struct Replica {
    pub(crate) node: &'static str,
    pub(crate) addr: Ipv4Addr,
    pub(crate) url: String,
    pub(crate) fingerprint: String,
    pub(crate) admin_token: String,
}

impl Replica {
    pub(crate) fn of(c: &Controller, node: &'static str, addr: Ipv4Addr) -> Replica {
        let admin_token = std::fs::read_to_string(c.data_dir.join("admin.token"))
            .unwrap()
            .trim()
            .to_owned();
        Replica {
            node,
            addr,
            url: c.url.clone(),
            fingerprint: c.fingerprint.clone(),
            admin_token,
        }
    }

    pub(crate) fn client(&self) -> Client {
        Client::new(ClientConfig {
            trust: Trust::Fingerprint(parse_fingerprint(&self.fingerprint).unwrap()),
            ..ClientConfig::new(self.url.clone())
        })
        .unwrap()
    }

    pub(crate) fn admin(&self) -> Client {
        self.client().with_bearer(&self.admin_token).unwrap()
    }

    /// `curl` in the replica's node: (HTTP status, body); status 0 when no
    /// HTTP answer came.
    pub(crate) fn curl(&self, lab: &Lab, path: &str, admin: bool) -> (u16, String) {
        let netns = lab.netns(self.node).unwrap();
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &netns, "curl", "-sk", "--max-time", "5"])
            .args(["-w", "\n%{http_code}"]);
        if admin {
            cmd.arg("-H")
                .arg(format!("Authorization: Bearer {}", self.admin_token));
        }
        let out = cmd
            .arg(format!("https://127.0.0.1:{CONTROLLER_PORT}{path}"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    pub(crate) fn metrics(&self, lab: &Lab) -> Scrape {
        let (code, body) = self.curl(lab, "/metrics", true);
        assert_eq!(code, 200, "GET /metrics on {}: {body}", self.node);
        Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
            .unwrap_or_else(|e| panic!("not a Prometheus exposition ({e}):\n{body}"))
    }
}

/// The sum of `metric`'s samples whose labels include every `(name,
/// value)`; there must be at least one.
pub(crate) fn metric(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let values: Vec<f64> = s
        .samples
        .iter()
        .filter(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => panic!("{metric} is not a single value"),
        })
        .collect();
    assert!(!values.is_empty(), "no {metric}{labels:?} in the scrape");
    values.iter().sum()
}

/// HTTP answers with status 500 or above other than 503, by route.
pub(crate) fn server_errors(s: &Scrape) -> Vec<String> {
    metric(s, "weft_controller_http_requests_total", &[]);
    s.samples
        .iter()
        .filter(|x| x.metric == "weft_controller_http_requests_total")
        .filter_map(|x| {
            let status: u16 = x.labels.get("status")?.parse().ok()?;
            (status >= 500 && status != 503).then(|| format!("{:?}: {:?}", x.labels, x.value))
        })
        .collect()
}

/// The test's side of the network: a runtime whose every thread lives in
/// a lab node, so the sockets its tasks open do too.
pub(crate) struct Side {
    rt: tokio::runtime::Runtime,
}

impl Side {
    pub(crate) fn new(lab: &Lab, node: &str) -> Side {
        let ns = Arc::new(lab.open_netns(node).unwrap());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(move || ns.enter().expect("enter the client node"))
            .build()
            .unwrap();
        Side { rt }
    }

    /// Runs `f` on the runtime's threads (never on the caller's, which is
    /// outside the lab).
    pub(crate) fn run<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> T {
        self.rt.block_on(self.rt.spawn(f)).expect("task panicked")
    }
}
