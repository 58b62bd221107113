//! `admin data …` and `admin secret …`: key/value data and sealed secrets the
//! controller carries to nodes in their maps (read on the node with `weft
//! node get`).
//!
//! A secret is sealed here, on the admin's machine, to each target node's
//! X25519 key (derived from its node key: `weft_identity::x25519_public_of`),
//! with a fresh ephemeral key per node (`weft_identity::sealed`). The controller
//! stores and forwards only the sealed boxes. The value comes from
//! `--value-file` or standard input, never from the command line, and is never
//! printed.

use std::io::{IsTerminal as _, Read as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{ArgGroup, Args, Subcommand};
use rand_core::OsRng;
use weft_api_client::Client;
use weft_proto::NodeKey;
use weft_proto::api::NodeInfo;
use weft_proto::data::{
    DataItem, DataList, DataScope, MAX_SECRET_BYTES, MAX_VALUE_BYTES, SecretItem, SecretList,
    SetDataRequest, SetSecretRequest, UnsetDataRequest, UnsetSecretRequest, check_key,
    check_secret, encode_sealed,
};

use super::print_json;
use crate::cmd::format::{datetime, out, safe, table};

/// Where an entry applies: exactly one of `--node`, `--tag`, `--network`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("scope").required(true).multiple(false)))]
pub(super) struct Scope {
    /// One node (key or name).
    #[arg(allow_hyphen_values = true, long, group = "scope")]
    node: Option<String>,
    /// Every node with this tag.
    #[arg(long, group = "scope")]
    tag: Option<String>,
    /// Every member of this network.
    #[arg(long, group = "scope")]
    network: Option<String>,
}

/// An optional scope for `list`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("filter").required(false).multiple(false)))]
pub(super) struct Filter {
    /// Only this node's (key or name).
    #[arg(allow_hyphen_values = true, long, group = "filter")]
    node: Option<String>,
    /// Only this tag's.
    #[arg(long, group = "filter")]
    tag: Option<String>,
    /// Only this network's.
    #[arg(long, group = "filter")]
    network: Option<String>,
}

impl Scope {
    fn to_scope(&self) -> DataScope {
        match (&self.node, &self.tag, &self.network) {
            (Some(n), _, _) => DataScope::Node(n.clone()),
            (_, Some(t), _) => DataScope::Tag(t.clone()),
            (_, _, Some(n)) => DataScope::Network(n.clone()),
            // clap requires exactly one.
            _ => DataScope::Node(String::new()),
        }
    }
}

impl Filter {
    fn to_scope(&self) -> Option<DataScope> {
        match (&self.node, &self.tag, &self.network) {
            (Some(n), _, _) => Some(DataScope::Node(n.clone())),
            (_, Some(t), _) => Some(DataScope::Tag(t.clone())),
            (_, _, Some(n)) => Some(DataScope::Network(n.clone())),
            _ => None,
        }
    }
}

#[derive(Debug, Subcommand)]
pub(super) enum DataCmd {
    /// Set a key for a node, a tag or a network. A node's map carries, for
    /// each key, the node's own value, else its tags' (the tag that sorts
    /// first), else its networks' (the network that sorts first). Keys are
    /// 1 to 128 of A-Z a-z 0-9 . _ -; values at most 16 KiB.
    #[command(group(ArgGroup::new("value_source").required(true).multiple(false)))]
    Set {
        #[command(flatten)]
        scope: Scope,
        /// The key.
        key: String,
        /// The value.
        #[arg(group = "value_source")]
        value: Option<String>,
        /// Read the value from this file (UTF-8) instead.
        #[arg(long, group = "value_source")]
        value_file: Option<PathBuf>,
    },
    /// Remove a key from a node, a tag or a network.
    Unset {
        #[command(flatten)]
        scope: Scope,
        /// The key.
        key: String,
    },
    /// List stored entries (all, or one scope's); `--node N --resolved` shows
    /// what node N's map carries.
    List {
        #[command(flatten)]
        filter: Filter,
        /// With --node: the entries resolved for that node.
        #[arg(long, requires = "node")]
        resolved: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum SecretCmd {
    /// Seal a secret to each target node's key and store it. `--tag` and
    /// `--network` mean the nodes that are members now (a node that joins
    /// later does not get it: set it again). The value is read from
    /// `--value-file` or piped on standard input (exactly those bytes, at most
    /// 16 KiB: use `printf %s`, not `echo`, to leave out a newline); it never
    /// appears on the command line, in output or on the controller, which
    /// stores only the sealed boxes.
    Set {
        #[command(flatten)]
        scope: Scope,
        /// The key (1 to 128 of A-Z a-z 0-9 . _ -).
        key: String,
        /// Read the value from this file (else from standard input).
        #[arg(long)]
        value_file: Option<PathBuf>,
    },
    /// Remove a secret from each target node that has it.
    Unset {
        #[command(flatten)]
        scope: Scope,
        /// The key.
        key: String,
    },
    /// List stored secrets: node, key, sealed size, version; never values.
    List {
        #[command(flatten)]
        filter: Filter,
    },
}

pub(super) async fn data(c: &Client, cmd: DataCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        DataCmd::Set {
            scope,
            key,
            value,
            value_file,
        } => {
            check_key(&key)?;
            let value = match (value, value_file) {
                (Some(v), _) => v,
                (None, Some(path)) => {
                    let bytes = read_bounded(&path, MAX_VALUE_BYTES)?;
                    String::from_utf8(bytes)
                        .with_context(|| format!("{} is not UTF-8 text", path.display()))?
                }
                (None, None) => bail!("give a VALUE or --value-file"),
            };
            let req = SetDataRequest {
                scope: scope.to_scope(),
                key,
                value,
            };
            let list = c.set_data(&req).await?;
            if json {
                return print_json(&list);
            }
            out(&format!(
                "set {} in {} ({})\n",
                safe(&req.key),
                safe(&req.scope.to_string()),
                changed(list.nodes_changed)
            ));
        }
        DataCmd::Unset { scope, key } => {
            let req = UnsetDataRequest {
                scope: scope.to_scope(),
                key,
            };
            let list = c.unset_data(&req).await?;
            if json {
                return print_json(&list);
            }
            out(&format!(
                "unset {} in {} ({})\n",
                safe(&req.key),
                safe(&req.scope.to_string()),
                changed(list.nodes_changed)
            ));
        }
        DataCmd::List { filter, resolved } => {
            let scope = filter.to_scope();
            let list: DataList = c
                .list_data(scope.as_ref().map(|s| (s.kind(), s.name())), resolved)
                .await?;
            if json {
                return print_json(&list);
            }
            out(&data_table(&list.entries, resolved));
        }
    }
    Ok(())
}

fn changed(n: usize) -> String {
    match n {
        1 => "1 node's map changed".into(),
        n => format!("{n} nodes' maps changed"),
    }
}

/// Longest value shown in a table (`--json` shows it whole).
const SHOWN_VALUE: usize = 60;

fn data_table(entries: &[DataItem], resolved: bool) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let mut v: String = e.value.chars().take(SHOWN_VALUE).collect();
            if v.len() < e.value.len() {
                v.push('…');
            }
            let mut row = vec![safe(&e.scope.to_string()).into_owned()];
            row.push(safe(&e.key).into_owned());
            row.push(safe(&v).into_owned());
            row.push(e.version.to_string());
            if !resolved {
                row.push(datetime(e.updated_at_ms));
            }
            row
        })
        .collect();
    if resolved {
        table(&["NODE", "KEY", "VALUE", "VERSION"], &rows)
    } else {
        table(&["SCOPE", "KEY", "VALUE", "VERSION", "UPDATED"], &rows)
    }
}

