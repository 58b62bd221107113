//! The outbox: what the agent reports that the controller has not taken yet,
//! kept in order, bounded, on disk while it holds any, across restarts. The
//! agent's one queue for everything it produces while the controller may be
//! unreachable (issue 17, item 7); the format is the same for every kind:
//!
//! | kind | file in STATE_DIR | idempotency key ([`Keyed`]) | how the controller dedupes |
//! | --- | --- | --- | --- |
//! | forwarded metrics samples (`telemetry::forward`) | `metrics-outbox.json` | (agent run `agent_start_ms`, `seq`) | the history ring counts a `seq` at or below the run's last, or an earlier run, as a duplicate |
//! | anomaly events (`telemetry::anomaly`) | `events-outbox.json` | the event `id` (unix ms × 1000 + counter) | `UNIQUE (node_id, event_id)`, inserted `OR IGNORE` |
//! | task results (`tasks`, issue 17) | `results-outbox.json` | (`task_id`, `lease_id`) | a second result under the same lease answers `duplicate: true` and changes nothing |
//! | usage totals (`telemetry::usage`) | `usage-outbox.json` | the agent run (`run_id`): one entry per run, its newest totals ([`Outbox::upsert`]) | totals are monotonic per run: the same totals again add nothing; an earlier run's last totals are sent before the next run's first |
//!
//! What does not go through it, and why: reports of *state*, where the latest
//! value replaces every earlier one, so a queue would only replay stale
//! values. The liveness/endpoint report (`POST /v1/node/report`, with the host
//! facts) and the integrity report (binary and hook hashes) are re-sent whole
//! on every (re)connection and on their own timers; neither can be applied
//! twice. (Usage totals are state within one agent run too, hence one entry
//! per run; they queue so that a run's last totals outlive the run.)
//!
//! ```text
//! STATE_DIR/<file>   {"format":1,"checksum":"<sha256 hex of body>",
//!                     "body":{"dropped":N,"samples":[...]}}  (0600)
//! ```
//!
//! (`samples` is the entries, whatever their kind: the name predates the other
//! kinds and is kept so that existing files still read.)
//!
//! Order: entries are replayed oldest first and forgotten only once the
//! controller took them ([`Outbox::taken`]), so a crash between the
//! controller's answer and the next write replays them, and the key makes that
//! harmless. An entry whose key is already queued is not queued twice.
//!
//! Bound: each kind has its own (metrics: [`MAX_ENTRIES`] samples, four hours
//! at one sample per 30 s, about 170 KiB on disk). When full, the oldest entry
//! is dropped and counted (`dropped`, a total kept in the file, reported to
//! the controller and shown by `weft status`). The file is rewritten whole and
//! atomically (`weft-fs`: temporary file, fsync, rename, directory fsync)
//! whenever its content would differ: once per entry while the controller is
//! away, never while every upload succeeds. A SIGKILL or power cut mid-write
//! leaves the previous file or the new one, never half of either (tested by
//! killing a writer process); the temporary file it may leave behind
//! (`.<file>.tmp-<pid>`) is removed the next time the outbox is opened.
//!
//! A file that does not parse, fails its checksum or has an unknown format is
//! not silently replaced: it is moved aside to `<file>.damaged-<unix ms>` (its
//! entries are not sent), logged, and shown as a failure in `weft status`
//! until an operator removes the moved file. [`Tracked`] does that
//! bookkeeping, the same for every kind, named by its [`Kind`]: the damage
//! logged, a file that cannot be read left alone (the outbox kept in memory
//! only), a failed write logged and shown until a write succeeds.

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use weft_proto::local::FailureStatus;
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

/// An entry of an outbox: what makes it the same entry when it is sent again.
/// The controller ignores an entry whose key it already applied, so a replay
/// after a crash or a lost answer changes nothing.
pub(crate) trait Keyed {
    /// The entry's idempotency key (unique per node among its kind).
    fn idempotency_key(&self) -> String;
}

impl Keyed for Sample {
    fn idempotency_key(&self) -> String {
        format!("{}/{}", self.agent_start_ms, self.seq)
    }
}

