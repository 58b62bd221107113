//! `admin token …`: join tokens (the secret is shown once).

use anyhow::anyhow;
use clap::Subcommand;
use weft_api_client::Client;
use weft_proto::api::{CreateTokenRequest, TokenInfo};

use super::print_json;
use crate::cmd::format::{datetime, out, parse_duration, table};

#[derive(Debug, Subcommand)]
pub(super) enum TokenCmd {
    /// Create a join token (the secret is printed once).
    Create {
        /// Network to join (repeatable).
        #[arg(long = "network", required = true)]
        networks: Vec<String>,
        /// Tag for joining nodes (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Lifetime: 30m, 24h, 7d...
        #[arg(long, default_value = "24h")]
        expires_in: String,
        /// Registrations allowed (default 1: one-shot).
        #[arg(long, conflicts_with = "unlimited")]
        uses: Option<u32>,
        /// Any number of registrations until expiry.
        #[arg(long)]
        unlimited: bool,
        /// Free text.
        #[arg(long)]
        description: Option<String>,
    },
    /// List join tokens (never their secrets).
    List,
    /// Revoke a join token.
    Revoke {
        /// Token id (from `token list`).
        id: u64,
    },
}

fn uses(t: &TokenInfo) -> String {
    match t.max_uses {
        Some(m) => format!("{}/{m}", t.uses),
        None => format!("{}/unlimited", t.uses),
    }
}

fn tokens_table(tokens: &[TokenInfo]) -> String {
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            vec![
                t.id.to_string(),
                t.networks.join(","),
                if t.tags.is_empty() {
                    "-".into()
                } else {
                    t.tags.join(",")
                },
                uses(t),
                datetime(t.expires_at_ms),
                t.state.clone(),
                t.description.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NETWORKS",
            "TAGS",
            "USES",
            "EXPIRES",
            "STATE",
            "DESCRIPTION",
        ],
        &rows,
    )
}

pub(super) async fn run(c: &Client, cmd: TokenCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Create {
            networks,
            tags,
            expires_in,
            uses,
            unlimited,
            description,
        } => {
            let secs = parse_duration(&expires_in).map_err(|e| anyhow!(e))?;
            let req = CreateTokenRequest {
                api_version: None,
                networks,
                tags,
                expires_in_secs: secs,
                max_uses: if unlimited {
                    None
                } else {
                    Some(uses.unwrap_or(1))
                },
                description,
            };
            let resp = c.create_token(&req).await?;
            if json {
                return print_json(&resp);
            }
            out(&format!(
                "Join token (shown once; store it safely):\n  {}\n\n{}",
                resp.token,
                tokens_table(std::slice::from_ref(&resp.info))
            ));
        }
        TokenCmd::List => {
            let list = c.list_tokens().await?;
            if json {
                return print_json(&list);
            }
            out(&tokens_table(&list.tokens));
        }
        TokenCmd::Revoke { id } => {
            let info = c.revoke_token(id).await?;
            if json {
                return print_json(&info);
            }
            out(&tokens_table(std::slice::from_ref(&info)));
        }
    }
    Ok(())
}
