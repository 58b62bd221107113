//! The resolver's query log on disk (off by default; `weftd --dns-query-log`):
//! one JSON object a line ([`DnsLogEntry`]), written by its own thread so a
//! slow disk never delays an answer (lines that do not fit its queue are
//! dropped and counted). Bounded: `dns-query.log` grows to half the budget,
//! then becomes `dns-query.log.1` (replacing the older one) and a new file
//! starts, so both together never exceed the budget. Files are 0600: the names
//! a host looks up are private.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::Duration;

pub use weft_proto::local::DnsLogEntry;

use crate::clock;
use crate::error::DnsError;
use crate::handler::Served;
use crate::upstream::spec::Upstream;

/// The log's file name in the state directory.
pub const FILE_NAME: &str = "dns-query.log";
/// Default budget of both files together (`--dns-query-log-max-bytes`).
pub const DEFAULT_MAX_BYTES: u64 = 8 * 1024 * 1024;
/// Smallest budget accepted (a line is well under 1 KiB).
pub const MIN_MAX_BYTES: u64 = 4096;
/// Lines waiting for the writer at most.
const QUEUE: usize = 4096;

/// Where the log is and how large it may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryLogConfig {
    /// The current file (the older one is this with `.1` appended).
    pub path: PathBuf,
    /// Both files together at most this many bytes.
    pub max_bytes: u64,
}

impl QueryLogConfig {
    /// `state_dir/dns-query.log` with the budget `max_bytes` (at least
    /// [`MIN_MAX_BYTES`]).
    pub fn new(state_dir: &Path, max_bytes: u64) -> Result<Self, String> {
        if max_bytes < MIN_MAX_BYTES {
            return Err(format!(
                "DNS query log budget {max_bytes} bytes: at least {MIN_MAX_BYTES}"
            ));
        }
        Ok(Self {
            path: state_dir.join(FILE_NAME),
            max_bytes,
        })
    }

    /// The older file.
    pub fn rotated(&self) -> PathBuf {
        rotated(&self.path)
    }
}