impl Keyed for weft_proto::events::AnomalyEvent {
    fn idempotency_key(&self) -> String {
        self.id.to_string()
    }
}

/// Entries (samples, events, results: `T`) waiting for the controller,
/// oldest first.
#[derive(Debug)]
pub(crate) struct Outbox<T = Sample> {
    path: PathBuf,
    max: usize,
    samples: VecDeque<T>,
    dropped: u64,
    /// What the file holds now: (empty, dropped); `None`: no file.
    on_disk: Option<(bool, u64)>,
}

impl<T: Keyed + Clone + Serialize + DeserializeOwned> Outbox<T> {
    /// Opens the outbox in file `file` of the state directory `dir`, holding
    /// at most `max` entries. A damaged file is moved aside to
    /// `<file>.damaged-<unix ms>` (see the module doc) and an empty outbox
    /// returned with the [`Damage`]; an unreadable one (I/O) is an error.
    pub(crate) fn open_file(
        dir: &Path,
        file: &str,
        max: usize,
        now_ms: u64,
    ) -> anyhow::Result<(Self, Option<Damage>)> {
        let path = dir.join(file);
        remove_stale_temp_files(dir, file);
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

    /// Appends an entry; when full, drops the oldest and counts it. An entry
    /// whose idempotency key is already queued is not queued again (`false`).
    pub(crate) fn push(&mut self, s: T) -> bool {
        if self.contains(&s.idempotency_key()) {
            return false;
        }
        while self.samples.len() >= self.max {
            self.samples.pop_front();
            self.dropped += 1;
        }
        self.samples.push_back(s);
        true
    }

    /// Replaces the waiting entry with the same key, in its place, or
    /// appends `s` ([`Outbox::push`]): for a kind whose newest value of a key
    /// supersedes the earlier ones (usage totals of one agent run).
    pub(crate) fn upsert(&mut self, s: T) {
        let key = s.idempotency_key();
        match self.samples.iter_mut().find(|e| e.idempotency_key() == key) {
            Some(e) => *e = s,
            None => {
                self.push(s);
            }
        }
    }

    /// Whether an entry with this idempotency key is waiting.
    pub(crate) fn contains(&self, key: &str) -> bool {
        self.samples.iter().any(|e| e.idempotency_key() == key)
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

/// How one kind of outbox is named, in its log lines and in `weft status`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Kind {
    /// Its file in the state directory.
    pub(crate) file: &'static str,
    /// What it holds, in log lines and failure texts (`"task results"`: "the
    /// task results outbox", "task results are kept in memory only").
    pub(crate) what: &'static str,
    /// What becomes of its entries once the controller took them (`"sent"`,
    /// `"uploaded"`, `"forwarded"`).
    pub(crate) sent: &'static str,
    /// The `weft status` area of its failures (`"tasks"`).
    pub(crate) area: &'static str,
    /// The `what` of the failure of a file that could not be read or written
    /// (`"results outbox"`).
    pub(crate) status: &'static str,
}

/// An [`Outbox`] with the bookkeeping every kind does around it: a damaged
/// file moved aside when it is opened is logged; one that cannot be read
/// (I/O) leaves the outbox in memory only, never written over that file; a
/// failed write is logged once per new error and kept, with when it started
/// failing, until a write succeeds; [`Tracked::failures`] lists all of that
/// for `weft status`, each damaged file until the operator deletes it.
#[derive(Debug)]
pub(crate) struct Tracked<T> {
    outbox: Outbox<T>,
    kind: Kind,
    /// The state directory (where damaged files are looked for).
    dir: PathBuf,
    /// When it was opened (the first time its failures were known).
    opened_ms: u64,
    /// Why the file is not written (it could not be read), if so.
    unreadable: Option<String>,
    /// The last failure to write the file, and since when it fails.
    save_error: Option<(String, u64)>,
}

impl<T: Keyed + Clone + Serialize + DeserializeOwned> Tracked<T> {
    /// Opens the outbox of `kind` in `dir`, holding at most `max` entries. A
    /// damaged file is moved aside and logged; an unreadable one (I/O) leaves
    /// an empty outbox in memory only, logged and listed by
    /// [`Tracked::failures`].
    pub(crate) fn open(dir: &Path, kind: Kind, max: usize, now_ms: u64) -> Self {
        Self::try_open(dir, kind, max, now_ms).unwrap_or_else(|e| {
            let why = format!("{e:#}; {} are kept in memory only", kind.what);
            tracing::error!("{why}");
            Self {
                outbox: Outbox::empty(dir, kind.file, max),
                kind,
                dir: dir.to_owned(),
                opened_ms: now_ms,
                unreadable: Some(why),
                save_error: None,
            }
        })
    }

    /// [`Tracked::open`] for a caller that does without the outbox when its
    /// file cannot be read: that is the error (not logged).
    pub(crate) fn try_open(
        dir: &Path,
        kind: Kind,
        max: usize,
        now_ms: u64,
    ) -> anyhow::Result<Self> {
        let (outbox, damage) = Outbox::open_file(dir, kind.file, max, now_ms)?;
        if let Some(Damage { aside, why }) = damage {
            tracing::error!(
                "the {what} outbox was damaged ({why}); moved aside to {}, its {what} are not \
                 {sent}: inspect it, then remove it",
                aside.display(),
                what = kind.what,
                sent = kind.sent,
            );
        }
        Ok(Self {
            outbox,
            kind,
            dir: dir.to_owned(),
            opened_ms: now_ms,
            unreadable: None,
            save_error: None,
        })
    }

    /// The outbox.
    pub(crate) fn outbox(&self) -> &Outbox<T> {
        &self.outbox
    }

    /// The outbox, to change (written by [`Tracked::save`]).
    pub(crate) fn outbox_mut(&mut self) -> &mut Outbox<T> {
        &mut self.outbox
    }

    /// Writes the file if its content would change, unless it could not be
    /// read. A failure is logged when its error is new and kept (with the
    /// time of the first) until a write succeeds; the entries stay in memory.
    pub(crate) fn save(&mut self) {
        if self.unreadable.is_some() {
            return;
        }
        match self.outbox.save() {
            Ok(()) => self.save_error = None,
            Err(e) => {
                let e = format!("{e:#}");
                if self
                    .save_error
                    .as_ref()
                    .is_none_or(|(before, _)| *before != e)
                {
                    tracing::warn!(
                        "cannot write the {} outbox: {e}; keeping it in memory",
                        self.kind.what
                    );
                }
                let since = self
                    .save_error
                    .as_ref()
                    .map_or_else(crate::clock::unix_ms, |(_, t)| *t);
                self.save_error = Some((e, since));
            }
        }
    }

    /// For `weft status` (the kind's area): each damaged file moved aside
    /// (until the operator removes it), a file that could not be read or
    /// written.
    pub(crate) fn failures(&self) -> Vec<FailureStatus> {
        let Kind {
            file,
            what,
            sent,
            area,
            status,
        } = self.kind;
        let failure = |what: String, error: String, since_unix_ms| FailureStatus {
            area: area.into(),
            what,
            error,
            since_unix_ms,
        };
        let mut v: Vec<FailureStatus> = damaged_files_of(&self.dir, file)
            .into_iter()
            .map(|f| {
                failure(
                    f.display().to_string(),
                    format!(
                        "a damaged {what} outbox was moved here; its {what} were not {sent}: \
                         inspect it, then delete it to clear this"
                    ),
                    self.opened_ms,
                )
            })
            .collect();
        if let Some(e) = &self.unreadable {
            v.push(failure(status.into(), e.clone(), self.opened_ms));
        }
        if let Some((e, since)) = &self.save_error {
            v.push(failure(status.into(), e.clone(), *since));
        }
        v
    }
}

/// Removes the temporary files `weft-fs` writes (`.<file>.tmp-<pid>`) that a
/// process killed mid-write left in `dir` (the outbox is opened once per
/// process, before it writes).
fn remove_stale_temp_files(dir: &Path, file: &str) {
    let prefix = format!(".{file}.tmp-");
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.filter_map(Result::ok) {
        let stale = e
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(&prefix));
        let ours = e.file_name().to_str() == Some(&format!("{prefix}{}", std::process::id()));
        if stale
            && !ours
            && let Err(err) = fs::remove_file(e.path())
        {
            tracing::warn!("cannot remove {}: {err}", e.path().display());
        }
    }
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

    /// The metrics outbox of `dir` (as `telemetry::forward` opens it).
    fn open(dir: &Path, max: usize, now_ms: u64) -> anyhow::Result<(Outbox, Option<Damage>)> {
        Outbox::open_file(dir, FILE, max, now_ms)
    }

    /// The metrics outbox's damaged files in `dir`.
    fn damaged_files(dir: &Path) -> Vec<PathBuf> {
        damaged_files_of(dir, FILE)
    }

    fn seqs(o: &Outbox) -> Vec<u64> {
        o.oldest(usize::MAX).iter().map(|s| s.seq).collect()
    }

    #[test]
    fn the_oldest_sample_is_dropped_and_counted_when_full() {
        let dir = tempfile::tempdir().unwrap();
        let (mut o, damage) = open(dir.path(), 3, 0).unwrap();
        assert!(damage.is_none());
        for seq in 1..=5 {
            o.push(sample(seq));
        }
        assert_eq!(seqs(&o), [3, 4, 5]);
        assert_eq!(o.dropped(), 2);
        o.save().unwrap();
        // The bound and the count survive a restart.
        let (mut o, _) = open(dir.path(), 3, 0).unwrap();
        assert_eq!(seqs(&o), [3, 4, 5]);
        assert_eq!(o.dropped(), 2);
        o.push(sample(6));
        assert_eq!(o.dropped(), 3);
        // A smaller bound after an upgrade keeps the newest, counted.
        o.save().unwrap();
        let (o, _) = open(dir.path(), 2, 0).unwrap();
        assert_eq!(seqs(&o), [5, 6]);
        assert_eq!(o.dropped(), 4);
        assert_eq!(MAX_ENTRIES, 4 * 3600 / 30);
    }

    #[test]
    fn samples_come_back_in_order_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (mut o, _) = open(dir.path(), MAX_ENTRIES, 0).unwrap();
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
        let (mut o, _) = open(dir.path(), MAX_ENTRIES, 0).unwrap();
        assert_eq!(seqs(&o), (61..=100).collect::<Vec<_>>());
        o.push(sample(101));
        assert_eq!(o.oldest(1)[0].seq, 61);
        o.taken(usize::MAX);
        assert_eq!(o.len(), 0);
        // Emptied: written once more (so a restart does not replay), then not again.
        o.save().unwrap();
        let written = fs::read(dir.path().join(FILE)).unwrap();
        let (o2, _) = open(dir.path(), MAX_ENTRIES, 0).unwrap();
        assert_eq!(o2.len(), 0);
        fs::remove_file(dir.path().join(FILE)).unwrap();
        o.save().unwrap();
        assert!(!dir.path().join(FILE).exists(), "{written:?}");
    }

