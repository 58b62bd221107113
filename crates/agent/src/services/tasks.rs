//! The two tasks behind [`super::Services`]: the checker, which runs every
//! provided service's check each [`HEALTH_INTERVAL_MS`] (all at once, each
//! bounded by [`HEALTH_TIMEOUT_MS`]) and publishes the verdicts; and the
//! reporter, which sends them to the controller when one flips, every
//! [`REPORT_EVERY`], and on every new controller connection, retrying a
//! failed report after [`RETRY_AFTER`]. Neither ever waits on the supervisor,
//! nor the supervisor on them.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use weft_proto::local::FailureStatus;
use weft_proto::service::{
    HEALTH_INTERVAL_MS, HEALTH_TIMEOUT_MS, Health, HealthReport, InstanceHealth, MAX_HEALTH_REPORTS,
};

use super::check::{self, Target, Verdict};
use crate::clock;
use crate::ctl::{self, LinkState};
use crate::failures::Failures;
use crate::state::Credential;

/// Verdicts by `(network, name)`.
pub(crate) type Verdicts = BTreeMap<(String, String), Verdict>;

/// The heartbeat: a report this often even without a flip.
pub(crate) const REPORT_EVERY: Duration = Duration::from_secs(30);
/// After a report failed, the next try.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(2);
/// The longest one report may take.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the checker publishes: the verdicts, and how many flips so far (the
/// reporter sends a report when it grows).
#[derive(Debug, Clone, Default)]
pub(crate) struct Checked {
    pub(crate) verdicts: Verdicts,
    pub(crate) flips: u64,
}

/// Checks `targets` every [`HEALTH_INTERVAL_MS`] until `targets`' sender is
/// dropped.
pub(crate) async fn checker(
    mut targets: watch::Receiver<Vec<Target>>,
    out: watch::Sender<Checked>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(HEALTH_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = Duration::from_millis(HEALTH_TIMEOUT_MS);
    let mut checked = Checked::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = targets.changed() => {
                if changed.is_err() {
                    return; // the agent is stopping
                }
                // A new list: drop what is no longer provided at once, check
                // the rest at the next tick.
                let list = targets.borrow_and_update().clone();
                checked.verdicts.retain(|k, _| list.iter().any(|t| t.key() == *k));
                out.send_replace(checked.clone());
                continue;
            }
        }
        let list = targets.borrow().clone();
        if list.is_empty() {
            continue;
        }
        let mut set = JoinSet::new();
        for t in &list {
            let t = t.clone();
            set.spawn(async move {
                let r = check::probe(&t, timeout).await;
                (t.key(), r)
            });
        }
        let mut results = Vec::with_capacity(list.len());
        while let Some(done) = set.join_next().await {
            if let Ok(r) = done {
                results.push(r);
            }
        }
        let now_ms = clock::unix_ms();
        checked
            .verdicts
            .retain(|k, _| list.iter().any(|t| t.key() == *k));
        for (key, result) in results {
            if !list.iter().any(|t| t.key() == key) {
                continue;
            }
            let v = checked.verdicts.entry(key.clone()).or_default();
            let ok = result.is_ok();
            if v.record(result, now_ms) {
                checked.flips += 1;
                tracing::info!(
                    network = %key.0,
                    service = %key.1,
                    health = %v.health,
                    detail = v.detail.as_deref().unwrap_or(""),
                    "provided service health changed"
                );
            } else if !ok {
                tracing::debug!(service = %key.1, detail = v.detail.as_deref().unwrap_or(""), "health check failed");
            }
        }
        out.send_replace(checked.clone());
    }
}

/// The report of `verdicts`: every verdict but `Unknown`, at most
/// [`MAX_HEALTH_REPORTS`].
pub(crate) fn report_of(verdicts: &Verdicts) -> HealthReport {
    HealthReport {
        checks: verdicts
            .iter()
            .filter(|(_, v)| v.health != Health::Unknown)
            .filter_map(|((network, service), v)| {
                Some(InstanceHealth {
                    service: service.clone(),
                    network: network.clone(),
                    health: v.health,
                    checked_ms: v.checked_ms?,
                    detail: v.detail.clone(),
                })
            })
            .take(MAX_HEALTH_REPORTS)
            .collect(),
    }
}

/// Where to report: the node's credential and its link's state (`None`:
/// not joined, or down).
pub(crate) type LinkInfo = Option<(Credential, watch::Receiver<LinkState>)>;

