//! Deltas that share their peer changes.
//!
//! A batch's peer changes (the touched networks' upserts and removals) go to
//! nearly every member, and many members also get something of their own:
//! after a join every node's compiled policy changes, and in a presence storm
//! every node that came online is itself a subject. Copying the batch's peer
//! changes into each of those deltas cost O(recipients × changes) in memory and
//! encoding (64 registrations in one batch at 10,000 nodes: 640,000 peer
//! copies, hundreds of MiB). Here the batch's peer changes are one shared list
//! ([`Delta::shared`]); a delta is the runs of it its recipients may see, then
//! its own changes. The hub encodes the shared list once per batch
//! ([`SharedEncoding`]) and each delta's frame is its own bytes around slices of
//! that encoding ([`Delta::frame_chunks`]): exactly the bytes of the plain
//! encoding of [`Delta::to_map_delta`] (tested).

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use weft_proto::api::API_VERSION;
use weft_proto::netmap::{EVENT_DELTA, MapChange, MapDelta};
use weft_proto::sse;

use super::shared::split_at_empty;

/// What one group of recipients receives for one version: runs of the batch's
/// shared peer changes, then changes of its own.
#[derive(Debug, Clone)]
pub struct Delta {
    /// The map version it brings its recipients to.
    pub version: u64,
    /// The batch's peer changes, shared by every delta of the batch.
    shared: Arc<[MapChange]>,
    /// The runs of `shared` this delta carries, in order, not adjacent.
    runs: Vec<Range<usize>>,
    /// Changes after those, for these recipients only.
    own: Vec<MapChange>,
}

impl PartialEq for Delta {
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version && self.changes().eq(other.changes())
    }
}

impl Eq for Delta {}

impl Delta {
    /// A delta of `own` changes only.
    pub fn own(version: u64, own: Vec<MapChange>) -> Self {
        Delta {
            version,
            shared: Arc::from(Vec::new()),
            runs: Vec::new(),
            own,
        }
    }

    /// The entries `picked` (ascending indices) of `shared`, then `own`.
    pub fn picked(
        version: u64,
        shared: &Arc<[MapChange]>,
        picked: &[usize],
        own: Vec<MapChange>,
    ) -> Self {
        let mut runs: Vec<Range<usize>> = Vec::new();
        for &i in picked.iter().filter(|i| **i < shared.len()) {
            match runs.last_mut() {
                Some(r) if r.end == i => r.end = i + 1,
                _ => runs.push(i..i + 1),
            }
        }
        Delta {
            version,
            shared: Arc::clone(shared),
            runs,
            own,
        }
    }

    /// Appends a change of its own.
    pub fn push(&mut self, change: MapChange) {
        self.own.push(change);
    }

    /// Its changes, in order.
    pub fn changes(&self) -> impl Iterator<Item = &MapChange> {
        self.runs
            .iter()
            .flat_map(|r| &self.shared[r.clone()])
            .chain(&self.own)
    }

