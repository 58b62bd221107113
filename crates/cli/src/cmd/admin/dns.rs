//! `admin dns blocklist …`: the DNS blocklist every node's resolver applies
//! (set from a hosts or domain-list file, show, clear).

use std::path::PathBuf;

use clap::Subcommand;
use weft_api_client::Client;
use weft_proto::dnsblock::{BlockMode, DnsBlocklistStatus, SetDnsBlocklistRequest, parse_list};

use super::{print_json, read_file_arg};
use crate::cmd::format::{datetime, out};

#[derive(Debug, Subcommand)]
pub(crate) enum DnsCmd {
    /// The blocklist: names (and every name under them) that nodes' resolvers
    /// answer with NXDOMAIN or 0.0.0.0 / `::`, counted in `weft dns stats`.
    #[command(subcommand)]
    Blocklist(BlocklistCmd),
}

#[derive(Debug, Subcommand)]
pub(crate) enum BlocklistCmd {
    /// Replace the blocklist with FILE (`-` for stdin): hosts format
    /// (`0.0.0.0 ads.example.com`) or one domain a line, `#` comments; at
    /// most 500,000 names and 16 MiB. Refused with line numbers when a line
    /// does not parse. Every node fetches the new list.
    Set {
        /// The list file.
        file: PathBuf,
        /// What a blocked name gets: `nxdomain` (the name does not exist) or
        /// `zero` (0.0.0.0 for A, `::` for AAAA).
        #[arg(long, default_value = "nxdomain")]
        mode: BlockMode,
    },
    /// Show the blocklist in force: version, mode, size, digest, who set it.
    Show {
        /// Print every domain too, one a line.
        #[arg(long)]
        domains: bool,
    },
    /// Remove the blocklist: nodes' resolvers block nothing any more.
    Clear,
}

/// The blocklist file does not parse (the same code as the controller's).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct BlocklistInvalid(String);

pub(crate) async fn run(c: &Client, cmd: DnsCmd, json: bool) -> anyhow::Result<()> {
    let DnsCmd::Blocklist(cmd) = cmd;
    match cmd {
        BlocklistCmd::Set { file, mode } => {
            let (text, source) = read_file_arg(&file)?;
            // Refused here with the file's name on each line (the controller
            // checks again).
            if let Err(errs) = parse_list(&text) {
                let lines: Vec<String> = errs
                    .iter()
                    .map(|e| {
                        if e.line == 0 {
                            format!("{source}: {}", e.message)
                        } else {
                            format!("{source}:{}: {}", e.line, e.message)
                        }
                    })
                    .collect();
                return Err(anyhow::Error::new(BlocklistInvalid(format!(
                    "the blocklist does not parse:\n{}",
                    lines.join("\n")
                ))));
            }
            let st = c
                .set_dns_blocklist(&SetDnsBlocklistRequest { text, mode })
                .await?;
            if json {
                print_json(&st)?;
            } else if let Some(b) = &st.blocklist {
                out(&format!(
                    "DNS blocklist version {}: {} domains, mode {}; {} nodes fetch it\n",
                    b.version,
                    b.entries,
                    b.mode,
                    st.nodes_changed.unwrap_or(0)
                ));
            }
        }
        BlocklistCmd::Show { domains } => {
            let st = c.get_dns_blocklist(domains).await?;
            if json {
                print_json(&st)?;
            } else {
                out(&show_text(&st));
            }
        }
        BlocklistCmd::Clear => {
            let st = c.clear_dns_blocklist().await?;
            if json {
                print_json(&st)?;
            } else if st.cleared == Some(true) {
                out(&format!(
                    "DNS blocklist removed; {} nodes block nothing any more\n",
                    st.nodes_changed.unwrap_or(0)
                ));
            } else {
                out("no DNS blocklist was set\n");
            }
        }
    }
    Ok(())
}

fn show_text(st: &DnsBlocklistStatus) -> String {
    let Some(b) = &st.blocklist else {
        return "no DNS blocklist is set\n".into();
    };
    let mut s = format!(
        "version  {}\nmode     {}\nentries  {}\nsha256   {}\nset by   {} at {}\n",
        b.version,
        b.mode,
        b.entries,
        b.sha256,
        weft_proto::text::escape_for_display(&b.set_by),
        datetime(b.set_at_ms)
    );
    for d in b.domains.iter().flatten() {
        s.push_str(&weft_proto::text::escape_for_display(d));
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use weft_proto::dnsblock::DnsBlocklistInfo;

    use super::*;

    #[test]
    fn show_prints_the_list_or_says_there_is_none() {
        let none = DnsBlocklistStatus {
            blocklist: None,
            cleared: None,
            nodes_changed: None,
        };
        assert_eq!(show_text(&none), "no DNS blocklist is set\n");
        let some = DnsBlocklistStatus {
            blocklist: Some(DnsBlocklistInfo {
                version: 7,
                mode: BlockMode::Zero,
                entries: 1,
                sha256: "ab".into(),
                set_by: "admin".into(),
                set_at_ms: 0,
                domains: Some(vec!["ads.example.com".into()]),
            }),
            cleared: None,
            nodes_changed: None,
        };
        let t = show_text(&some);
        assert!(
            t.starts_with("version  7\nmode     zero\nentries  1\n"),
            "{t}"
        );
        assert!(t.ends_with("ads.example.com\n"), "{t}");
    }
}
