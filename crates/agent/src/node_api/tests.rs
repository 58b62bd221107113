//! The node API over a real socket: routes, bodies, and who is let in, with
//! clients running as other users (this test binary re-executed with
//! `setuid`/`setgid`, see [`peer_client_helper`]).

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "test code")]

use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use weft_identity::{Identity, ProofOfWork};

use super::*;

const HELPER_ENV: &str = "WEFT_NODE_API_TEST_CLIENT";
/// `nobody`, and the gids it connects with: the API's group, and another.
const OTHER_UID: u32 = 65534;
const API_GID: u32 = 100;
const NON_MEMBER_GID: u32 = 65534;

/// Not a test of its own: the client the other tests run as another user.
/// Without its environment variable it does nothing.
#[test]
fn peer_client_helper() {
    let Ok(spec) = std::env::var(HELPER_ENV) else {
        return;
    };
    let (socket, path) = spec.split_once('\n').unwrap();
    let out = match get(Path::new(socket), path) {
        Ok((status, body)) => format!("{status} {body}"),
        Err(e) => format!("connect-error {e}"),
    };
    println!("@@{out}@@");
}

/// One `GET` as the HTTP/1.1 client `weft node get` is: status and body.
fn get(socket: &Path, path: &str) -> std::io::Result<(u16, String)> {
    request(socket, "GET", path)
}