/// Sends the checker's verdicts to the controller (see the module doc);
/// failures are published for `weft status` (area `services`).
pub(crate) async fn reporter(
    mut link: watch::Receiver<LinkInfo>,
    mut checked: watch::Receiver<Checked>,
    shown: watch::Sender<Vec<FailureStatus>>,
) {
    let mut failures = Failures::default();
    let mut client: Option<weft_api_client::Client> = None;
    let mut state: Option<watch::Receiver<LinkState>> = None;
    let mut connected = false;
    let mut reported_flips = 0u64;
    let mut next = Instant::now() + REPORT_EVERY;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            changed = checked.changed() => {
                if changed.is_err() {
                    return;
                }
                if checked.borrow_and_update().flips == reported_flips {
                    continue;
                }
            }
            changed = link.changed() => {
                if changed.is_err() {
                    return; // the agent is stopping
                }
                let info = link.borrow_and_update().clone();
                client = info.as_ref().and_then(|(c, _)| {
                    ctl::client_for(c)
                        .inspect_err(|e| tracing::warn!("service health reports: {e:#}"))
                        .ok()
                });
                state = info.map(|(_, s)| s);
                connected = false;
                if client.is_none() {
                    failures.set_area("services", None, clock::unix_ms());
                    shown.send_replace(failures.list());
                }
                continue;
            }
            Some(up) = connection_changed(&mut state) => {
                let rising = up && !connected;
                connected = up;
                if !rising {
                    continue;
                }
            }
        }
        next = Instant::now() + REPORT_EVERY;
        let Some(c) = client.clone() else {
            continue;
        };
        let (report, flips) = {
            let now = checked.borrow();
            (report_of(&now.verdicts), now.flips)
        };
        if report.checks.is_empty() {
            reported_flips = flips;
            failures.set_area("services", None, clock::unix_ms());
            shown.send_replace(failures.list());
            continue;
        }
        let sent = tokio::time::timeout(REPORT_TIMEOUT, c.report_service_health(&report)).await;
        let error = match sent {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!(
                "the controller did not take this node's service health report: {e}; retrying every {} s",
                RETRY_AFTER.as_secs()
            )),
            Err(_) => Some(format!(
                "the service health report timed out after {} s; retrying",
                REPORT_TIMEOUT.as_secs()
            )),
        };
        match &error {
            None => reported_flips = flips,
            Some(e) => {
                tracing::warn!("{e}");
                next = Instant::now() + RETRY_AFTER;
            }
        }
        failures.set_area(
            "services",
            error.map(|e| ("health report".to_owned(), e)),
            clock::unix_ms(),
        );
        shown.send_replace(failures.list());
    }
}