pub(super) async fn secret(c: &Client, cmd: SecretCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        SecretCmd::Set {
            scope,
            key,
            value_file,
        } => {
            check_key(&key)?;
            let value = read_secret(value_file.as_deref())?;
            let nodes = targets(c, &scope.to_scope()).await?;
            let mut stored = Vec::new();
            let mut failed = Vec::new();
            for n in &nodes {
                match set_one(c, n, &key, &value).await {
                    Ok(item) => stored.push(item),
                    Err(e) => failed.push(format!("{}: {e:#}", safe(&n.name))),
                }
            }
            report(json, &stored, "set", &key)?;
            if !failed.is_empty() {
                bail!(
                    "secret {} not set on {} of {} nodes:\n  {}",
                    safe(&key),
                    failed.len(),
                    nodes.len(),
                    failed.join("\n  ")
                );
            }
        }
        SecretCmd::Unset { scope, key } => {
            let nodes = targets(c, &scope.to_scope()).await?;
            let held = c.list_secrets(None).await?;
            let mut removed = Vec::new();
            for n in nodes.iter().filter(|n| {
                held.secrets
                    .iter()
                    .any(|s| s.node_key == n.node_key && s.key == key)
            }) {
                let req = UnsetSecretRequest {
                    node: n.node_key.to_string(),
                    key: key.clone(),
                };
                c.unset_secret(&req)
                    .await
                    .with_context(|| format!("unsetting {} on {}", safe(&key), safe(&n.name)))?;
                removed.push(n.name.clone());
            }
            if removed.is_empty() {
                bail!("no target node has a secret {}", safe(&key));
            }
            if json {
                return print_json(
                    &serde_json::json!({ "unset": { "key": key, "nodes": removed } }),
                );
            }
            for n in removed {
                out(&format!("unset secret {} on {}\n", safe(&key), safe(&n)));
            }
        }
        SecretCmd::List { filter } => {
            let mut list: SecretList = match filter.to_scope() {
                Some(DataScope::Node(n)) => c.list_secrets(Some(&n)).await?,
                Some(scope) => {
                    let members: Vec<NodeKey> = targets(c, &scope)
                        .await?
                        .iter()
                        .map(|n| n.node_key)
                        .collect();
                    let mut all = c.list_secrets(None).await?;
                    all.secrets.retain(|s| members.contains(&s.node_key));
                    all
                }
                None => c.list_secrets(None).await?,
            };
            list.secrets
                .sort_by(|a, b| (&a.node, &a.key).cmp(&(&b.node, &b.key)));
            if json {
                return print_json(&list);
            }
            out(&secrets_table(&list.secrets));
        }
    }
    Ok(())
}

