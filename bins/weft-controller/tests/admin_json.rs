//! `weft admin ... --json`: every subcommand prints its result as one JSON
//! document on stdout, and with `--json` an error is JSON too (`{"error":
//! {"code", "message"}}`) with exit status 1. `weft-controller admin ...`, the
//! deprecated alias, runs the same code and says so on stderr.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::Value;

/// Exit code, stdout parsed as JSON, and stderr of `admin --data-dir DIR ARGS`.
/// `policy check --from network:lab --to network:lab --proto <proto> [--port
/// <port>] --json`.
fn lab_check(proto: &'static str, port: Option<&'static str>) -> Vec<&'static str> {
    let mut args = vec![
        "policy",
        "check",
        "--from",
        "network:lab",
        "--to",
        "network:lab",
        "--proto",
        proto,
    ];
    if let Some(port) = port {
        args.extend(["--port", port]);
    }
    args.push("--json");
    args
}

fn admin(ctl: &Controller, args: &[&str]) -> (i32, Value, String) {
    let out = weft_admin(&ctl.dir).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("{args:?}: stdout is not JSON ({e}): {stdout:?}; stderr {stderr}")
    });
    (out.status.code().unwrap_or(-1), json, stderr)
}

fn ok(ctl: &Controller, args: &[&str]) -> Value {
    let (code, v, err) = admin(ctl, args);
    assert_eq!(code, 0, "{args:?}: {v} {err}");
    assert!(v.get("error").is_none(), "{args:?}: {v}");
    v
}

fn error(ctl: &Controller, args: &[&str], want_code: &str) -> String {
    let (code, v, err) = admin(ctl, args);
    assert_eq!(code, 1, "{args:?}: {v} {err}");
    assert_eq!(v["error"]["code"], want_code, "{args:?}: {v}");
    assert!(
        err.is_empty(),
        "{args:?}: the error goes to stdout only: {err}"
    );
    v["error"]["message"].as_str().unwrap().to_owned()
}