    #[test]
    fn a_damaged_outbox_is_moved_aside_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let (mut o, _) = open(dir.path(), MAX_ENTRIES, 0).unwrap();
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
            let (o, damage) = open(dir.path(), MAX_ENTRIES, n as u64).unwrap();
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

    /// An entry of another kind (as task results are), large enough that a
    /// write takes a while.
    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    struct Big {
        n: u64,
        pad: String,
    }

    impl Keyed for Big {
        fn idempotency_key(&self) -> String {
            self.n.to_string()
        }
    }

    const KILL_DIR_ENV: &str = "WEFT_OUTBOX_KILL_TEST_DIR";
    const KILL_FILE: &str = "big-outbox.json";
    const KILL_MAX: usize = 500;

    fn big(n: u64) -> Big {
        Big {
            n,
            pad: "x".repeat(4000),
        }
    }

    /// The writer the next test kills: appends entries numbered on from what
    /// the outbox holds, writing the file after each, until it is killed.
    #[test]
    #[ignore = "a child process of a_writer_killed_mid_write_never_leaves_a_half_written_outbox"]
    fn outbox_writer_child() {
        let Some(dir) = std::env::var_os(KILL_DIR_ENV) else {
            return;
        };
        let dir = PathBuf::from(dir);
        let (mut o, damage) = Outbox::<Big>::open_file(&dir, KILL_FILE, KILL_MAX, 0).unwrap();
        assert!(damage.is_none());
        let mut n = o.oldest(usize::MAX).last().map_or(0, |b| b.n);
        // Start from a large file so that every write takes time.
        if n == 0 {
            for _ in 0..KILL_MAX {
                n += 1;
                o.push(big(n));
            }
        }
        o.save().unwrap();
        fs::write(dir.join("ready"), b"").unwrap();
        loop {
            n += 1;
            o.push(big(n));
            o.save().unwrap();
        }
    }