/// Seals `value` to node `n`'s key with a fresh ephemeral key and stores it.
async fn set_one(c: &Client, n: &NodeInfo, key: &str, value: &[u8]) -> anyhow::Result<SecretItem> {
    let sealed = seal_for(&n.node_key, value, &mut OsRng)?;
    let req = SetSecretRequest {
        node: n.node_key.to_string(),
        key: key.to_owned(),
        sealed: encode_sealed(&sealed),
    };
    Ok(c.set_secret(&req).await?)
}

/// `value` sealed to the X25519 key derived from `node_key`.
fn seal_for(
    node_key: &NodeKey,
    value: &[u8],
    rng: &mut impl rand_core::CryptoRngCore,
) -> anyhow::Result<Vec<u8>> {
    let rpk = weft_identity::x25519_public_of(node_key)
        .with_context(|| format!("node key {node_key} is not a valid Ed25519 key"))?;
    let mut esk = [0u8; 32];
    rng.fill_bytes(&mut esk);
    let sealed = weft_identity::sealed::seal(&rpk, value, &esk);
    esk.fill(0);
    sealed.with_context(|| format!("sealing to node key {node_key}"))
}

fn report(json: bool, stored: &[SecretItem], verb: &str, key: &str) -> anyhow::Result<()> {
    if json {
        return print_json(&SecretList {
            secrets: stored.to_vec(),
        });
    }
    for s in stored {
        out(&format!(
            "{verb} secret {} on {} (sealed to its key, version {})\n",
            safe(key),
            safe(&s.node),
            s.version
        ));
    }
    Ok(())
}

fn secrets_table(secrets: &[SecretItem]) -> String {
    let rows: Vec<Vec<String>> = secrets
        .iter()
        .map(|s| {
            vec![
                safe(&s.node).into_owned(),
                safe(&s.key).into_owned(),
                s.sealed_bytes.to_string(),
                s.version.to_string(),
                datetime(s.updated_at_ms),
            ]
        })
        .collect();
    table(
        &["NODE", "KEY", "SEALED BYTES", "VERSION", "UPDATED"],
        &rows,
    )
}

/// The nodes a scope names now: one node, a tag's nodes or a network's
/// members; an error when there are none.
async fn targets(c: &Client, scope: &DataScope) -> anyhow::Result<Vec<NodeInfo>> {
    let nodes = match scope {
        DataScope::Node(n) => vec![c.show_node(n).await?],
        DataScope::Tag(t) => {
            let mut all = c.list_nodes(None).await?.nodes;
            all.retain(|n| n.tags.iter().any(|x| x == t));
            all
        }
        DataScope::Network(net) => {
            // Checks that the network exists (404 network_not_found).
            c.show_network(net).await?;
            c.list_nodes(Some(net)).await?.nodes
        }
    };
    if nodes.is_empty() {
        bail!("{} has no nodes now", safe(&scope.to_string()));
    }
    Ok(nodes)
}

