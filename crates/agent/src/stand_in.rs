//! A stand-in controller for unit tests (test builds only): plain HTTP on a
//! loopback port, one request per connection, answered by a closure.

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::state::Credential;

/// A node's credential for a controller at `url` (plain HTTP, loopback).
pub(crate) fn joined(url: &str) -> Credential {
    Credential {
        controllers: vec![url.to_owned()],
        credential: "node-credential".into(),
        ca_file: None,
        pin_sha256: None,
        allow_insecure_http: false,
        advertise_routes: vec![],
    }
}

/// Serves until the test ends; `answer(head, body)` gives the status and the
/// JSON body of each answer (a 204 is sent without a body). Returns the URL.
pub(crate) async fn controller(
    mut answer: impl FnMut(&str, &str) -> (u16, String) + Send + 'static,
) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let (head, body) = read_request(&mut conn).await;
            let (status, json) = answer(&head, &body);
            let resp = if status == 204 {
                "HTTP/1.1 204 X\r\nconnection: close\r\n\r\n".to_owned()
            } else {
                format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{json}",
                    json.len()
                )
            };
            let _ = conn.write_all(resp.as_bytes()).await;
        }
    });
    url
}

/// The request's head and body (as far as it came when the peer closed).
async fn read_request(conn: &mut tokio::net::TcpStream) -> (String, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        let n = conn.read(&mut chunk).await.unwrap();
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len || n == 0 {
                return (head.to_owned(), body.to_owned());
            }
        }
        if n == 0 {
            return (String::new(), String::new());
        }
    }
}