fn request(socket: &Path, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// `GET path` from a child running as `uid:gid` (no supplementary groups).
async fn get_as(socket: &Path, path: &str, uid: u32, gid: u32) -> String {
    let spec = format!("{}\n{path}", socket.display());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "node_api::tests::peer_client_helper",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(HELPER_ENV, spec)
            .uid(uid)
            .gid(gid)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let start = stdout.find("@@").map(|i| i + 2);
    let end = stdout.rfind("@@");
    match (start, end) {
        (Some(s), Some(e)) if s <= e => stdout[s..e].to_owned(),
        _ => panic!(
            "the client child printed no answer: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

fn identity() -> Arc<Identity> {
    Arc::new(Identity::from_parts(&[7; 32], ProofOfWork { nonce: 0 }))
}

/// A socket directory others can traverse (the children run as `nobody`).
fn socket_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("node.sock");
    (dir, path)
}

fn map() -> NetworkMap {
    serde_json::from_value(serde_json::json!({
        "api_version": 1,
        "version": 42,
        "node": {
            "node_key": Identity::from_parts(&[7; 32], ProofOfWork { nonce: 0 }).node_key(),
            "name": "web-1",
            "tags": ["prod", "web"],
        },
        "networks": [
            {"name": "corp", "ipv4_cidr": "100.64.0.0/24", "dns_domain": "weft.internal",
             "ipv4": "100.64.0.5", "ipv6": "fd00::5", "ipv6_prefix": "fd00::/64", "peers": [{
                "node_key": Identity::from_parts(&[8; 32], ProofOfWork { nonce: 0 }).node_key(),
                "name": "db-1", "ipv4": "100.64.0.6", "endpoints": []}]},
            {"name": "lab", "ipv4_cidr": "100.65.0.0/24", "dns_domain": "weft.internal",
             "ipv4": "100.65.0.9", "peers": []},
        ],
    }))
    .unwrap()
}

/// The map with one data entry and one secret sealed to `recipient`.
fn map_with_data(recipient: &Identity) -> NetworkMap {
    let sealed =
        weft_identity::sealed::seal(&recipient.x25519_public(), b"hunter2", &[9; 32]).unwrap();
    let mut map = serde_json::to_value(map()).unwrap();
    map["data"] = serde_json::json!([{"key": "region", "value": "eu-west", "version": 3}]);
    map["secrets"] = serde_json::json!([{
        "key": "db-password",
        "sealed": base64::engine::general_purpose::STANDARD.encode(sealed),
        "version": 5,
    }]);
    serde_json::from_value(map).unwrap()
}

async fn start(socket: &Path, access: Access) -> NodeApi {
    let cfg = NodeApiConfig {
        socket: socket.to_owned(),
        access,
    };
    NodeApi::start(Some(&cfg)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_is_this_nodes_entry_in_the_map() {
    let (_dir, socket) = socket_dir();
    let api = start(&socket, Access::default()).await;
    let (status, body) = get(&socket, "/v1/metadata").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"no_map\""), "{body}");

    api.set_map(&map(), &identity());
    let (status, body) = get(&socket, "/v1/metadata").unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "name": "web-1",
            "node_key": map().node.node_key.to_string(),
            "tags": ["prod", "web"],
            "addresses": ["100.64.0.5", "fd00::5", "100.65.0.9"],
            "networks": [
                {"name": "corp", "ipv4": "100.64.0.5", "ipv6": "fd00::5",
                 "dns_name": "web-1.corp.weft.internal"},
                {"name": "lab", "ipv4": "100.65.0.9", "ipv6": null,
                 "dns_name": "web-1.lab.weft.internal"},
            ],
            "map_version": 42,
        })
    );
    // Nothing about peers.
    assert!(!body.contains("db-1"), "{body}");
    drop(api);
    assert!(!socket.exists(), "the socket is removed when the API stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_secrets_and_errors_for_root() {
    let (_dir, socket) = socket_dir();
    let id = identity();
    let api = start(&socket, Access::default()).await;
    api.set_map(&map_with_data(&id), &id);

    let (status, body) = get(&socket, "/v1/data").unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"data": [{"key": "region", "value": "eu-west", "version": 3}],
                           "map_version": 42})
    );
    let (status, body) = get(&socket, "/v1/data/region").unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"key":"region","value":"eu-west","version":3}"#)
    );
    let (status, body) = get(&socket, "/v1/secrets/db-password").unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["value"], "hunter2");
    assert_eq!(v["value_base64"], "aHVudGVyMg==");
    assert_eq!(v["version"], 5);

    for (path, code) in [
        ("/v1/data/nope", "not_found"),
        ("/v1/secrets/nope", "not_found"),
        ("/v1/other", "not_found"),
    ] {
        let (status, body) = get(&socket, path).unwrap();
        assert_eq!(status, 404, "{path}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], code, "{path}");
    }
    let (status, body) = request(&socket, "POST", "/v1/data/region").unwrap();
    assert_eq!(status, 405, "{body}");

    // A secret sealed to another node's key.
    let other = Arc::new(Identity::from_parts(&[8; 32], ProofOfWork { nonce: 0 }));
    api.set_map(&map_with_data(&other), &id);
    let (status, body) = get(&socket, "/v1/secrets/db-password").unwrap();
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("undecryptable"), "{body}");
    assert!(body.contains("set it again"), "{body}");
    // After a key rotation the next map comes with the new identity.
    api.set_map(&map_with_data(&other), &other);
    let (status, body) = get(&socket, "/v1/secrets/db-password").unwrap();
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_lists_what_this_node_may_use_with_health() {
    let (_dir, socket) = socket_dir();
    let api = start(&socket, Access::default()).await;
    let mut m = serde_json::to_value(map()).unwrap();
    let db1 = Identity::from_parts(&[8; 32], ProofOfWork { nonce: 0 }).node_key();
    m["services"] = serde_json::json!([{
        "name": "db", "network": "corp", "vip": "100.127.255.1",
        "fqdn": "db.svc.corp.weft.internal", "ports": [{"port": 5432, "proto": "tcp"}],
        "instances": [{"node_key": db1, "node": "db-1", "addr": "100.64.0.6",
                       "health": "unhealthy"}],
    }]);
    api.set_map(&serde_json::from_value(m).unwrap(), &identity());
    let (status, body) = get(&socket, "/v1/services").unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "services": [{
                "name": "db", "network": "corp", "fqdn": "db.svc.corp.weft.internal",
                "vip": "100.127.255.1", "ports": ["5432/tcp"],
                "instances": [{"node": "db-1", "addr": "100.64.0.6", "health": "unhealthy"}],
            }],
            "map_version": 42,
        })
    );
    // None allowed: an empty list, not an error.
    api.set_map(&map(), &identity());
    let (status, body) = get(&socket, "/v1/services").unwrap();
    assert_eq!(
        (status, body.trim()),
        (200, r#"{"services":[],"map_version":42}"#)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_credentials_decide_who_reads_what() {
    let (_dir, socket) = socket_dir();
    let id = identity();
    let access = Access {
        group: Some(("users".into(), API_GID)),
        secret_uids: vec![],
    };
    let api = start(&socket, access).await;
    api.set_map(&map_with_data(&id), &id);
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(
        (
            meta.permissions().mode() & 0o777,
            std::os::unix::fs::MetadataExt::gid(&meta)
        ),
        (0o660, API_GID)
    );

    // A group member: metadata and data, not secrets.
    let member = |path: &'static str| get_as(&socket, path, OTHER_UID, API_GID);
    assert!(member("/v1/metadata").await.starts_with("200 "));
    assert!(member("/v1/data/region").await.starts_with("200 "));
    let refused = member("/v1/secrets/db-password").await;
    assert!(refused.starts_with("403 "), "{refused}");
    assert!(refused.contains("\"forbidden\""), "{refused}");
    assert!(
        refused.contains("uid 65534 may not read secrets"),
        "{refused}"
    );
    assert!(!refused.contains("hunter2"), "{refused}");
    // Refused before the key is looked up: no probing for which keys exist.
    assert!(member("/v1/secrets/nope").await.starts_with("403 "));

    // Not a member: the socket's mode keeps it out...
    let out = get_as(&socket, "/v1/metadata", OTHER_UID, NON_MEMBER_GID).await;
    assert!(out.starts_with("connect-error"), "{out}");
    // ...and SO_PEERCRED does too when the mode is loosened.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = get_as(&socket, "/v1/metadata", OTHER_UID, NON_MEMBER_GID).await;
    assert!(out.starts_with("403 "), "{out}");
    assert!(out.contains("is not in group users (gid 100)"), "{out}");

    // Root reads the secret.
    let (status, body) = get(&socket, "/v1/secrets/db-password").unwrap();
    assert_eq!(status, 200, "{body}");
    drop(api);

    // A uid listed in --node-api-secret-uids reads it too.
    let access = Access {
        group: Some(("users".into(), API_GID)),
        secret_uids: vec![OTHER_UID],
    };
    let api = start(&socket, access).await;
    api.set_map(&map_with_data(&id), &id);
    let out = get_as(&socket, "/v1/secrets/db-password", OTHER_UID, API_GID).await;
    assert!(out.starts_with("200 "), "{out}");
    assert!(out.contains("hunter2"), "{out}");
}

#[test]
fn uids_and_groups_are_looked_up_by_name_or_number() {
    assert_eq!(uid_of("0").unwrap(), 0);
    assert_eq!(uid_of("root").unwrap(), 0);
    assert_eq!(uid_of(" 1234 ").unwrap(), 1234);
    assert!(uid_of("no-such-user-weft").is_err());
    assert_eq!(group_by_name("root").unwrap(), ("root".to_owned(), 0));
    let err = group_by_name("no-such-group-weft").unwrap_err().to_string();
    assert!(err.contains("no such group"), "{err}");
}
