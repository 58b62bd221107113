//! The outbox: what the agent reports that the controller has not taken yet,
//! kept in order, bounded, on disk while it holds any. One type for every
//! feature that reports: the forwarded metrics' samples (the default, the file
//! below) and the anomaly detector's events (`Outbox<AnomalyEvent>` in
//! `events-outbox.json`, [`Outbox::open_file`]); the format is the same.
//!
//! ```text
//! STATE_DIR/metrics-outbox.json   {"format":1,"checksum":"<sha256 hex of body>",
//!                                  "body":{"dropped":N,"samples":[...]}}  (0600)
//! ```
//!
//! Bound: [`MAX_ENTRIES`] samples, four hours at one sample per 30 s (about
//! 170 KiB on disk). When full, the oldest sample is dropped and counted
//! (`dropped`, a total kept in the file, reported to the controller and shown
//! by `weft status`). The file is rewritten whole and atomically (`weft-fs`:
//! temporary file, fsync, rename) whenever its content would differ: once per
//! sample while the controller is away, never while every upload succeeds.
//!
//! A file that does not parse, fails its checksum or has an unknown format is
//! not silently replaced: it is moved aside to `metrics-outbox.json.damaged-<unix
//! ms>` (any outbox: `<file>.damaged-<unix ms>`; its samples are not
//! forwarded), logged, and shown as a failure in
//! `weft status` until an operator removes the moved file.

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use weft_proto::samples::Sample;

/// The outbox file in the state directory.
pub(crate) const FILE: &str = "metrics-outbox.json";
/// Samples kept at most: 4 h at one per 30 s.
pub(crate) const MAX_ENTRIES: usize = 480;
/// The file format this build writes and reads.
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct OnDisk {
    format: u32,
    checksum: String,
    body: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
struct Body<T> {
    dropped: u64,
    samples: Vec<T>,
}

/// A damaged outbox file that was moved aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Damage {
    /// Where it is now.
    pub(crate) aside: PathBuf,
    /// What was wrong with it.
    pub(crate) why: String,
}

/// Samples (or other reports, `T`) waiting for the controller, oldest first.
#[derive(Debug)]
pub(crate) struct Outbox<T = Sample> {
    path: PathBuf,
    max: usize,
    samples: VecDeque<T>,
    dropped: u64,
    /// What the file holds now: (empty, dropped); `None`: no file.
    on_disk: Option<(bool, u64)>,
}

impl Outbox {
    /// Opens the outbox of the state directory `dir`, holding at most `max`
    /// samples. A damaged file is moved aside (see the module doc) and an
    /// empty outbox returned with the [`Damage`]; an unreadable one (I/O) is an
    /// error.
    pub(crate) fn open(
        dir: &Path,
        max: usize,
        now_ms: u64,
    ) -> anyhow::Result<(Self, Option<Damage>)> {
        Self::open_file(dir, FILE, max, now_ms)
    }
}

impl<T: Clone + Serialize + DeserializeOwned> Outbox<T> {
    /// [`Outbox::open`] for the outbox in file `file` of `dir` (a damaged
    /// one goes to `<file>.damaged-<unix ms>`).
    pub(crate) fn open_file(
        dir: &Path,
        file: &str,
        max: usize,
        now_ms: u64,
    ) -> anyhow::Result<(Self, Option<Damage>)> {
        let path = dir.join(file);
        let mut outbox = Self::empty(dir, file, max);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((outbox, None)),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        match parse(&bytes) {
            Ok(body) => {
                outbox.dropped = body.dropped;
                outbox.on_disk = Some((body.samples.is_empty(), body.dropped));
                for s in body.samples {
                    outbox.push(s);
                }
                Ok((outbox, None))
            }
            Err(why) => {
                let aside = dir.join(format!("{file}.damaged-{now_ms}"));
                fs::rename(&path, &aside).with_context(|| {
                    format!(
                        "the outbox {} is damaged ({why}) and could not be moved aside",
                        path.display()
                    )
                })?;
                Ok((
                    outbox,
                    Some(Damage {
                        aside,
                        why: why.to_owned(),
                    }),
                ))
            }
        }
    }

