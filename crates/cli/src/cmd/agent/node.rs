//! `weft node get metadata|data [KEY]|secret KEY`: reads the node API
//! (`weftd --node-api-socket`): one HTTP/1.1 `GET` over its Unix socket, JSON
//! back. A refusal (403), a missing key (404) or any other error is printed
//! with the API's code and message, and exits 1.

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::CodedError;

/// Largest answer read (a node's data is bounded well below this).
const MAX_ANSWER: u64 = 4 << 20;

/// `weft node`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The node API's socket (`weftd --node-api-socket`).
    #[arg(long, global = true, env = "WEFT_NODE_API_SOCKET",
          default_value = weft_proto::local::DEFAULT_NODE_API_SOCKET)]
    node_api_socket: PathBuf,
    #[command(subcommand)]
    command: NodeCmd,
}

#[derive(Debug, Subcommand)]
enum NodeCmd {
    /// Read this node's metadata, data or a secret from the node API.
    #[command(subcommand)]
    Get(GetCmd),
}

#[derive(Debug, Subcommand)]
enum GetCmd {
    /// This node's name, key, tags, addresses and networks.
    Metadata,
    /// The admin's data for this node (`weft admin data set`): every entry,
    /// or KEY's value alone (printed as it is, with a newline).
    Data {
        /// One key.
        key: Option<String>,
    },
    /// A secret (`weft admin secret set`), opened by weftd with this node's
    /// key: its value is written to stdout exactly, with no newline added.
    /// Root, or a uid in weftd's --node-api-secret-uids, only.
    Secret {
        /// The secret's key.
        key: String,
    },
}

/// `weft node ...`.
pub fn node(args: &NodeArgs, json: bool) -> anyhow::Result<ExitCode> {
    let NodeCmd::Get(what) = &args.command;
    let path = match what {
        GetCmd::Metadata => "/v1/metadata".to_owned(),
        GetCmd::Data { key: None } => "/v1/data".to_owned(),
        GetCmd::Data { key: Some(k) } => format!("/v1/data/{}", path_segment(k)?),
        GetCmd::Secret { key } => format!("/v1/secrets/{}", path_segment(key)?),
    };
    let body = get(&args.node_api_socket, &path)?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&body)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    match what {
        GetCmd::Metadata => write!(out, "{}", render_metadata(&body))?,
        GetCmd::Data { key: None } => write!(out, "{}", render_data(&body))?,
        GetCmd::Data { key: Some(_) } => writeln!(out, "{}", field(&body, "value")?)?,
        GetCmd::Secret { .. } => {
            let plain = base64::engine::general_purpose::STANDARD
                .decode(field(&body, "value_base64")?)
                .context("the node API sent a secret that is not base64")?;
            out.write_all(&plain)?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Keys are `[A-Za-z0-9._-]`: anything else cannot name an entry, and would
/// change the request's path.
fn path_segment(key: &str) -> anyhow::Result<&str> {
    let ok = !key.is_empty()
        && key.len() <= 128
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok || key == "." || key == ".." {
        return Err(CodedError {
            code: "bad_key".into(),
            message: format!("{key:?} is not a key: keys are 1 to 128 of A-Z a-z 0-9 . _ -"),
        }
        .into());
    }
    Ok(key)
}

fn field<'a>(body: &'a Value, name: &str) -> anyhow::Result<&'a str> {
    body[name]
        .as_str()
        .with_context(|| format!("the node API's answer has no {name:?}"))
}

/// One `GET`: the JSON body of a 200, or the API's error as a [`CodedError`].
fn get(socket: &Path, path: &str) -> anyhow::Result<Value> {
    let mut s = UnixStream::connect(socket).map_err(|e| CodedError {
        code: "node_api_unreachable".into(),
        message: format!(
            "cannot reach the node API at {}: {e} (is weftd running with --node-api-socket? \
             it is open to root, and to its --node-api-group)",
            socket.display()
        ),
    })?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
         Connection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.take(MAX_ANSWER + 1)
        .read_to_end(&mut raw)
        .context("reading the node API's answer")?;
    if raw.len() as u64 > MAX_ANSWER {
        bail!("the node API's answer is over {} MiB", MAX_ANSWER >> 20);
    }
    let (status, body) = parse_response(&raw)?;
    let value: Option<Value> = serde_json::from_slice(body).ok();
    if status == 200 {
        return value.context("the node API sent a body that is not JSON");
    }
    let err = value.as_ref().map(|v| &v["error"]);
    match err.and_then(|e| Some((e["code"].as_str()?, e["message"].as_str()?))) {
        Some((code, message)) => Err(CodedError {
            code: code.to_owned(),
            message: message.to_owned(),
        }
        .into()),
        None => bail!("the node API answered HTTP {status}"),
    }
}

/// The status and body of an HTTP/1.1 response read to its end (the server
/// closes the connection; bodies carry a length, never chunks).
fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, &[u8])> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("the node API's answer is not HTTP")?;
    let head = std::str::from_utf8(&raw[..split]).context("the node API's answer is not HTTP")?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.strip_prefix("HTTP/1.1 "))
        .and_then(|l| l.get(..3))
        .and_then(|c| c.parse::<u16>().ok())
        .context("the node API's answer has no HTTP/1.1 status line")?;
    if lines.any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    }) {
        bail!("the node API sent a chunked answer, which this client does not read");
    }
    Ok((status, &raw[split + 4..]))
}