#[test]
fn every_admin_subcommand_speaks_json() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Controller::start(dir.path(), &[]);

    let net = ok(
        &ctl,
        &[
            "network",
            "create",
            "lab",
            "--cidr",
            "100.64.0.0/24",
            "--json",
        ],
    );
    assert_eq!(net["name"], "lab");
    assert_eq!(
        ok(&ctl, &["network", "list", "--json"])["networks"][0]["name"],
        "lab"
    );
    assert_eq!(
        ok(&ctl, &["network", "show", "lab", "--json"])["name"],
        "lab"
    );

    let tok = ok(&ctl, &["token", "create", "--network", "lab", "--json"]);
    assert!(
        tok["token"].as_str().is_some_and(|t| !t.is_empty()),
        "{tok}"
    );
    let id = tok["info"]["id"].as_u64().unwrap().to_string();
    assert_eq!(
        ok(&ctl, &["token", "list", "--json"])["tokens"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        ok(&ctl, &["token", "revoke", &id, "--json"])["state"],
        "revoked"
    );

    assert!(
        ok(&ctl, &["node", "list", "--json"])["nodes"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(
        ok(&ctl, &["route", "list", "--json"])["routes"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    let relay = ok(
        &ctl,
        &[
            "relay",
            "create",
            "r1",
            "--url",
            "https://relay.example:443",
            "--json",
        ],
    );
    assert!(relay["token"].as_str().is_some(), "{relay}");
    assert_eq!(ok(&ctl, &["relay", "show", "r1", "--json"])["name"], "r1");
    assert_eq!(
        ok(&ctl, &["relay", "list", "--json"])["relays"][0]["name"],
        "r1"
    );
    assert_eq!(
        ok(&ctl, &["relay", "remove", "r1", "--json"])["removed"]["relay"],
        "r1"
    );

    // Policy: set from a file, show, check (also `--proto any`).
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[rule]]\naction = \"allow\"\nfrom = \"network:lab\"\nto = \"network:lab\"\nproto = \"tcp\"\nports = [80]\n",
    )
    .unwrap();
    let set = ok(&ctl, &["policy", "set", policy.to_str().unwrap(), "--json"]);
    assert!(set["version"].as_u64().unwrap() >= 1, "{set}");
    assert_eq!(
        ok(&ctl, &["policy", "show", "--json"])["version"],
        set["version"]
    );
    let check = ok(&ctl, &lab_check("tcp", Some("80")));
    assert_eq!(check["allowed"], true, "{check}");
    // `any`: tcp and udp at the port, and icmp; only tcp is allowed here. A
    // denied check prints its answer and exits 3 ("the answer is no", as
    // `weft policy check`), not an error.
    let (code, any, _) = admin(&ctl, &lab_check("any", Some("80")));
    assert_eq!((code, &any["allowed"]), (3, &Value::Bool(false)), "{any}");
    let explained: Vec<&str> = any["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["explanation"].as_str().unwrap())
        .collect();
    assert!(
        explained
            .iter()
            .any(|e| e.starts_with("tcp/80: ") && e.contains("allowed")),
        "{explained:?}"
    );
    assert!(
        explained
            .iter()
            .any(|e| e.starts_with("udp/80: ") && e.contains("dropped")),
        "{explained:?}"
    );
    assert!(
        explained.iter().any(|e| e.starts_with("icmp: ")),
        "{explained:?}"
    );
    let msg = error(&ctl, &lab_check("any", None), "invalid_service");
    assert!(msg.contains("need a port"), "{msg}");

    let audit = ok(&ctl, &["audit", "--json"]);
    assert!(!audit["entries"].as_array().unwrap().is_empty());

    // Errors: from the controller (its code), from a bad policy file (the
    // offending line and a caret), and from this side (no token).
    error(&ctl, &["node", "show", "ghost", "--json"], "node_not_found");
    error(
        &ctl,
        &["node", "remove", "ghost", "--json"],
        "node_not_found",
    );
    error(
        &ctl,
        &["node", "rename", "ghost", "new", "--json"],
        "node_not_found",
    );
    error(
        &ctl,
        &[
            "network",
            "create",
            "lab",
            "--cidr",
            "100.64.1.0/24",
            "--json",
        ],
        "network_exists",
    );
    error(
        &ctl,
        &["route", "approve", "ghost", "192.168.1.0/24", "--json"],
        "node_not_found",
    );
    std::fs::write(
        &policy,
        "[[rule]]\naction = \"allow\"\nfrom = \"*\"\nto = \"*\"\nproto = \"tpc\"\n",
    )
    .unwrap();
    let msg = error(
        &ctl,
        &["policy", "set", policy.to_str().unwrap(), "--json"],
        "policy_invalid",
    );
    assert!(
        msg.starts_with(&format!("{}:5:9: unknown proto \"tpc\"", policy.display())),
        "{msg}"
    );
    assert!(msg.ends_with("5 | proto = \"tpc\"\n  |         ^"), "{msg}");
    let out = Command::new(weft_bin())
        .args([
            "admin",
            "--controller",
            &ctl.url,
            "network",
            "list",
            "--json",
        ])
        .env_remove("WEFT_ADMIN_TOKEN")
        .env_remove("WEFT_CONTROLLER_URL")
        .env_remove("WEFT_CONTROLLER_DATA_DIR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "client_error", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no admin token"),
        "{v}"
    );

    // Without --json, errors stay human text on stderr.
    let out = weft_admin(&ctl.dir)
        .args(["node", "remove", "ghost"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: "));
}

/// `weft-controller admin ...` (deprecated, one release): the same code as
/// `weft admin ...`, the same stdout, `--json` before or after the
/// subcommand, `--fingerprint` still accepted; a denied policy check still
/// exits 1 there; a one-line note on stderr names `weft admin`.
#[test]
fn the_controller_admin_alias_runs_weft_admin() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Controller::start(dir.path(), &[]);
    let alias = |args: &[&str]| {
        Command::new(BIN)
            .args(["admin", "--data-dir", ctl.dir.to_str().unwrap()])
            .args(args)
            .env_remove("WEFT_ADMIN_TOKEN")
            .env_remove("WEFT_CONTROLLER_URL")
            .env_remove("WEFT_CONTROLLER_DATA_DIR")
            .output()
            .unwrap()
    };
    let note = "note: `weft-controller admin` is deprecated and goes in the next release; use `weft admin` (same arguments)\n";

    let out = alias(&[
        "network",
        "create",
        "lab",
        "--cidr",
        "100.64.0.0/24",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["name"], "lab", "{v}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), note);

    // Same output as `weft admin`, byte for byte.
    let via_alias = alias(&["network", "list"]);
    let via_weft = weft_admin(&ctl.dir)
        .args(["network", "list"])
        .output()
        .unwrap();
    assert!(via_weft.status.success());
    assert_eq!(via_alias.stdout, via_weft.stdout);
    assert!(String::from_utf8_lossy(&via_weft.stderr).is_empty());

    // The old pin flag: accepted, with its own note.
    let fp = hex(ctl.fingerprint.expect("the test controller serves TLS"));
    let out = Command::new(BIN)
        .args(["admin", "--controller", &ctl.url, "--fingerprint", &fp])
        .args([
            "--token-file",
            dir.path().join("admin.token").to_str().unwrap(),
        ])
        .args(["--json", "network", "show", "lab"])
        .env_remove("WEFT_ADMIN_TOKEN")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("--fingerprint is deprecated"), "{err}");
    assert!(err.ends_with(note), "{err}");

    // A denied policy check: exit 1 under the alias (3 under `weft admin`).
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[rule]]\naction = \"allow\"\nfrom = \"network:lab\"\nto = \"network:lab\"\nproto = \"tcp\"\nports = [80]\n",
    )
    .unwrap();
    assert!(
        alias(&["policy", "set", policy.to_str().unwrap()])
            .status
            .success()
    );
    let out = alias(&lab_check("udp", Some("80")));
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["allowed"], false, "{v}");
    let out = weft_admin(&ctl.dir)
        .args(lab_check("udp", Some("80")))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
}

fn hex(b: [u8; 32]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The wall clock, Unix milliseconds.
#[expect(
    clippy::disallowed_methods,
    reason = "the test compares the controller's times with the wall clock"
)]
fn now_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    u64::try_from(since.as_millis()).unwrap()
}