/// The secret's bytes: the file's, or standard input's (refused when it is a
/// terminal: the value would be echoed and end up in scrollback).
fn read_secret(file: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    let value = match file {
        Some(path) => read_bounded(path, MAX_SECRET_BYTES)?,
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                bail!(
                    "the secret is read from --value-file or piped on standard input (for example `printf %s \"$VALUE\" | weft admin secret set …`); standard input is a terminal"
                );
            }
            let mut buf = Vec::new();
            stdin
                .lock()
                .take(MAX_SECRET_BYTES as u64 + 1)
                .read_to_end(&mut buf)
                .context("reading the secret from standard input")?;
            buf
        }
    };
    check_secret(&value)?;
    if value.is_empty() {
        bail!("the secret is empty");
    }
    Ok(value)
}

/// A file's bytes, refused past `max` (reads at most `max + 1`).
fn read_bounded(path: &Path, max: usize) -> anyhow::Result<Vec<u8>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = Vec::new();
    f.take(max as u64 + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("reading {}", path.display()))?;
    if buf.len() > max {
        bail!("{} is larger than {max} bytes", path.display());
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::sync::atomic::AtomicBool;
    use weft_identity::{Difficulty, Identity, SearchOptions};

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Top,
    }

    #[derive(Debug, Subcommand)]
    enum Top {
        #[command(subcommand)]
        Data(DataCmd),
        #[command(subcommand)]
        Secret(SecretCmd),
    }

    fn parse(args: &[&str]) -> Result<Top, clap::Error> {
        Cli::try_parse_from(std::iter::once("weft").chain(args.iter().copied())).map(|c| c.cmd)
    }

    #[test]
    fn a_secret_sealed_for_a_node_key_opens_with_that_node_identity_only() {
        let mint = || {
            Identity::mint(
                &mut OsRng,
                Difficulty::new(4).unwrap(),
                &SearchOptions::default(),
                &AtomicBool::new(false),
                |_| {},
            )
            .unwrap()
        };
        let (node, other) = (mint(), mint());
        let sealed = seal_for(&node.node_key(), b"s3cret", &mut OsRng).unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"s3cret"));
        assert_eq!(
            weft_identity::sealed::open(&node.x25519_secret(), &sealed).unwrap(),
            b"s3cret"
        );
        assert!(weft_identity::sealed::open(&other.x25519_secret(), &sealed).is_err());
        // A fresh ephemeral key every time.
        assert_ne!(
            sealed,
            seal_for(&node.node_key(), b"s3cret", &mut OsRng).unwrap()
        );
    }

    #[test]
    fn exactly_one_scope_and_no_secret_value_on_the_command_line() {
        assert!(parse(&["data", "set", "--tag", "web", "k", "v"]).is_ok());
        assert!(
            parse(&["data", "set", "k", "v"]).is_err(),
            "a scope is required"
        );
        assert!(
            parse(&["data", "set", "--tag", "web", "--node", "n", "k", "v"]).is_err(),
            "one scope only"
        );
        assert!(
            parse(&["data", "set", "--tag", "web", "k"]).is_err(),
            "a value is required"
        );
        assert!(
            parse(&["data", "list", "--resolved"]).is_err(),
            "--resolved needs --node"
        );
        assert!(parse(&["secret", "set", "--network", "lab", "k"]).is_ok());
        assert!(
            parse(&["secret", "set", "--network", "lab", "k", "the-value"]).is_err(),
            "a secret value is never an argument"
        );
        assert!(parse(&["secret", "list"]).is_ok());
    }

    #[test]
    fn secret_files_at_under_and_over_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let write = |n: usize| {
            let p = dir.path().join(format!("s{n}"));
            std::fs::write(&p, vec![b'x'; n]).unwrap();
            p
        };
        assert_eq!(
            read_secret(Some(&write(MAX_SECRET_BYTES))).unwrap().len(),
            MAX_SECRET_BYTES
        );
        assert!(read_secret(Some(&write(MAX_SECRET_BYTES - 1))).is_ok());
        assert!(read_secret(Some(&write(MAX_SECRET_BYTES + 1))).is_err());
        assert!(read_secret(Some(&write(0))).is_err(), "empty");
        assert!(read_secret(Some(&dir.path().join("missing"))).is_err());
    }
}
