//! `admin relay …`: registered relays (in every node's map).

use clap::Subcommand;
use weft_api_client::Client;
use weft_proto::relay_api::{CreateRelayRequest, RelayInfo};

use super::print_json;
use crate::cmd::format::{datetime, out, table};

#[derive(Debug, Subcommand)]
pub(super) enum RelayCmd {
    /// Register a relay; its token is printed once (give it to `weft-relay
    /// serve --relay-token-file`).
    Create {
        /// Name (a DNS label).
        name: String,
        /// Where nodes reach it: `https://host[:port]` (port 443 by default).
        #[arg(long)]
        url: String,
    },
    /// List relays (never their tokens).
    List,
    /// Show one relay.
    Show {
        /// Name.
        name: String,
    },
    /// Remove a relay: its token stops working and it leaves every map.
    Remove {
        /// Name.
        name: String,
    },
}

fn relays_table(relays: &[RelayInfo]) -> String {
    let rows: Vec<Vec<String>> = relays
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.url.clone(),
                r.stun_port
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "-".into()),
                if r.connected { "yes" } else { "no" }.into(),
                r.last_seen_ms.map(datetime).unwrap_or_else(|| "-".into()),
                r.tls_fingerprint.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "URL",
            "STUN",
            "CONNECTED",
            "LAST SEEN",
            "TLS FINGERPRINT",
        ],
        &rows,
    )
}

pub(super) async fn run(c: &Client, cmd: RelayCmd, json: bool) -> anyhow::Result<()> {
    let info = match cmd {
        RelayCmd::Create { name, url } => {
            let resp = c
                .create_relay(&CreateRelayRequest {
                    api_version: None,
                    name,
                    url,
                })
                .await?;
            if json {
                return print_json(&resp);
            }
            out(&format!(
                "Relay token (shown once; put it in the file given to weft-relay --relay-token-file):\n  {}\n\n{}",
                resp.token,
                relays_table(std::slice::from_ref(&resp.info))
            ));
            return Ok(());
        }
        RelayCmd::List => {
            let list = c.list_relays().await?;
            if json {
                return print_json(&list);
            }
            out(&relays_table(&list.relays));
            return Ok(());
        }
        RelayCmd::Show { name } => c.show_relay(&name).await?,
        RelayCmd::Remove { name } => {
            c.remove_relay(&name).await?;
            if json {
                return print_json(&serde_json::json!({ "removed": { "relay": name } }));
            }
            out(&format!("removed relay {name}\n"));
            return Ok(());
        }
    };
    if json {
        return print_json(&info);
    }
    out(&relays_table(std::slice::from_ref(&info)));
    Ok(())
}
