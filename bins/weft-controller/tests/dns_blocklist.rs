//! The DNS blocklist against the real controller: a file refused with its
//! lines (API and `weft admin dns blocklist`), hosts and domain-list formats
//! normalized, a set reaching every node's map as one delta with the list's
//! reference, the node's fetch matching it, versions moving forward, the
//! audit trail, a restart keeping it, and clear.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::time::Duration;

use common::*;
use weft_proto::dnsblock::{BlockMode, DnsBlocklistRef, SetDnsBlocklistRequest};
use weft_proto::netmap::{MapChange, MapEvent, NetworkMap};

const IDLE: Duration = Duration::from_secs(10);

/// The next blocklist change on `s` within `wait`, applied to `map`.
async fn next_blocklist(
    s: &mut weft_api_client::MapStream,
    map: &mut NetworkMap,
    wait: Duration,
) -> Option<Option<DnsBlocklistRef>> {
    next_change(s, map, wait, |c| match c {
        MapChange::DnsBlocklist { blocklist } => Some(blocklist.clone()),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_blocklist_is_validated_versioned_audited_carried_and_fetched() {
    let dir = tempfile::tempdir().unwrap();
    let mut ctl = Controller::start(dir.path(), &[]);
    let admin = ctl.admin();
    let tok = network_with_token(&admin, "lab", "100.64.0.0/24", 8).await;
    let c = ctl.client();
    let (a, b) = (identity(8), identity(8));
    let ra = register(&c, &tok, &a).await.unwrap();
    let rb = register(&c, &tok, &b).await.unwrap();
    let ca = c.with_bearer(&ra.credential).unwrap();
    let cb = c.with_bearer(&rb.credential).unwrap();
    let mut sa = ca.map_stream(None, IDLE).await.unwrap();
    let mut sb = cb.map_stream(None, IDLE).await.unwrap();
    let MapEvent::Snapshot(mut ma) = next_event(&mut sa).await else {
        panic!("first event must be a snapshot")
    };
    let MapEvent::Snapshot(mut mb) = next_event(&mut sb).await else {
        panic!("first event must be a snapshot")
    };
    assert_eq!(ma.dns_blocklist, None);
    let (status, code, _) = refused(ca.fetch_dns_blocklist().await);
    assert_eq!((status, code.as_str()), (404, "no_dns_blocklist"));
    assert!(
        admin
            .get_dns_blocklist(false)
            .await
            .unwrap()
            .blocklist
            .is_none()
    );

    // Refused by the API with every bad line, nothing stored.
    let (status, code, message) = refused(
        admin
            .set_dns_blocklist(&SetDnsBlocklistRequest {
                text: "ok.example\n10.1.2.3 intranet.example\ncom\n".into(),
                mode: BlockMode::Nxdomain,
            })
            .await,
    );
    assert_eq!((status, code.as_str()), (400, "dns_blocklist_invalid"));
    assert!(
        message.contains("line 2: hosts line maps to 10.1.2.3"),
        "{message}"
    );
    assert!(
        message.contains("line 3: \"com\" is a single label"),
        "{message}"
    );
    // And by the CLI, naming the file.
    let bad = dir.path().join("bad.txt");
    std::fs::write(&bad, "good.example\nnot a name\n").unwrap();
    let bad_s = bad.to_str().unwrap();
    let (ok, _, err) = ctl.cli(&["dns", "blocklist", "set", bad_s]);
    assert!(!ok);
    assert!(
        err.contains(&format!("{bad_s}:2: expected one domain a line")),
        "{err}"
    );
    let (ok, out, _) = ctl.cli(&["--json", "dns", "blocklist", "set", bad_s]);
    assert!(!ok && out.contains("\"dns_blocklist_invalid\""), "{out}");
    assert!(
        admin
            .get_dns_blocklist(false)
            .await
            .unwrap()
            .blocklist
            .is_none()
    );

    // Hosts and list formats, normalized; every node gets the reference.
    let file = dir.path().join("list.txt");
    std::fs::write(
        &file,
        "# ads\n0.0.0.0 Ads.Example.COM tracker.example.net # two names\n\
         127.0.0.1 localhost\n*.wild.example.org\nads.example.com.\n",
    )
    .unwrap();
    let (ok, out, err) = ctl.cli(&["dns", "blocklist", "set", file.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("3 domains, mode nxdomain; 2 nodes fetch it"),
        "{out}"
    );
    let ra_ref = next_blocklist(&mut sa, &mut ma, IDLE)
        .await
        .unwrap()
        .unwrap();
    let rb_ref = next_blocklist(&mut sb, &mut mb, IDLE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ra_ref, rb_ref);
    assert_eq!(ra_ref.entries, 3);
    assert_eq!(ra_ref.mode, BlockMode::Nxdomain);
    assert_eq!(ma.dns_blocklist.as_ref(), Some(&ra_ref));
    let fetched = ca.fetch_dns_blocklist().await.unwrap();
    assert_eq!(
        fetched.domains,
        vec!["ads.example.com", "tracker.example.net", "wild.example.org"]
    );
    assert_eq!(fetched.verify(&ra_ref), Ok(()));
    let shown = admin
        .get_dns_blocklist(true)
        .await
        .unwrap()
        .blocklist
        .unwrap();
    assert_eq!(shown.domains.as_deref(), Some(&fetched.domains[..]));
    assert_eq!(shown.set_by, "admin");
    let (ok, out, _) = ctl.cli(&["dns", "blocklist", "show", "--domains"]);
    assert!(
        ok && out.contains("mode     nxdomain") && out.ends_with("wild.example.org\n"),
        "{out}"
    );

    // The same list again changes nothing; a new mode is a new version.
    let (ok, _, _) = ctl.cli(&["dns", "blocklist", "set", file.to_str().unwrap()]);
    assert!(ok);
    let (ok, _, err) = ctl.cli(&[
        "dns",
        "blocklist",
        "set",
        file.to_str().unwrap(),
        "--mode",
        "zero",
    ]);
    assert!(ok, "{err}");
    let zero = next_blocklist(&mut sa, &mut ma, IDLE)
        .await
        .unwrap()
        .unwrap();
    assert!(zero.version > ra_ref.version);
    assert_eq!((zero.mode, &zero.sha256), (BlockMode::Zero, &ra_ref.sha256));

    // Kept across a restart: snapshots carry it.
    drop((sa, sb));
    ctl.sigterm(Duration::from_secs(10));
    let ctl = Controller::start(dir.path(), &[]);
    let c = ctl.client();
    let ca = c.with_bearer(&ra.credential).unwrap();
    let mut ma = ca.map().await.unwrap();
    assert_eq!(ma.dns_blocklist.as_ref(), Some(&zero));
    assert_eq!(
        ca.fetch_dns_blocklist().await.unwrap().verify(&zero),
        Ok(())
    );

    // Clear: every map says none, the fetch is 404, a second clear is a no-op.
    let mut sa = ca.map_stream(Some(ma.version), IDLE).await.unwrap();
    let (ok, out, err) = ctl.cli(&["dns", "blocklist", "clear"]);
    assert!(ok && out.contains("removed"), "{out}{err}");
    assert_eq!(next_blocklist(&mut sa, &mut ma, IDLE).await, Some(None));
    let (status, _, _) = refused(ca.fetch_dns_blocklist().await);
    assert_eq!(status, 404);
    let (ok, out, _) = ctl.cli(&["dns", "blocklist", "clear"]);
    assert!(ok && out.contains("no DNS blocklist was set"), "{out}");

    // Audit: set, set (mode), clear; the unchanged set is not there.
    let audit = ctl.admin().audit(100, None, None).await.unwrap().entries;
    let mut actions: Vec<&str> = audit
        .iter()
        .map(|e| e.action.as_str())
        .filter(|a| a.starts_with("dns.blocklist."))
        .collect();
    actions.reverse();
    assert_eq!(
        actions,
        vec![
            "dns.blocklist.set",
            "dns.blocklist.set",
            "dns.blocklist.clear"
        ]
    );
    let set = audit
        .iter()
        .rev()
        .find(|e| e.action == "dns.blocklist.set")
        .unwrap();
    assert_eq!(set.detail["entries"], 3);
    assert_eq!(set.detail["mode"], "nxdomain");
    assert_eq!(set.detail["sha256"], ra_ref.sha256.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(
    clippy::disallowed_methods,
    clippy::print_stdout,
    reason = "the set and the fetch are timed on the real clock and reported"
)]
async fn a_full_size_list_is_taken_and_fetched_and_one_more_name_is_refused() {
    use weft_proto::dnsblock::MAX_ENTRIES;
    let dir = tempfile::tempdir().unwrap();
    let ctl = Controller::start(dir.path(), &[]);
    let admin = ctl.admin();
    let tok = network_with_token(&admin, "lab", "100.64.0.0/24", 8).await;
    let c = ctl.client();
    let a = identity(8);
    let ra = register(&c, &tok, &a).await.unwrap();
    let ca = c.with_bearer(&ra.credential).unwrap();
    // 500,000 names of up to 30 bytes: about 15 MB of text, 16 MB of JSON.
    let text: String = (0..MAX_ENTRIES)
        .map(|i| format!("host{i}.tracker{}.example\n", i % 997))
        .collect();
    let t = std::time::Instant::now();
    let st = admin
        .set_dns_blocklist(&SetDnsBlocklistRequest {
            text: text.clone(),
            mode: BlockMode::Nxdomain,
        })
        .await
        .unwrap();
    let set_took = t.elapsed();
    let info = st.blocklist.unwrap();
    assert_eq!(info.entries as usize, MAX_ENTRIES);
    let t = std::time::Instant::now();
    let fetched = ca.fetch_dns_blocklist().await.unwrap();
    let fetch_took = t.elapsed();
    let map = ca.map().await.unwrap();
    assert_eq!(fetched.verify(map.dns_blocklist.as_ref().unwrap()), Ok(()));
    println!(
        "{} bytes of list: set in {set_took:?}, fetched in {fetch_took:?}",
        text.len()
    );
    let one_more = format!("{text}one-more.example\n");
    let (status, code, message) = refused(
        admin
            .set_dns_blocklist(&SetDnsBlocklistRequest {
                text: one_more,
                mode: BlockMode::Nxdomain,
            })
            .await,
    );
    assert_eq!((status, code.as_str()), (400, "dns_blocklist_invalid"));
    assert!(message.contains("more than 500000"), "{message}");
}
