//! `weft metrics`: the agent's Prometheus metrics through the local API, for
//! hosts that run no scraper (the same text `weftd --metrics-listen` serves).

use std::process::ExitCode;

use anyhow::bail;
use clap::Args;
use weft_proto::local::{LocalRequest, LocalResponse};

use super::{SocketArg, call};
use crate::CodedError;

/// `weft metrics` options.
#[derive(Debug, Clone, Args)]
pub struct MetricsArgs {
    /// Print OpenMetrics text (what Prometheus asks `--metrics-listen` for)
    /// instead of the Prometheus text format 0.0.4.
    #[arg(long)]
    pub openmetrics: bool,
}

/// `weft metrics`: prints the exposition as the agent rendered it; with
/// `--json`, `{"content_type": ..., "text": ...}` (the text is not parsed).
pub fn metrics(sock: &SocketArg, args: &MetricsArgs, json: bool) -> anyhow::Result<ExitCode> {
    let req = LocalRequest::Metrics {
        openmetrics: args.openmetrics,
    };
    let (content_type, text) = match call(&sock.socket, &req)? {
        LocalResponse::Metrics { content_type, text } => (content_type, text),
        LocalResponse::Error { code, message } => return Err(CodedError { code, message }.into()),
        _ => bail!("the agent does not support metrics (upgrade weftd)"),
    };
    if json {
        println!(
            "{}",
            serde_json::json!({ "content_type": content_type, "text": text })
        );
    } else {
        print!("{text}");
    }
    Ok(ExitCode::SUCCESS)
}