fn rotated(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

/// The writing side, owned by the running service.
#[derive(Debug)]
pub(crate) struct QueryLog {
    tx: SyncSender<DnsLogEntry>,
    next_seq: AtomicU64,
    dropped: AtomicU64,
    path: PathBuf,
}

impl QueryLog {
    /// Opens (creates) the log and starts its writer; sequence numbers go on
    /// from the last line already there.
    pub(crate) fn open(config: &QueryLogConfig) -> Result<Self, DnsError> {
        let err = |source| DnsError::QueryLog {
            path: config.path.clone(),
            source,
        };
        let file = open_append(&config.path).map_err(err)?;
        let size = file.metadata().map_err(err)?.len();
        let last = last_seq(&config.path).or_else(|| last_seq(&config.rotated()));
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let writer = Writer {
            path: config.path.clone(),
            file,
            size,
            half: config.max_bytes / 2,
            failing: false,
        };
        std::thread::Builder::new()
            .name("dns-query-log".into())
            .spawn(move || writer.run(rx))
            .map_err(err)?;
        Ok(Self {
            tx,
            next_seq: AtomicU64::new(last.map_or(1, |s| s + 1)),
            dropped: AtomicU64::new(0),
            path: config.path.clone(),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Lines dropped because the writer fell behind.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Queues one line.
    pub(crate) fn record(
        &self,
        served: &Served,
        upstream: Option<&Upstream>,
        took: Option<Duration>,
    ) {
        let entry = DnsLogEntry {
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
            ts_ms: clock::wall_ms(),
            name: served.name.clone(),
            qtype: served.qtype.to_string(),
            rcode: format!("{:?}", served.rcode),
            source: served.source.as_str().to_owned(),
            upstream: upstream.map(ToString::to_string),
            latency_us: took.map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        };
        match self.tx.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

struct Writer {
    path: PathBuf,
    file: File,
    size: u64,
    half: u64,
    failing: bool,
}

impl Writer {
    fn run(mut self, rx: Receiver<DnsLogEntry>) {
        while let Ok(entry) = rx.recv() {
            let Ok(mut line) = serde_json::to_vec(&entry) else {
                continue;
            };
            line.push(b'\n');
            match self.write(&line) {
                Ok(()) => self.failing = false,
                Err(e) if !self.failing => {
                    self.failing = true;
                    tracing::warn!(path = %self.path.display(), "DNS query log: {e}; lines are lost until a write succeeds");
                }
                Err(_) => {}
            }
        }
    }

    fn write(&mut self, line: &[u8]) -> io::Result<()> {
        let len = line.len() as u64;
        if self.size > 0 && self.size + len > self.half {
            std::fs::rename(&self.path, rotated(&self.path))?;
            self.file = open_append(&self.path)?;
            self.size = self.file.metadata()?.len();
        }
        self.file.write_all(line)?;
        self.size += len;
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// The sequence number of the last complete line of `path`.
fn last_seq(path: &Path) -> Option<u64> {
    let mut file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let start = len.saturating_sub(4096);
    file.seek(SeekFrom::Start(start)).ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    tail.split(|b| *b == b'\n')
        .rev()
        .find_map(|l| serde_json::from_slice::<DnsLogEntry>(l).ok())
        .map(|e| e.seq)
}

/// The latest `n` entries of the log at `path` (both files) with a sequence
/// number above `after_seq`, oldest first. Lines that do not parse (a line cut
/// by a crash) are skipped. A missing log is empty.
pub fn read(path: &Path, n: usize, after_seq: Option<u64>) -> io::Result<Vec<DnsLogEntry>> {
    let mut out = Vec::new();
    for p in [rotated(path), path.to_owned()] {
        let bytes = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", p.display()))),
        };
        out.extend(
            bytes
                .split(|b| *b == b'\n')
                .filter_map(|l| serde_json::from_slice::<DnsLogEntry>(l).ok())
                .filter(|e| after_seq.is_none_or(|a| e.seq > a)),
        );
    }
    let skip = out.len().saturating_sub(n);
    Ok(out.split_off(skip))
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::ResponseCode;
    use hickory_proto::rr::RecordType;

    use super::*;
    use crate::handler::Source;

    fn served(i: usize) -> Served {
        Served {
            name: format!("host-{i}.example"),
            qtype: RecordType::A,
            rcode: ResponseCode::NoError,
            source: Source::Upstream,
        }
    }

    fn wait_for(path: &Path, seq: u64) {
        for _ in 0..500 {
            if read(path, 1, None)
                .ok()
                .and_then(|v| v.last().map(|e| e.seq))
                == Some(seq)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the writer did not reach {seq}");
    }

    #[test]
    fn the_log_stays_within_its_budget_and_keeps_the_latest() {
        let dir = tempfile::tempdir().unwrap();
        let config = QueryLogConfig::new(dir.path(), MIN_MAX_BYTES).unwrap();
        let log = QueryLog::open(&config).unwrap();
        let up: Upstream = "tls://192.0.2.1#dns.example".parse().unwrap();
        for i in 0..500 {
            log.record(&served(i), Some(&up), Some(Duration::from_micros(1500)));
            if i % 100 == 99 {
                wait_for(&config.path, i as u64 + 1);
            }
        }
        wait_for(&config.path, 500);
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let total = size(&config.path) + size(&config.rotated());
        assert!(total <= MIN_MAX_BYTES, "{total} bytes");
        assert!(config.rotated().exists(), "rotated at least once");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&config.path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let all = read(&config.path, usize::MAX, None).unwrap();
        assert!(all.len() < 500 && all.len() > 5, "{}", all.len());
        let last = all.last().unwrap();
        assert_eq!(last.seq, 500);
        assert_eq!(last.name, "host-499.example");
        assert_eq!(
            last.upstream.as_deref(),
            Some("tls://192.0.2.1:853#dns.example")
        );
        assert_eq!(last.latency_us, Some(1500));
        assert!(
            all.windows(2).all(|w| w[0].seq + 1 == w[1].seq),
            "in order, no gap"
        );
        let tail = read(&config.path, 3, Some(497)).unwrap();
        assert_eq!(
            tail.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [498, 499, 500]
        );
        assert!(read(&config.path, 10, Some(500)).unwrap().is_empty());

        // A new service goes on numbering where the log ended.
        drop(log);
        let again = QueryLog::open(&config).unwrap();
        again.record(&served(0), None, None);
        wait_for(&config.path, 501);
    }

    #[test]
    fn a_budget_below_the_minimum_is_refused_and_a_missing_log_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            QueryLogConfig::new(dir.path(), 100)
                .unwrap_err()
                .contains("at least")
        );
        assert!(
            read(&dir.path().join(FILE_NAME), 10, None)
                .unwrap()
                .is_empty()
        );
    }
}
