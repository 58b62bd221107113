//! `weft identity`: mint and inspect node identities.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde::Serialize;
use weft_identity::pow::SearchOptions;
use weft_identity::{Difficulty, Identity, MintError, keyfile};

use super::progress::{PowProgress, human_rate};

#[derive(Debug, Subcommand)]
pub enum IdentityCmd {
    /// Mint a new identity: an Ed25519 key pair plus a proof of work.
    ///
    /// The proof makes identities expensive to mass-produce: the controller
    /// rejects keys whose proof is below the network's difficulty. Each extra bit
    /// of difficulty doubles the expected work (D=24: about 16.8 million hashes,
    /// around a second on a modern core). The key file is created with mode 0600
    /// and written atomically. Ctrl-C cancels the search.
    New(NewArgs),
    /// Show an identity's public key, fingerprint and proof-of-work difficulty.
    Show(ShowArgs),
    /// Check that an identity's proof of work meets a difficulty (exit 3 if not).
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub struct NewArgs {
    /// Where to write the private key file (mode 0600).
    #[arg(long, value_name = "PATH")]
    out: PathBuf,
    /// Leading zero bits the proof of work must have (0-40).
    #[arg(long, short = 'd', default_value_t = Difficulty::DEFAULT, value_name = "D")]
    difficulty: Difficulty,
    /// Worker threads for the search [default: all cores].
    #[arg(long, value_name = "N")]
    threads: Option<NonZeroUsize>,
    /// Replace an existing file at --out (the old identity is lost).
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The private key file.
    path: PathBuf,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The private key file.
    path: PathBuf,
    /// The difficulty the proof must reach.
    #[arg(long, short = 'd', value_name = "D")]
    difficulty: Difficulty,
}

/// What `show` and `new --json` print.
#[derive(Debug, Serialize)]
struct IdentityView {
    node_key: String,
    fingerprint: String,
    difficulty: u32,
    pow_nonce: u64,
    wireguard_public_key: String,
    wireguard_key_derivation: &'static str,
    file: String,
    format_version: u32,
}

impl IdentityView {
    fn new(id: &Identity, path: &Path) -> Self {
        use base64::Engine as _;
        let key = id.node_key();
        Self {
            node_key: key.to_string(),
            fingerprint: weft_identity::fingerprint(&key),
            difficulty: id.difficulty_reached(),
            pow_nonce: id.pow().nonce,
            wireguard_public_key: base64::engine::general_purpose::STANDARD
                .encode(id.x25519_public()),
            wireguard_key_derivation: weft_identity::X25519_DERIVATION,
            file: path.display().to_string(),
            format_version: keyfile::VERSION,
        }
    }

    fn print_human(&self) {
        println!("node key:       {}", self.node_key);
        println!("fingerprint:    {}", self.fingerprint);
        println!(
            "proof of work:  {} leading zero bits (nonce {})",
            self.difficulty, self.pow_nonce
        );
        println!(
            "wireguard key:  {} (derived from the identity)",
            self.wireguard_public_key
        );
        println!(
            "file:           {} (format v{})",
            self.file, self.format_version
        );
    }
}

static CANCEL: AtomicBool = AtomicBool::new(false);

/// Runs an identity subcommand.
pub fn run(cmd: IdentityCmd, json: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        IdentityCmd::New(a) => new(a, json),
        IdentityCmd::Show(a) => show(a, json),
        IdentityCmd::Verify(a) => verify(a, json),
    }
}

fn new(a: NewArgs, json: bool) -> anyhow::Result<ExitCode> {
    // Fail before minting, not after minutes of work.
    if !a.force && std::fs::symlink_metadata(&a.out).is_ok() {
        bail!(
            "{} already exists; refusing to overwrite an identity (remove it first, or pass --force)",
            a.out.display()
        );
    }
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.is_dir()
    {
        bail!("directory {} does not exist", dir.display());
    }
    ctrlc::set_handler(|| CANCEL.store(true, Ordering::SeqCst))
        .context("installing the Ctrl-C handler")?;

    let mut opts = SearchOptions::default();
    if let Some(t) = a.threads {
        opts.threads = t;
    }
    tracing::info!(
        difficulty = a.difficulty.bits(),
        threads = opts.threads.get(),
        "minting identity"
    );
    let mut progress = PowProgress::new(a.difficulty.expected_hashes());
    let mut last_hashes = 0;
    let minted = Identity::mint(&mut rand_core::OsRng, a.difficulty, &opts, &CANCEL, |h| {
        last_hashes = h;
        progress.update(h);
    });
    let took = progress.finish();
    let id = match minted {
        Ok(id) => id,
        Err(MintError::Cancelled { hashes }) => {
            eprintln!("cancelled after {hashes} hashes; no identity written");
            return Ok(ExitCode::from(130));
        }
    };
    keyfile::save(&a.out, &id, a.force)?;
    let view = IdentityView::new(&id, &a.out);
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        view.print_human();
    }
    let secs = took.as_secs_f64();
    let rate = if secs > 0.0 {
        last_hashes as f64 / secs
    } else {
        0.0
    };
    eprintln!(
        "minted in {secs:.2}s on {} thread(s) (~{}), wrote {} (mode 0600)",
        opts.threads,
        human_rate(rate),
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn show(a: ShowArgs, json: bool) -> anyhow::Result<ExitCode> {
    let id = keyfile::load(&a.path)?;
    let view = IdentityView::new(&id, &a.path);
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        view.print_human();
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(a: VerifyArgs, json: bool) -> anyhow::Result<ExitCode> {
    let id = keyfile::load(&a.path)?;
    let verdict = id.pow().verify(&id.node_key(), a.difficulty);
    if json {
        let v = match &verdict {
            Ok(bits) => serde_json::json!({
                "ok": true, "node_key": id.node_key().to_string(),
                "bits": bits, "required": a.difficulty.bits(),
            }),
            Err(e) => serde_json::json!({
                "ok": false, "node_key": id.node_key().to_string(),
                "required": a.difficulty.bits(), "reason": e.to_string(),
            }),
        };
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    match verdict {
        Ok(bits) => {
            if !json {
                println!(
                    "ok: {} reaches {bits} bits (required {})",
                    id.node_key(),
                    a.difficulty
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if !json {
                eprintln!(
                    "rejected: {}: {e}; mint a new identity with `weft identity new --difficulty {}`",
                    a.path.display(),
                    a.difficulty
                );
            }
            Ok(ExitCode::from(crate::exit::DENIED))
        }
    }
}
