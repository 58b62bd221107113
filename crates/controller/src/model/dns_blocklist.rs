//! The DNS blocklist every node's resolver applies ([`weft_proto::dnsblock`]).
//!
//! One list for the whole controller. The admin's file is parsed and
//! normalized before it reaches the model (the API does it off the write
//! lock); [`SetDnsBlocklist`] stores it with a new version (the map version of
//! its batch) and marks every map changed (`Touched::dns_blocklist`): each
//! enabled node receives one `MapChange::DnsBlocklist` carrying the list's
//! reference (version, digest, size, mode) and fetches the list itself.
//! Setting the list and mode already in force changes nothing (no version, no
//! audit entry). [`ClearDnsBlocklist`] removes it. Audit: `dns.blocklist.set`,
//! `dns.blocklist.clear`.

use std::sync::{Arc, OnceLock};

use serde_json::json;
use weft_proto::dnsblock::{BlockMode, DnsBlocklist, DnsBlocklistRef, MAX_ENTRIES, is_block_name};

use super::World;
use crate::error::ApiError;
use crate::store::Write;
use crate::store::dns_blocklist::DnsBlocklistRecord;

/// The list in force and its map reference (computed once: hashing half a
/// million names per snapshot would be waste).
#[derive(Debug, Clone)]
pub struct Blocklist {
    /// The stored list.
    pub rec: DnsBlocklistRecord,
    /// What maps carry.
    pub reference: DnsBlocklistRef,
    /// The list's JSON as nodes fetch it, encoded by the first fetch and
    /// shared by the others (up to tens of megabytes each time otherwise).
    body: Arc<OnceLock<Arc<[u8]>>>,
}

impl Blocklist {
    pub(super) fn new(rec: DnsBlocklistRecord) -> Self {
        let reference = rec.list.to_ref();
        Blocklist {
            rec,
            reference,
            body: Arc::default(),
        }
    }

    /// A handle on the fetch body: take it under the world's lock, encode
    /// it ([`BodyCache::get`]) after.
    pub fn body_cache(&self) -> BodyCache {
        BodyCache {
            list: Arc::clone(&self.rec.list),
            body: Arc::clone(&self.body),
        }
    }
}

/// The blocklist's fetch body, encoded once (see [`Blocklist::body_cache`]).
#[derive(Debug, Clone)]
pub struct BodyCache {
    list: Arc<DnsBlocklist>,
    body: Arc<OnceLock<Arc<[u8]>>>,
}

impl BodyCache {
    /// `{"version", "mode", "domains"}`, encoded on first use.
    pub fn get(&self) -> Arc<[u8]> {
        Arc::clone(self.body.get_or_init(|| {
            // Strings and numbers only: this cannot fail.
            Arc::from(serde_json::to_vec(&*self.list).unwrap_or_default())
        }))
    }
}

/// `PUT /v1/admin/dns/blocklist`, parsed: replace the list.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SetDnsBlocklist {
    /// The domains, as `weft_proto::dnsblock::parse_list` returns them
    /// (normalized, sorted, unique; checked again here).
    pub domains: Vec<String>,
    /// What a blocked name gets.
    pub mode: BlockMode,
}

/// `DELETE /v1/admin/dns/blocklist`: remove the list. Answers whether there
/// was one.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ClearDnsBlocklist;

operation!(SetDnsBlocklist => Blocklist, |op, w, batch, actor, now_ms| {
    if op.domains.len() > MAX_ENTRIES
        || op.domains.iter().any(|d| !is_block_name(d))
        || op.domains.windows(2).any(|p| p[0] >= p[1])
    {
        return Err(ApiError::invalid(
            "dns_blocklist_invalid",
            "the domains must be valid, sorted and unique (as parse_list returns them)",
        ));
    }
    if let Some(cur) = &w.dns_blocklist
        && cur.rec.list.mode == op.mode
        && cur.rec.list.domains == op.domains
    {
        return Ok(cur.clone());
    }
    let rec = DnsBlocklistRecord {
        list: Arc::new(DnsBlocklist {
            version: w.version + 1,
            mode: op.mode,
            domains: op.domains,
        }),
        set_by: actor.label(),
        set_at_ms: now_ms,
    };
    let bl = Blocklist::new(rec.clone());
    batch.writes.push(Write::DnsBlocklist(Some(rec)));
    batch.touched.dns_blocklist = true;
    w.audit(
        batch,
        actor,
        "dns.blocklist.set",
        "dns.blocklist".into(),
        json!({
            "version": bl.reference.version,
            "mode": bl.reference.mode,
            "entries": bl.reference.entries,
            "sha256": bl.reference.sha256,
        }),
        now_ms,
    );
    w.dns_blocklist = Some(bl.clone());
    Ok(bl)
});