/// `v[field]` is Unix milliseconds within `[lo, hi]`, and the name without
/// `_ms` (the old seconds field) is gone.
fn assert_ms(v: &Value, field: &str, lo: u64, hi: u64) {
    let t = v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} missing or not an integer: {v}"));
    assert!(
        (lo..=hi).contains(&t),
        "{field} = {t}, want {lo}..={hi}: {v}"
    );
    let old = field.trim_end_matches("_ms");
    assert!(v.get(old).is_none(), "{old} is still there: {v}");
}

/// Every time in the admin JSON is Unix milliseconds under a `*_ms` name
/// (ARCHITECTURE.md, "Conventions for output"); people still read RFC 3339.
#[tokio::test]
async fn json_times_are_unix_milliseconds() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Controller::start(dir.path(), &[]);
    // The store records these times to the second: allow the second before.
    let before = now_ms() - 1000;
    let token = network_with_token(&ctl.admin(), "lab", "100.64.0.0/24", 0).await;
    let node = register(&ctl.client(), &token, &identity(0)).await.unwrap();
    ok(
        &ctl,
        &[
            "relay",
            "create",
            "r1",
            "--url",
            "https://relay.example:443",
            "--json",
        ],
    );
    let tok = ok(
        &ctl,
        &[
            "token",
            "create",
            "--network",
            "lab",
            "--expires-in",
            "2h",
            "--json",
        ],
    );
    let after = now_ms();

    let net = ok(&ctl, &["network", "list", "--json"])["networks"][0].clone();
    assert_ms(&net, "created_at_ms", before, after);
    let n = ok(&ctl, &["node", "list", "--json"])["nodes"][0].clone();
    assert_eq!(n["name"], node.name.as_str(), "{n}");
    assert_ms(&n, "created_at_ms", before, after);
    assert_ms(&n, "last_seen_ms", before, after);
    let n = ok(&ctl, &["node", "show", &node.name, "--json"]);
    assert_ms(&n, "created_at_ms", before, after);
    let r = ok(&ctl, &["relay", "show", "r1", "--json"]);
    assert_ms(&r, "created_at_ms", before, after);
    assert!(r["last_seen_ms"].is_null(), "never reported: {r}");
    let info = &tok["info"];
    assert_ms(info, "created_at_ms", before, after);
    let two_h = 2 * 3600 * 1000;
    assert_ms(info, "expires_at_ms", before + two_h, after + two_h);
    let listed = ok(&ctl, &["token", "list", "--json"])["tokens"][1].clone();
    assert_eq!(listed["id"], info["id"]);
    assert_ms(&listed, "expires_at_ms", before + two_h, after + two_h);
    let created = ok(&ctl, &["audit", "--json"])["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "token.create" && e["target"] == format!("token:{}", info["id"]))
        .cloned()
        .unwrap();
    assert_eq!(
        created["detail"]["expires_at_ms"], info["expires_at_ms"],
        "{created}"
    );

    // For people: RFC 3339 UTC, in this century (not seconds read as ms or
    // the other way round).
    let (okay, out, err) = ctl.cli(&["node", "show", &node.name]);
    assert!(okay, "{err}");
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("created:"))
        .unwrap_or_else(|| panic!("no created line: {out}"))
        .trim();
    let year: u32 = line.get(..4).and_then(|y| y.parse().ok()).unwrap_or(0);
    assert!(
        line.len() == 20 && line.ends_with('Z') && (2024..2100).contains(&year),
        "created: {line:?}"
    );
}