    /// An empty outbox for `file` in `dir`, its file not read (for a caller
    /// that keeps it in memory only when the file cannot be read: it must
    /// not [`Outbox::save`] it over that file).
    pub(crate) fn empty(dir: &Path, file: &str, max: usize) -> Self {
        Self {
            path: dir.join(file),
            max: max.max(1),
            samples: VecDeque::new(),
            dropped: 0,
            on_disk: None,
        }
    }

    /// Appends a sample; when full, drops the oldest and counts it.
    pub(crate) fn push(&mut self, s: T) {
        while self.samples.len() >= self.max {
            self.samples.pop_front();
            self.dropped += 1;
        }
        self.samples.push_back(s);
    }

    /// The oldest `n` samples (fewer when it holds fewer).
    pub(crate) fn oldest(&self, n: usize) -> Vec<T> {
        self.samples.iter().take(n).cloned().collect()
    }

    /// Forgets the oldest `n` samples (the controller took them).
    pub(crate) fn taken(&mut self, n: usize) {
        self.samples.drain(..n.min(self.samples.len()));
    }

    /// Samples waiting.
    pub(crate) fn len(&self) -> usize {
        self.samples.len()
    }

    /// Samples dropped because it was full (a running total).
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Counts samples lost another way (the controller refused them) as dropped.
    pub(crate) fn count_dropped(&mut self, n: u64) {
        self.dropped += n;
    }

    /// Writes the file if its content would change (atomically, 0600).
    pub(crate) fn save(&mut self) -> anyhow::Result<()> {
        let now = (self.samples.is_empty(), self.dropped);
        if self.on_disk == Some(now) && now.0 {
            return Ok(());
        }
        if self.on_disk.is_none() && now == (true, 0) {
            return Ok(());
        }
        let body = serde_json::to_value(Body {
            dropped: self.dropped,
            samples: self.samples.iter().cloned().collect(),
        })?;
        let file = OnDisk {
            format: FORMAT,
            checksum: checksum(&body)?,
            body,
        };
        crate::state::write_private(&self.path, &serde_json::to_vec(&file)?)?;
        self.on_disk = Some(now);
        Ok(())
    }
}

/// Damaged metrics outbox files moved aside earlier that are still in `dir`.
pub(crate) fn damaged_files(dir: &Path) -> Vec<PathBuf> {
    damaged_files_of(dir, FILE)
}