    /// Whether it carries no change.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty() && self.own.is_empty()
    }

    /// The plain delta.
    pub fn to_map_delta(&self) -> MapDelta {
        MapDelta {
            api_version: API_VERSION,
            version: self.version,
            changes: self.changes().cloned().collect(),
        }
    }

    /// About how many bytes its own changes take encoded, without encoding
    /// them (to bound the hub's ring by what it holds before it encodes).
    pub fn own_size_estimate(&self) -> usize {
        use weft_proto::policy::MapPolicy;
        self.own
            .iter()
            .map(|c| match c {
                MapChange::Policy {
                    policy: Some(MapPolicy::Compiled(p)),
                } => {
                    let nets: usize = p
                        .inbound
                        .iter()
                        .chain(&p.outbound)
                        .map(|f| f.local.len() + f.peers.len() + 2)
                        .sum();
                    let grants: usize = p
                        .ssh_inbound
                        .iter()
                        .chain(&p.ssh_outbound)
                        .map(|g| g.addrs.len() + g.users.len() + 2)
                        .sum();
                    64 + 64 * p.rules.len() + 24 * (nets + grants) + 32 * p.visible_peers.len()
                }
                _ => 256,
            })
            .sum::<usize>()
            + 64
    }

    /// The shared list it slices (to encode it once per batch).
    pub fn shared(&self) -> &Arc<[MapChange]> {
        &self.shared
    }

    /// The SSE `delta` event, as chunks: its own text around slices of
    /// `enc` (the encoding of [`Delta::shared`]); and how many of those bytes
    /// are its own (not in `enc`).
    pub fn frame_chunks(&self, enc: &SharedEncoding) -> (Vec<Bytes>, usize) {
        let id = self.version.to_string();
        let plain = || {
            let mut buf = Vec::with_capacity(self.own_size_estimate() + 64);
            if sse::encode_json_event(&mut buf, Some(&id), Some(EVENT_DELTA), &self.to_map_delta())
                .is_err()
            {
                sse::encode_event(&mut buf, Some(&id), Some(EVENT_DELTA), "");
            }
            let len = buf.len();
            (vec![Bytes::from(buf)], len)
        };
        if self.runs.is_empty() || enc.spans.len() != self.shared.len() {
            return plain();
        }
        let empty = MapDelta {
            api_version: API_VERSION,
            version: self.version,
            changes: Vec::new(),
        };
        let Ok(json) = serde_json::to_vec(&empty) else {
            return plain();
        };
        let Some((head, tail)) = split_at_empty(&json, "changes") else {
            return plain();
        };
        let mut first = Vec::with_capacity(64 + head.len());
        sse::begin_data_line(&mut first, Some(&id), Some(EVENT_DELTA));
        first.extend_from_slice(head);
        first.push(b'[');
        let mut out = Vec::with_capacity(self.runs.len() * 2 + 2);
        let mut own_len = 0;
        let mut text = first;
        for (i, r) in self.runs.iter().enumerate() {
            if i > 0 {
                text.push(b',');
            }
            own_len += text.len();
            out.push(Bytes::from(std::mem::take(&mut text)));
            out.push(
                enc.bytes
                    .slice(enc.spans[r.start].0..enc.spans[r.end - 1].1),
            );
        }
        if !self.own.is_empty() {
            text.reserve(self.own_size_estimate());
        }
        for c in &self.own {
            text.push(b',');
            if serde_json::to_writer(&mut text, c).is_err() {
                return plain();
            }
        }
        text.push(b']');
        text.extend_from_slice(tail);
        sse::end_data_line(&mut text);
        own_len += text.len();
        out.push(Bytes::from(text));
        (out, own_len)
    }
}

/// A batch's shared peer changes encoded once: `change,change,...` and each
/// change's span in it.
#[derive(Debug)]
pub struct SharedEncoding {
    /// The comma-joined JSON of the changes.
    pub bytes: Bytes,
    /// Per change, its span in `bytes`.
    spans: Vec<(usize, usize)>,
}

impl SharedEncoding {
    /// Encodes `changes` (`spans` stays short of them if one cannot be
    /// encoded: every delta is then encoded the plain way).
    pub fn new(changes: &[MapChange]) -> Self {
        let mut buf = Vec::new();
        let mut spans = Vec::with_capacity(changes.len());
        for c in changes {
            if !buf.is_empty() {
                buf.push(b',');
            }
            let start = buf.len();
            if serde_json::to_writer(&mut buf, c).is_err() {
                break;
            }
            spans.push((start, buf.len()));
        }
        SharedEncoding {
            bytes: Bytes::from(buf),
            spans,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::netmap::MapEvent;

    fn remove(i: u8) -> MapChange {
        MapChange::PeerRemove {
            network: format!("net\"{i}"),
            node_key: weft_proto::NodeKey::from_bytes([i; 32]),
        }
    }

    #[test]
    fn chunks_are_the_plain_encoding() {
        let shared: Arc<[MapChange]> = (0..6).map(remove).collect::<Vec<_>>().into();
        let enc = SharedEncoding::new(&shared);
        let own = vec![MapChange::NetworkRemove {
            network: "gone\n".into(),
        }];
        for picked in [
            vec![],
            vec![0],
            vec![1, 2, 4],
            vec![0, 1, 2, 3, 4, 5],
            vec![5],
        ] {
            for own in [Vec::new(), own.clone()] {
                let d = Delta::picked(9, &shared, &picked, own);
                let (chunks, own_len) = d.frame_chunks(&enc);
                let got: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
                let want = crate::hub::encode(&MapEvent::Delta(d.to_map_delta())).bytes;
                assert_eq!(got, &want[..], "picked {picked:?}");
                assert!(own_len <= got.len());
                assert_eq!(d.changes().count(), d.to_map_delta().changes.len());
            }
        }
    }
}