fn render_metadata(v: &Value) -> String {
    use std::fmt::Write as _;
    use weft_proto::text::escape_for_display as safe;
    let s = |v: &Value| safe(v.as_str().unwrap_or("-")).into_owned();
    let mut o = String::new();
    let _ = writeln!(o, "name      {}", s(&v["name"]));
    let _ = writeln!(o, "node key  {}", s(&v["node_key"]));
    let tags: Vec<String> = v["tags"]
        .as_array()
        .map(|t| t.iter().map(s).collect())
        .unwrap_or_default();
    let tags = if tags.is_empty() {
        "-".to_owned()
    } else {
        tags.join(", ")
    };
    let _ = writeln!(o, "tags      {tags}");
    for n in v["networks"].as_array().into_iter().flatten() {
        let v6 = n["ipv6"]
            .as_str()
            .map(|a| format!("  {}", safe(a)))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "network   {}  {}{v6}  {}",
            s(&n["name"]),
            s(&n["ipv4"]),
            s(&n["dns_name"])
        );
    }
    let _ = writeln!(o, "map       version {}", v["map_version"]);
    o
}

fn render_data(v: &Value) -> String {
    use std::fmt::Write as _;
    use weft_proto::text::escape_for_display as safe;
    let mut o = String::new();
    let entries = v["data"].as_array().cloned().unwrap_or_default();
    if entries.is_empty() {
        o.push_str("no data for this node\n");
    }
    for d in &entries {
        let _ = writeln!(
            o,
            "{} = {}",
            safe(d["key"].as_str().unwrap_or("-")),
            safe(d["value"].as_str().unwrap_or(""))
        );
    }
    o
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use std::os::unix::net::UnixListener;

    use super::*;

    /// A one-connection server answering `response`; returns the request it read.
    fn serve_once(
        response: &'static str,
    ) -> (tempfile::TempDir, PathBuf, std::thread::JoinHandle<String>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let handle = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut byte = [0u8; 1];
            while !req.ends_with(b"\r\n\r\n") {
                s.read_exact(&mut byte).unwrap();
                req.push(byte[0]);
            }
            s.write_all(response.as_bytes()).unwrap();
            String::from_utf8(req).unwrap()
        });
        (dir, path, handle)
    }

    #[test]
    fn a_200_is_the_json_body_and_an_error_is_the_apis_code_and_message() {
        let (_d, path, server) = serve_once(
            "HTTP/1.1 200 OK\r\ncontent-length: 40\r\n\r\n{\"key\":\"region\",\"value\":\"eu\",\"version\":3}",
        );
        let v = get(&path, "/v1/data/region").unwrap();
        assert_eq!(v["value"], "eu");
        assert!(
            server
                .join()
                .unwrap()
                .starts_with("GET /v1/data/region HTTP/1.1\r\n")
        );

        let (_d, path, _server) = serve_once(
            "HTTP/1.1 403 Forbidden\r\n\r\n{\"error\":{\"code\":\"forbidden\",\"message\":\"uid 65534 may not read secrets\"}}",
        );
        let e = get(&path, "/v1/secrets/x").unwrap_err();
        let coded = e.downcast_ref::<CodedError>().unwrap();
        assert_eq!(coded.code, "forbidden");
        assert!(coded.message.contains("may not read secrets"));

        let (_d, path, _server) = serve_once("HTTP/1.1 404 Not Found\r\n\r\nnot json");
        let e = get(&path, "/v1/data/x").unwrap_err().to_string();
        assert!(e.contains("HTTP 404"), "{e}");
    }

    #[test]
    fn nothing_listening_is_a_coded_error_and_bad_keys_never_reach_the_socket() {
        let e = get(Path::new("/nonexistent/weft/node.sock"), "/v1/metadata").unwrap_err();
        assert_eq!(
            e.downcast_ref::<CodedError>().unwrap().code,
            "node_api_unreachable"
        );
        for bad in ["", "..", "a/b", "a b", "k?x=1", &"k".repeat(129)] {
            assert!(path_segment(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            path_segment("db-password.v2_x").unwrap(),
            "db-password.v2_x"
        );
    }

    #[test]
    fn malformed_answers_are_errors_not_panics() {
        for raw in [
            &b""[..],
            b"garbage",
            b"HTTP/1.1 20\r\n\r\n",
            b"HTTP/1.0 200 OK\r\n\r\n{}",
        ] {
            assert!(parse_response(raw).is_err(), "{raw:?}");
        }
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
        assert!(parse_response(chunked).is_err());
    }

    #[test]
    fn metadata_renders_for_people() {
        let v = serde_json::json!({"name": "web-1", "node_key": "k", "tags": ["prod"],
            "networks": [{"name": "corp", "ipv4": "100.64.0.5", "ipv6": null,
                          "dns_name": "web-1.corp.weft.internal"}], "map_version": 42});
        let text = render_metadata(&v);
        assert!(
            text.contains("network   corp  100.64.0.5  web-1.corp.weft.internal"),
            "{text}"
        );
        assert!(text.contains("tags      prod"), "{text}");
        assert!(render_data(&serde_json::json!({"data": []})).contains("no data"));
    }
}