/// Damaged files of the outbox in `file`, moved aside earlier, still in `dir`.
pub(crate) fn damaged_files_of(dir: &Path, file: &str) -> Vec<PathBuf> {
    let prefix = format!("{file}.damaged");
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&prefix))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn checksum(body: &serde_json::Value) -> anyhow::Result<String> {
    Ok(format!("{:x}", Sha256::digest(serde_json::to_vec(body)?)))
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<Body<T>, &'static str> {
    let file: OnDisk = serde_json::from_slice(bytes).map_err(|_| "not valid JSON")?;
    if file.format != FORMAT {
        return Err("an unknown format version");
    }
    if checksum(&file.body).map_err(|_| "not valid JSON")? != file.checksum {
        return Err("checksum mismatch");
    }
    serde_json::from_value(file.body).map_err(|_| "not an outbox of this version")
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::samples::SAMPLE_VERSION;

    fn sample(seq: u64) -> Sample {
        Sample {
            v: SAMPLE_VERSION,
            at_ms: 1_000 + seq,
            seq,
            agent_start_ms: 1_000,
            ..Sample::default()
        }
    }

    fn seqs(o: &Outbox) -> Vec<u64> {
        o.oldest(usize::MAX).iter().map(|s| s.seq).collect()
    }

    #[test]
    fn the_oldest_sample_is_dropped_and_counted_when_full() {
        let dir = tempfile::tempdir().unwrap();
        let (mut o, damage) = Outbox::open(dir.path(), 3, 0).unwrap();
        assert!(damage.is_none());
        for seq in 1..=5 {
            o.push(sample(seq));
        }
        assert_eq!(seqs(&o), [3, 4, 5]);
        assert_eq!(o.dropped(), 2);
        o.save().unwrap();
        // The bound and the count survive a restart.
        let (mut o, _) = Outbox::open(dir.path(), 3, 0).unwrap();
        assert_eq!(seqs(&o), [3, 4, 5]);
        assert_eq!(o.dropped(), 2);
        o.push(sample(6));
        assert_eq!(o.dropped(), 3);
        // A smaller bound after an upgrade keeps the newest, counted.
        o.save().unwrap();
        let (o, _) = Outbox::open(dir.path(), 2, 0).unwrap();
        assert_eq!(seqs(&o), [5, 6]);
        assert_eq!(o.dropped(), 4);
        assert_eq!(MAX_ENTRIES, 4 * 3600 / 30);
    }

    #[test]
    fn samples_come_back_in_order_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (mut o, _) = Outbox::open(dir.path(), MAX_ENTRIES, 0).unwrap();
        // Nothing queued, nothing written.
        o.save().unwrap();
        assert!(!dir.path().join(FILE).exists());
        for seq in 1..=100 {
            o.push(sample(seq));
        }
        assert_eq!(o.oldest(60).len(), 60);
        assert_eq!(o.oldest(60)[0].seq, 1);
        o.taken(60);
        o.save().unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &fs::metadata(dir.path().join(FILE)).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let (mut o, _) = Outbox::open(dir.path(), MAX_ENTRIES, 0).unwrap();
        assert_eq!(seqs(&o), (61..=100).collect::<Vec<_>>());
        o.push(sample(101));
        assert_eq!(o.oldest(1)[0].seq, 61);
        o.taken(usize::MAX);
        assert_eq!(o.len(), 0);
        // Emptied: written once more (so a restart does not replay), then not again.
        o.save().unwrap();
        let written = fs::read(dir.path().join(FILE)).unwrap();
        let (o2, _) = Outbox::open(dir.path(), MAX_ENTRIES, 0).unwrap();
        assert_eq!(o2.len(), 0);
        fs::remove_file(dir.path().join(FILE)).unwrap();
        o.save().unwrap();
        assert!(!dir.path().join(FILE).exists(), "{written:?}");
    }

    #[test]
    fn a_damaged_outbox_is_moved_aside_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let (mut o, _) = Outbox::open(dir.path(), MAX_ENTRIES, 0).unwrap();
        o.push(sample(1));
        o.save().unwrap();
        let path = dir.path().join(FILE);
        let good = fs::read_to_string(&path).unwrap();
        for (n, (bad, why)) in [
            ("garbage".to_owned(), "not valid JSON"),
            (good.replace("\"seq\":1", "\"seq\":2"), "checksum mismatch"),
            (
                good.replace("\"format\":1", "\"format\":9"),
                "unknown format",
            ),
            (good[..good.len() / 2].to_owned(), "not valid JSON"),
        ]
        .into_iter()
        .enumerate()
        {
            fs::write(&path, &bad).unwrap();
            let (o, damage) = Outbox::open(dir.path(), MAX_ENTRIES, n as u64).unwrap();
            let damage = damage.unwrap();
            assert!(damage.why.contains(why), "{} vs {why}", damage.why);
            assert_eq!(o.len(), 0);
            assert!(!path.exists());
            // The damaged file is kept, byte for byte, for the operator.
            assert_eq!(fs::read_to_string(&damage.aside).unwrap(), bad);
        }
        assert_eq!(damaged_files(dir.path()).len(), 4);
        for f in damaged_files(dir.path()) {
            fs::remove_file(f).unwrap();
        }
        assert!(damaged_files(dir.path()).is_empty());
    }
}
