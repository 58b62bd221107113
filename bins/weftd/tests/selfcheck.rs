//! `weftd --selfcheck-controlplane`: exit status 0 only on HTTP 200 from
//! `GET /healthz`, against small local servers (plain HTTP on loopback, and
//! TLS with a self-signed certificate), a closed port, a remote cleartext URL
//! and a wrong pin; and it touches no state directory or token file.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HEALTH: &str = r#"{"status":"ok","api_version":1,"map_version":7}"#;

/// Reads one request's head and answers it.
fn answer(stream: &mut (impl std::io::Read + std::io::Write), status: &str, body: &str) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    assert!(
        head.starts_with(b"GET /healthz HTTP/1.1\r\n"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(
        !text.contains("authorization"),
        "no credential is sent: {text}"
    );
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.flush();
}

/// A plain HTTP server on loopback answering every request with `status`.
fn http_server(status: &'static str, body: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            answer(&mut s, status, body);
        }
    });
    port
}

/// A TLS server on loopback (self-signed for 127.0.0.1) answering 200; the
/// certificate's PEM, to trust it as a CA file.
fn tls_server() -> (u16, String) {
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![ck.cert.der().clone()], key.into())
    .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            answer(&mut tls, "200 OK", HEALTH);
        }
    });
    (port, ck.cert.pem())
}

/// Runs the check with a state directory and token file that do not exist.
fn selfcheck(state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weftd"))
        .arg("--selfcheck-controlplane")
        .arg("--state-dir")
        .arg(state)
        .arg("--token-file")
        .arg(state.join("token"))
        .args(args)
        .env_remove("WEFT_CONTROLLER_URL")
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_controller_answering_200_passes_and_nothing_else_does() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");

    let ok = http_server("200 OK", HEALTH);
    let out = selfcheck(&state, &["--controller", &format!("http://127.0.0.1:{ok}")]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("answered GET /healthz with 200"),
        "{stdout}"
    );
    assert!(stdout.contains("map version 7"), "{stdout}");
    assert!(
        !state.exists(),
        "the state directory is never created or read"
    );

    let down = http_server(
        "503 Service Unavailable",
        r#"{"error":{"code":"unavailable","message":"store is not ready"}}"#,
    );
    let out = selfcheck(
        &state,
        &["--controller", &format!("http://127.0.0.1:{down}")],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("503"), "{}", stderr(&out));

    // A closed port: bound, then let go.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = selfcheck(
        &state,
        &["--controller", &format!("http://127.0.0.1:{closed}")],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("connecting to 127.0.0.1:{closed}")),
        "{}",
        stderr(&out)
    );
    assert!(!state.exists());
}

#[test]
#[expect(clippy::disallowed_methods, reason = "timing the refusal")]
fn remote_cleartext_is_refused_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    // TEST-NET-1: refused by the URL policy, so nothing is ever sent there.
    let started = Instant::now();
    let out = selfcheck(dir.path(), &["--controller", "http://192.0.2.10:8080"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refusing cleartext http://"),
        "{}",
        stderr(&out)
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "it did not try to connect"
    );
}

#[test]
fn tls_with_the_right_ca_passes_and_a_wrong_pin_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (port, pem) = tls_server();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pem).unwrap();
    let url = format!("https://127.0.0.1:{port}");

    let out = selfcheck(
        &dir.path().join("state"),
        &["--controller", &url, "--ca-file", ca.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let wrong = format!("sha256:{}", "ab".repeat(32));
    let out = selfcheck(
        &dir.path().join("state"),
        &["--controller", &url, "--pin", &wrong],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("TLS"), "{}", stderr(&out));
}

#[test]
fn the_check_needs_a_controller_url() {
    let out = Command::new(env!("CARGO_BIN_EXE_weftd"))
        .arg("--selfcheck-controlplane")
        .env_remove("WEFT_CONTROLLER_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--controller"), "{}", stderr(&out));
}
