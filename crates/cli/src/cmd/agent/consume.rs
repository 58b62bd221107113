//! `weft service listen` and `weft service intercept`: consume a service
//! through a local TCP listener or by transparently intercepting an address
//! applications already use. The agent keeps them (across restarts) and
//! carries each TCP stream to a healthy instance over the overlay.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;
use weft_proto::local::{LocalRequest, LocalResponse};
use weft_proto::service::{ConsumeMode, Consumer};

use super::{SocketArg, call};
use crate::CodedError;
use crate::cmd::format::{out, safe};

/// `weft service listen` options.
#[derive(Debug, Args)]
pub struct ListenArgs {
    /// The service's name (as `weft service list` shows it).
    pub name: String,
    /// The local address to listen on, ADDR:PORT, for example
    /// `127.0.0.1:15432`. TCP only.
    pub listen: SocketAddr,
    /// The service's network (needed when services of that name exist in
    /// several of this node's networks).
    #[arg(long)]
    pub network: Option<String>,
    /// The service port to reach (default: the service's first TCP port).
    #[arg(long)]
    pub port: Option<u16>,
    /// Stop listening and forget this listener.
    #[arg(long)]
    pub remove: bool,
}

/// `weft service intercept` options.
#[derive(Debug, Args)]
pub struct InterceptArgs {
    /// The service's name (as `weft service list` shows it).
    pub name: String,
    /// The original destination to intercept, IPV4:PORT, for example
    /// `10.1.2.3:5432`: the address applications already use. It must be
    /// routable from this host (as it is when applications use it). TCP
    /// only.
    pub original: SocketAddr,
    /// The service's network (needed when services of that name exist in
    /// several of this node's networks).
    #[arg(long)]
    pub network: Option<String>,
    /// The service port to reach (default: the service's first TCP port).
    #[arg(long)]
    pub port: Option<u16>,
    /// Stop intercepting and forget this interception.
    #[arg(long)]
    pub remove: bool,
}

/// `weft service listen`.
pub(crate) fn listen(sock: &SocketArg, a: ListenArgs, json: bool) -> anyhow::Result<ExitCode> {
    let c = Consumer {
        service: a.name,
        network: a.network,
        mode: ConsumeMode::Listen { listen: a.listen },
        port: a.port,
    };
    send(sock, c, a.remove, json)
}

/// `weft service intercept`.
pub(crate) fn intercept(
    sock: &SocketArg,
    a: InterceptArgs,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if !a.original.is_ipv4() {
        bail!("cannot intercept {}: interception is IPv4 only", a.original);
    }
    let c = Consumer {
        service: a.name,
        network: a.network,
        mode: ConsumeMode::Intercept {
            original: a.original,
        },
        port: a.port,
    };
    send(sock, c, a.remove, json)
}

fn send(sock: &SocketArg, c: Consumer, remove: bool, json: bool) -> anyhow::Result<ExitCode> {
    weft_proto::service::check_service_name(&c.service)?;
    if c.port == Some(0) {
        bail!("--port 0 is not a service port: give one of the service's TCP ports");
    }
    let req = if remove {
        LocalRequest::ServiceUnconsume(c)
    } else {
        LocalRequest::ServiceConsume(c)
    };
    match call(&sock.socket, &req)? {
        LocalResponse::Ok { message, .. } => {
            if json {
                out(&format!("{}\n", serde_json::json!({ "message": message })));
            } else {
                out(&format!("{}\n", safe(&message)));
            }
            Ok(ExitCode::SUCCESS)
        }
        LocalResponse::Error { code, message } => Err(CodedError { code, message }.into()),
        _ => bail!("the agent answered a different question (upgrade weftd)"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    enum T {
        Listen(ListenArgs),
        Intercept(InterceptArgs),
    }

    #[test]
    fn arguments_parse_and_garbage_is_refused() {
        let T::Listen(a) = T::try_parse_from([
            "t",
            "listen",
            "db",
            "127.0.0.1:15432",
            "--network",
            "prod",
            "--port",
            "5433",
        ])
        .unwrap() else {
            panic!("not listen")
        };
        assert_eq!(a.listen, "127.0.0.1:15432".parse().unwrap());
        assert_eq!(
            (a.network.as_deref(), a.port, a.remove),
            (Some("prod"), Some(5433), false)
        );
        let T::Intercept(a) =
            T::try_parse_from(["t", "intercept", "db", "10.1.2.3:5432", "--remove"]).unwrap()
        else {
            panic!("not intercept")
        };
        assert!(a.remove);
        assert_eq!(a.original, "10.1.2.3:5432".parse().unwrap());
        // An address without a port, or a name where an address goes.
        assert!(T::try_parse_from(["t", "listen", "db", "127.0.0.1"]).is_err());
        assert!(T::try_parse_from(["t", "intercept", "db", "db.example:1"]).is_err());
        assert!(T::try_parse_from(["t", "listen", "db", "127.0.0.1:1", "--port", "x"]).is_err());
    }
}