/// The link's next `connected` value (pending forever without a link, or
/// once its task is gone).
async fn connection_changed(state: &mut Option<watch::Receiver<LinkState>>) -> Option<bool> {
    let Some(s) = state.as_mut() else {
        return std::future::pending().await;
    };
    if s.changed().await.is_err() {
        *state = None;
        return std::future::pending().await;
    }
    Some(s.borrow_and_update().connected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use tokio::net::TcpListener;
    use weft_proto::service::{HealthCheck, ProvidedService};

    /// Against a stand-in controller: a report on each new connection and
    /// each flip, a refused report retried and shown until it goes through.
    #[tokio::test]
    async fn reports_go_on_connect_and_flip_and_failures_show_until_retried() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let refuse = Arc::new(AtomicBool::new(true));
        let url = crate::stand_in::controller({
            let (seen, refuse) = (seen.clone(), refuse.clone());
            move |head, body| {
                assert!(head.starts_with("POST /v1/node/services/health "), "{head}");
                seen.lock().unwrap().push(body.to_owned());
                if refuse.load(Ordering::SeqCst) {
                    (
                        503,
                        r#"{"error":{"code":"busy","message":"try later"}}"#.into(),
                    )
                } else {
                    (204, String::new())
                }
            }
        })
        .await;
        let key = ("prod".to_owned(), "db".to_owned());
        let mut v = Verdict::default();
        v.record(Ok(()), 1);
        v.record(Ok(()), 2);
        let (checked_tx, checked_rx) = watch::channel(Checked {
            verdicts: [(key.clone(), v.clone())].into(),
            flips: 1,
        });
        let (link_tx, link_rx) = watch::channel(None);
        let (shown_tx, mut shown) = watch::channel(Vec::new());
        let _task = tokio::spawn(reporter(link_rx, checked_rx, shown_tx));
        let (state_tx, state_rx) = watch::channel(LinkState::default());
        link_tx.send_replace(Some((crate::stand_in::joined(&url), state_rx)));
        let connect = |up: bool| {
            state_tx.send_modify(|s| s.connected = up);
        };
        let wait = |n: usize| {
            let seen = seen.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(5), async {
                    while seen.lock().unwrap().len() < n {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
                .await
                .unwrap_or_else(|_| panic!("fewer than {n} reports"));
            }
        };
        tokio::task::yield_now().await;
        connect(true);
        wait(1).await;
        assert!(seen.lock().unwrap()[0].contains(r#""health":"healthy""#));
        // Refused: shown in status, retried.
        tokio::time::timeout(Duration::from_secs(2), async {
            while shown.borrow_and_update().is_empty() {
                shown.changed().await.unwrap();
            }
        })
        .await
        .unwrap();
        let f = shown.borrow().clone();
        assert_eq!(
            (f[0].area.as_str(), f[0].what.as_str()),
            ("services", "health report")
        );
        assert!(f[0].error.contains("try later"), "{}", f[0].error);
        refuse.store(false, Ordering::SeqCst);
        wait(2).await;
        tokio::time::timeout(Duration::from_secs(2), async {
            while !shown.borrow_and_update().is_empty() {
                shown.changed().await.unwrap();
            }
        })
        .await
        .unwrap();
        // A flip: reported at once.
        v.record(Err("refused".into()), 3);
        v.record(Err("refused".into()), 4);
        checked_tx.send_replace(Checked {
            verdicts: [(key, v)].into(),
            flips: 2,
        });
        wait(3).await;
        assert!(seen.lock().unwrap()[2].contains(r#""health":"unhealthy""#));
        // A new connection: reported again.
        connect(false);
        tokio::time::sleep(Duration::from_millis(50)).await;
        connect(true);
        wait(4).await;
        assert_eq!(seen.lock().unwrap().len(), 4, "no report without a reason");
    }

    #[test]
    fn unknown_verdicts_are_not_reported() {
        let mut v = Verdicts::new();
        let mut healthy = Verdict::default();
        healthy.record(Ok(()), 1);
        healthy.record(Ok(()), 2);
        let mut unknown = Verdict::default();
        unknown.record(Err("refused".into()), 2);
        v.insert(("prod".into(), "db".into()), healthy);
        v.insert(("prod".into(), "web".into()), unknown);
        let r = report_of(&v);
        assert_eq!(r.checks.len(), 1);
        assert_eq!(
            (
                r.checks[0].service.as_str(),
                r.checks[0].health,
                r.checks[0].checked_ms
            ),
            ("db", Health::Healthy, 2)
        );
    }

    /// The checker against a real listener: healthy after two checks, and
    /// unhealthy (a flip) two checks after the listener is gone; a service
    /// dropped from the list loses its verdict.
    #[tokio::test]
    async fn the_checker_flips_on_the_threshold_and_forgets_dropped_services() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let target = Target {
            service: ProvidedService {
                name: "db".into(),
                network: "prod".into(),
                ports: vec![weft_proto::service::ServicePort {
                    port,
                    proto: weft_proto::service::ServiceProto::Tcp,
                }],
                health: HealthCheck::Tcp,
            },
            addr: Some(Ipv4Addr::LOCALHOST),
        };
        let (targets_tx, targets_rx) = watch::channel(vec![target]);
        let (out_tx, mut out) = watch::channel(Checked::default());
        let task = tokio::spawn(checker(targets_rx, out_tx));
        let key = ("prod".to_owned(), "db".to_owned());
        let wait_for = |out: &mut watch::Receiver<Checked>, h: Health| {
            let key = key.clone();
            let mut out = out.clone();
            async move {
                let started = Instant::now();
                tokio::time::timeout(Duration::from_secs(6), async {
                    loop {
                        if out.borrow_and_update().verdicts.get(&key).map(|v| v.health) == Some(h) {
                            return started.elapsed();
                        }
                        out.changed().await.unwrap();
                    }
                })
                .await
                .unwrap_or_else(|_| panic!("never {h}"))
            }
        };
        wait_for(&mut out, Health::Healthy).await;
        assert_eq!(out.borrow().flips, 1);
        drop(l);
        let took = wait_for(&mut out, Health::Unhealthy).await;
        assert!(took <= Duration::from_millis(2_500), "{took:?}");
        assert_eq!(out.borrow().flips, 2);
        assert!(out.borrow().verdicts[&key].detail.is_some());
        targets_tx.send_replace(Vec::new());
        tokio::time::timeout(Duration::from_secs(2), async {
            while !out.borrow_and_update().verdicts.is_empty() {
                out.changed().await.unwrap();
            }
        })
        .await
        .unwrap();
        drop(targets_tx);
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .unwrap()
            .unwrap();
    }
}