operation!(ClearDnsBlocklist => bool, |_op, w, batch, actor, now_ms| {
    let Some(old) = w.dns_blocklist.take() else {
        return Ok(false);
    };
    batch.writes.push(Write::DnsBlocklist(None));
    batch.touched.dns_blocklist = true;
    w.audit(
        batch,
        actor,
        "dns.blocklist.clear",
        "dns.blocklist".into(),
        json!({ "version": old.reference.version, "entries": old.reference.entries }),
        now_ms,
    );
    Ok(true)
});

impl World {
    /// The DNS blocklist in force.
    pub fn dns_blocklist(&self) -> Option<&Blocklist> {
        self.dns_blocklist.as_ref()
    }

    /// What every node's map carries about the blocklist.
    pub fn dns_blocklist_ref(&self) -> Option<DnsBlocklistRef> {
        self.dns_blocklist.as_ref().map(|b| b.reference.clone())
    }
}

#[cfg(test)]
mod tests {
    use weft_proto::dnsblock::{digest, parse_list};
    use weft_proto::netmap::MapChange;

    use super::*;
    use crate::model::Batch;
    use crate::model::data::tests::{id, recipients_of, world};
    use crate::model::{Actor, NodeId, NodePatch, UpdateNode};
    use crate::netmap::{Payload, compile, snapshot};
    use crate::store::StoreSnapshot;

    /// The data tests' world (n1..n4) with n4 disabled; the enabled nodes' ids.
    fn world_with_nodes() -> (World, Vec<NodeId>) {
        let mut w = world(&mut Vec::new());
        let mut b = Batch::default();
        let off = UpdateNode {
            node: "n4".into(),
            patch: NodePatch {
                disabled: Some(true),
                ..NodePatch::default()
            },
        };
        w.apply(&mut b, &Actor::Admin, off, 0).unwrap();
        w.finish_batch(&mut b);
        let ids = ["n1", "n2", "n3"].map(|n| id(&w, n)).to_vec();
        (w, ids)
    }

    fn set(w: &mut World, text: &str, mode: BlockMode) -> (Blocklist, Batch) {
        let mut b = Batch::default();
        let domains = parse_list(text).unwrap();
        let bl = w
            .apply(&mut b, &Actor::Admin, SetDnsBlocklist { domains, mode }, 7)
            .unwrap();
        (bl, b)
    }