    /// SIGKILL lands while the writer is in the middle of rewriting the file
    /// (a temporary file of its is there, up to whole): the outbox read after
    /// it is always whole, never damaged, in order, its entries consecutive;
    /// the killed writer's temporary file is removed when it is opened again.
    #[test]
    fn a_writer_killed_mid_write_never_leaves_a_half_written_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        let mut mid_write = 0;
        let mut last_n = 0;
        for round in 0..12u64 {
            let _ = fs::remove_file(dir.path().join("ready"));
            let mut child = std::process::Command::new(&exe)
                .args([
                    "outbox::tests::outbox_writer_child",
                    "--exact",
                    "--ignored",
                    "--nocapture",
                ])
                .env(KILL_DIR_ENV, dir.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let started = crate::clock::now();
            while !dir.path().join("ready").exists() {
                assert!(
                    started.elapsed().as_secs() < 60,
                    "the writer never got ready"
                );
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            // Kill as the writer's temporary file appears, a little later each
            // round: during the write, the fsync, the rename.
            let temp = dir.path().join(format!(".{KILL_FILE}.tmp-{}", child.id()));
            let started = crate::clock::now();
            while !temp.exists() {
                assert!(started.elapsed().as_secs() < 60, "the writer never wrote");
                std::hint::spin_loop();
            }
            std::thread::sleep(std::time::Duration::from_micros(round * round * 20));
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            if temp.exists() {
                mid_write += 1;
            }
            let (o, damage) = Outbox::<Big>::open_file(dir.path(), KILL_FILE, KILL_MAX, 0).unwrap();
            assert!(damage.is_none(), "round {round}: {damage:?}");
            assert!(!temp.exists(), "the stale temporary file is removed");
            let ns: Vec<u64> = o.oldest(usize::MAX).iter().map(|b| b.n).collect();
            assert_eq!(ns.len(), KILL_MAX, "round {round}");
            assert!(
                ns.windows(2).all(|w| w[1] == w[0] + 1),
                "round {round}: in order, no gap"
            );
            assert!(
                ns[ns.len() - 1] >= last_n,
                "round {round}: nothing written is lost"
            );
            last_n = ns[ns.len() - 1];
            assert_eq!(o.dropped(), last_n - KILL_MAX as u64);
        }
        eprintln!("{mid_write} of 12 kills left the writer's temporary file");
        assert!(mid_write > 0, "no kill landed mid-write");
    }

    #[test]
    fn an_entry_already_queued_is_not_queued_twice() {
        let dir = tempfile::tempdir().unwrap();
        let (mut o, _) = Outbox::<Big>::open_file(dir.path(), KILL_FILE, 10, 0).unwrap();
        assert!(o.push(big(1)));
        assert!(o.push(big(2)));
        assert!(!o.push(big(1)), "same key");
        assert!(o.contains("2") && !o.contains("3"));
        o.save().unwrap();
        let (mut o, _) = Outbox::<Big>::open_file(dir.path(), KILL_FILE, 10, 0).unwrap();
        assert!(!o.push(big(2)), "still known after a restart");
        assert_eq!(o.oldest(10), vec![big(1), big(2)]);
        // Taken by the controller: a new entry with that key queues again.
        o.taken(1);
        assert!(o.push(big(1)));
        assert_eq!(o.oldest(10), vec![big(2), big(1)]);
        // Upsert: the newest entry of a key in its place.
        o.upsert(Big {
            n: 2,
            pad: "newer".into(),
        });
        o.upsert(big(3));
        let got: Vec<(u64, String)> = o.oldest(10).into_iter().map(|b| (b.n, b.pad)).collect();
        assert_eq!(got[0], (2, "newer".to_owned()));
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), [2, 1, 3]);
        // The kinds' keys.
        assert_eq!(sample(7).idempotency_key(), "1000/7");
    }

    const KIND: Kind = Kind {
        file: "things-outbox.json",
        what: "things",
        sent: "sent",
        area: "things-area",
        status: "things outbox",
    };

    /// The bookkeeping every kind shares: a damaged file is moved aside and
    /// listed (since the outbox was opened) until the operator deletes it.
    #[test]
    fn a_tracked_outbox_lists_a_damaged_file_until_it_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tracked::<Big>::open(dir.path(), KIND, 10, 5);
        assert!(t.failures().is_empty());
        drop(t);
        fs::write(dir.path().join(KIND.file), b"{not json").unwrap();
        let t = Tracked::<Big>::open(dir.path(), KIND, 10, 42);
        assert_eq!(t.outbox().len(), 0);
        let aside = dir.path().join(format!("{}.damaged-42", KIND.file));
        assert_eq!(fs::read(&aside).unwrap(), b"{not json");
        let f = t.failures();
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(
            (f[0].area.as_str(), f[0].what.as_str(), f[0].since_unix_ms),
            ("things-area", aside.display().to_string().as_str(), 42)
        );
        assert!(
            f[0].error
                .starts_with("a damaged things outbox was moved here; its things were not sent"),
            "{f:?}"
        );
        // Still listed after a restart, until deleted.
        drop(t);
        let t = Tracked::<Big>::open(dir.path(), KIND, 10, 99);
        assert_eq!(t.failures().len(), 1);
        fs::remove_file(&aside).unwrap();
        assert!(t.failures().is_empty());
    }

    /// A file that cannot be read (here: a directory) is left alone: the
    /// outbox is kept in memory only, never written, and listed as a failure.
    #[test]
    fn a_tracked_outbox_whose_file_cannot_be_read_is_kept_in_memory_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KIND.file);
        fs::create_dir(&path).unwrap();
        assert!(Tracked::<Big>::try_open(dir.path(), KIND, 10, 7).is_err());
        let mut t = Tracked::<Big>::open(dir.path(), KIND, 10, 7);
        t.outbox_mut().push(big(1));
        t.save();
        assert_eq!(t.outbox().len(), 1, "kept in memory");
        assert!(path.is_dir(), "not written over");
        let f = t.failures();
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(
            (f[0].area.as_str(), f[0].what.as_str(), f[0].since_unix_ms),
            ("things-area", "things outbox", 7)
        );
        assert!(
            f[0].error.ends_with("; things are kept in memory only"),
            "{f:?}"
        );
    }

    /// A failed write is listed, since its first failure, until a write
    /// succeeds; the entries stay in memory meanwhile.
    #[test]
    fn a_tracked_outbox_lists_a_failed_write_until_a_write_succeeds() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("state");
        fs::create_dir(&dir).unwrap();
        let mut t = Tracked::<Big>::open(&dir, KIND, 10, 0);
        fs::remove_dir(&dir).unwrap();
        let before = crate::clock::unix_ms();
        t.outbox_mut().push(big(1));
        t.save();
        let after = crate::clock::unix_ms();
        let f = t.failures();
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(
            (f[0].area.as_str(), f[0].what.as_str()),
            ("things-area", "things outbox")
        );
        let since = f[0].since_unix_ms;
        assert!((before..=after).contains(&since), "{f:?}");
        // Failing again: still the time of the first failure.
        std::thread::sleep(std::time::Duration::from_millis(5));
        t.outbox_mut().push(big(2));
        t.save();
        let f = t.failures();
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].since_unix_ms, since);
        // Writable again: the failure is gone and what was kept is on disk.
        fs::create_dir(&dir).unwrap();
        t.save();
        assert!(t.failures().is_empty());
        let (o, damage) = Outbox::<Big>::open_file(&dir, KIND.file, 10, 0).unwrap();
        assert!(damage.is_none());
        assert_eq!(o.oldest(10), vec![big(1), big(2)]);
    }
}