    fn audits(b: &Batch) -> Vec<String> {
        b.writes
            .iter()
            .filter_map(|w| match w {
                Write::Audit(a) => Some(a.action.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn set_versions_audits_and_reaches_every_enabled_node_once() {
        let (mut w, nodes) = world_with_nodes();
        let (bl, mut b) = set(
            &mut w,
            "0.0.0.0 ads.example.com\nb.example\n",
            BlockMode::Zero,
        );
        assert_eq!(bl.reference.entries, 2);
        assert_eq!(bl.reference.version, w.version + 1);
        assert_eq!(bl.rec.set_by, "admin");
        assert_eq!(
            bl.reference.sha256,
            digest(&["ads.example.com".into(), "b.example".into()])
        );
        assert_eq!(audits(&b), vec!["dns.blocklist.set"]);
        let outcome = w.finish_batch(&mut b).unwrap();
        assert_eq!(w.version, bl.reference.version);
        let out = compile(&w, &outcome);
        let mut got = Vec::new();
        for o in &out {
            let Payload::Delta(d) = &o.payload else {
                panic!("a blocklist change is a delta")
            };
            let d = &d.to_map_delta();
            assert_eq!(
                d.changes,
                vec![MapChange::DnsBlocklist {
                    blocklist: Some(bl.reference.clone())
                }]
            );
            got.extend(o.recipients.iter().copied());
        }
        got.sort_unstable();
        assert_eq!(got, nodes);
        assert_eq!(
            recipients_of(&w, &outcome, |c| matches!(
                c,
                MapChange::DnsBlocklist { .. }
            )),
            ["n1", "n2", "n3"]
        );
        // Snapshots carry it too.
        for id in &nodes {
            assert_eq!(
                snapshot(&w, *id).unwrap().dns_blocklist,
                Some(bl.reference.clone())
            );
        }
    }

    #[test]
    fn the_same_list_again_changes_nothing_and_a_new_mode_does() {
        let (mut w, _) = world_with_nodes();
        let (first, mut b) = set(&mut w, "a.example\n", BlockMode::Nxdomain);
        w.finish_batch(&mut b);
        let (again, mut b) = set(&mut w, "# same\nA.example.\n", BlockMode::Nxdomain);
        assert_eq!(again.reference, first.reference);
        assert!(b.writes.is_empty());
        assert!(w.finish_batch(&mut b).is_none());
        let (zero, b) = set(&mut w, "a.example\n", BlockMode::Zero);
        assert!(zero.reference.version > first.reference.version);
        assert_eq!(zero.reference.mode, BlockMode::Zero);
        assert_eq!(audits(&b), vec!["dns.blocklist.set"]);
    }

    #[test]
    fn clear_removes_it_once_and_unsorted_input_is_refused() {
        let (mut w, nodes) = world_with_nodes();
        let (_, mut b) = set(&mut w, "a.example\n", BlockMode::Nxdomain);
        w.finish_batch(&mut b);
        let mut b = Batch::default();
        assert!(
            w.apply(&mut b, &Actor::Admin, ClearDnsBlocklist, 9)
                .unwrap()
        );
        assert_eq!(audits(&b), vec!["dns.blocklist.clear"]);
        assert!(b.writes.contains(&Write::DnsBlocklist(None)));
        let outcome = w.finish_batch(&mut b).unwrap();
        let n: usize = compile(&w, &outcome)
            .iter()
            .map(|o| o.recipients.len())
            .sum();
        assert_eq!(n, nodes.len());
        assert_eq!(snapshot(&w, nodes[0]).unwrap().dns_blocklist, None);
        let mut b = Batch::default();
        assert!(
            !w.apply(&mut b, &Actor::Admin, ClearDnsBlocklist, 9)
                .unwrap()
        );
        assert!(b.writes.is_empty());
        let bad = SetDnsBlocklist {
            domains: vec!["b.example".into(), "a.example".into()],
            mode: BlockMode::Nxdomain,
        };
        let e = w.apply(&mut b, &Actor::Admin, bad, 9).unwrap_err();
        assert_eq!(e.code(), "dns_blocklist_invalid");
    }

    #[test]
    fn the_fetch_body_is_the_list_encoded_once() {
        let (mut w, _) = world_with_nodes();
        let (bl, _) = set(&mut w, "a.example\n", BlockMode::Zero);
        let cache = w.dns_blocklist().unwrap().body_cache();
        let body = cache.get();
        let back: DnsBlocklist = serde_json::from_slice(&body).unwrap();
        assert_eq!(back.to_ref(), bl.reference);
        assert!(Arc::ptr_eq(&body, &bl.body_cache().get()));
    }

    #[test]
    fn a_stored_list_is_loaded_with_its_reference() {
        let list = DnsBlocklist {
            version: 4,
            mode: BlockMode::Zero,
            domains: vec!["a.example".into()],
        };
        let snap = StoreSnapshot {
            dns_blocklist: Some(DnsBlocklistRecord {
                list: Arc::new(list.clone()),
                set_by: "admin".into(),
                set_at_ms: 1,
            }),
            ..StoreSnapshot::default()
        };
        let w = World::from_snapshot(snap, vec![]);
        assert_eq!(w.dns_blocklist_ref(), Some(list.to_ref()));
    }
}
