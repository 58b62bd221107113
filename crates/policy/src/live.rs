//! Incremental per-node compile: the same result as [`crate::compile()`], kept
//! up to date as nodes come, go and change, without recompiling everyone.
//!
//! [`LivePolicy`] resolves each node's selectors once (its *selection*: for each
//! rule side that picks it, the prefixes it picks) and keeps, per rule side, the
//! set of members and the aggregate of their prefixes. A node's compiled policy
//! only depends on its own selection, on the members of the opposite sides of
//! its rules, and on which of those it may see; so when node X changes, only
//! X and the members of the sides opposite X's rules (before and after the
//! change) are recompiled ([`LivePolicy::flush`]).
//!
//! Recompiling a node costs O(its rules × log n) when no deny rule picks it: every
//! member of an allow rule's other side is then visible, so a flow rule's peers
//! are the side's shared aggregate minus the node's own host addresses. A node
//! that some deny rule picks is compiled exactly like [`crate::compile()`] does,
//! in O(n). Visibility is not stored per node (that is O(n²)): [`LivePolicy::is_visible`]
//! decides one pair in O(rules), and [`Transition::was_visible`] answers for the
//! state before the last flush.
//!
//! A rule's `to` side is kept per part (the rule's own ports, a service's port,
//! an SSH server's port; see `select.rs`), each with its members and aggregate;
//! the sides opposite a node's entries are all parts of the other side. So a
//! node gaining or losing a service or its SSH port changes its selection, and
//! the members opposite its old and new entries are recompiled. A node's SSH
//! grants are decided afresh at each recompile against the members opposite its
//! `[[ssh]]` entries: O(those members), so under `from = "*"`, `to = "*"` a
//! join costs O(n) per node (every server's grant list changes anyway).
//!
//! Compiled policies here leave [`CompiledPolicy::visible_peers`] empty; use
//! [`LivePolicy::visible_peers`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ipnet::IpNet;

use crate::compile::{CompiledPolicy, FlowRule, RuleId, SshGrant, rule_infos};
use crate::inventory::NodeFacts;
use crate::model::{Action, Policy};
use crate::select::{
    Entry, FROM, Restr, Selection, SideKey, TO, action, eff, find, pair_visible, restricted,
    selection,
};
use crate::ssh::{Party, grants, ssh_entry, update_grants};

/// The members of one rule side and their prefixes.
#[derive(Debug, Clone)]
struct Side<K> {
    members: BTreeSet<K>,
    /// How many members contribute each prefix.
    count: BTreeMap<IpNet, u32>,
    /// Contributed prefixes that are not host prefixes (routed subnets), with
    /// how many members contribute each.
    subnets: BTreeMap<IpNet, u32>,
    /// The aggregate of every member's prefixes (None: stale).
    agg: Option<Vec<IpNet>>,
}

impl<K> Default for Side<K> {
    fn default() -> Self {
        Side {
            members: BTreeSet::new(),
            count: BTreeMap::new(),
            subnets: BTreeMap::new(),
            agg: Some(Vec::new()),
        }
    }
}

fn is_host(n: &IpNet) -> bool {
    n.prefix_len() == n.max_prefix_len()
}

impl<K: Ord + Clone> Side<K> {
    fn add(&mut self, k: &K, nets: &[IpNet]) {
        self.members.insert(k.clone());
        for n in nets {
            *self.count.entry(*n).or_insert(0) += 1;
            if !is_host(n) {
                *self.subnets.entry(*n).or_insert(0) += 1;
            }
        }
        self.agg = None;
    }

    fn remove(&mut self, k: &K, nets: &[IpNet]) {
        self.members.remove(k);
        for n in nets {
            if let Some(c) = self.count.get_mut(n) {
                *c -= 1;
                if *c == 0 {
                    self.count.remove(n);
                }
            }
            if !is_host(n)
                && let Some(c) = self.subnets.get_mut(n)
            {
                *c -= 1;
                if *c == 0 {
                    self.subnets.remove(n);
                }
            }
        }
        self.agg = None;
    }

    /// Whether `n` is a host prefix only one member contributes and no routed
    /// subnet in the side covers: taking that member's `n` out of the side's
    /// aggregate is then exact.
    fn sole(&self, n: &IpNet) -> bool {
        is_host(n) && self.count.get(n) == Some(&1) && !self.covered(n)
    }

    fn covered(&self, n: &IpNet) -> bool {
        self.subnets.keys().any(|q| q.contains(n))
    }

    fn refresh(&mut self) {
        if self.agg.is_none() {
            let all: Vec<IpNet> = self.count.keys().copied().collect();
            self.agg = Some(IpNet::aggregate(&all));
        }
    }
}

#[derive(Debug, Clone)]
struct LiveNode {
    facts: NodeFacts,
    sel: Selection,
    /// None until the next flush compiles it.
    compiled: Option<Arc<CompiledPolicy>>,
}

/// A policy compiled for a changing set of nodes, keyed by `K` (any stable id;
/// the node's name is in its [`NodeFacts`]).
#[derive(Debug, Clone)]
pub struct LivePolicy<K> {
    policy: Arc<Policy>,
    nodes: BTreeMap<K, LiveNode>,
    /// Every rule side (and `to` part) with members.
    sides: BTreeMap<SideKey, Side<K>>,
    /// Nodes to recompile at the next flush.
    dirty: BTreeSet<K>,
    /// The selections, before the first change since the last flush, of the
    /// nodes changed since (None: the node did not exist).
    before: BTreeMap<K, Option<Selection>>,
    /// The names, before the first change since the last flush, of the nodes
    /// changed since (None: the node did not exist): their SSH grants on
    /// unchanged nodes are the ones to decide again.
    before_names: BTreeMap<K, Option<String>>,
}

impl<K> Default for LivePolicy<K> {
    fn default() -> Self {
        LivePolicy {
            policy: Arc::default(),
            nodes: BTreeMap::new(),
            sides: BTreeMap::new(),
            dirty: BTreeSet::new(),
            before: BTreeMap::new(),
            before_names: BTreeMap::new(),
        }
    }
}

/// What the last [`LivePolicy::flush`] (or [`LivePolicy::set_policy`]) changed,
/// to ask about visibility before it.
#[derive(Debug, Clone)]
pub struct Transition<K>(Before<K>);

#[derive(Debug, Clone)]
enum Before<K> {
    /// These nodes' selections changed (the others' did not), with their
    /// selection before (None: the node did not exist).
    Nodes(BTreeMap<K, Option<Selection>>),
    /// The policy was replaced; this is the state before.
    Rebuilt(Box<LivePolicy<K>>),
}

impl<K> Default for Transition<K> {
    fn default() -> Self {
        Transition(Before::Nodes(BTreeMap::new()))
    }
}

/// One node as visibility sees it, to decide many pairs without lookups. Only
/// compare viewpoints taken from the same state (both now, or both before).
#[derive(Debug, Clone, Copy)]
pub struct Viewpoint<'a, K> {
    key: &'a K,
    sel: &'a [Entry],
    policy: &'a Policy,
}

impl<K: Ord> Viewpoint<'_, K> {
    /// Whether the two nodes may see each other (never a node itself).
    pub fn sees(&self, other: &Viewpoint<'_, K>) -> bool {
        self.key != other.key && pair_visible(self.policy, self.sel, other.sel)
    }

    /// The rule sides that pick this node, when they alone decide whether it
    /// sees another node: with no deny rule in the policy, two distinct nodes
    /// see each other exactly when any other two distinct nodes of the same
    /// classes do (a deny rule makes prefixes count too: `None`). Lets a
    /// caller decide visibility once per pair of classes, not per pair of
    /// nodes.
    pub fn class(&self) -> Option<VisibilityClass> {
        if self.policy.rules.iter().any(|r| r.action == Action::Deny) {
            return None;
        }
        Some(VisibilityClass(self.sel.iter().map(|e| e.key).collect()))
    }
}

/// See [`Viewpoint::class`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VisibilityClass(Vec<SideKey>);

/// The result of a flush.
#[derive(Debug, Clone)]
pub struct Flushed<K> {
    /// Nodes whose compiled policy changed (new ones included, removed ones not).
    pub changed: BTreeSet<K>,
    /// How to ask about visibility before the flush.
    pub transition: Transition<K>,
}

/// `nets` minus the addresses in `hole`, aggregated: interval arithmetic per
/// address family, then the minimal prefixes of each remaining interval.
fn subtract(nets: &[IpNet], hole: &[IpNet]) -> Vec<IpNet> {
    fn cut<T: Copy + Ord + std::ops::Add<Output = T> + std::ops::Sub<Output = T>>(
        mut ranges: Vec<(T, T)>,
        mut holes: Vec<(T, T)>,
        one: T,
    ) -> Vec<(T, T)> {
        ranges.sort_unstable();
        holes.sort_unstable();
        let mut out = Vec::with_capacity(ranges.len() + holes.len());
        for (mut start, end) in ranges {
            let mut open = true;
            for &(hs, he) in &holes {
                if he < start || hs > end {
                    continue;
                }
                if hs > start {
                    out.push((start, hs - one));
                }
                if he >= end {
                    open = false;
                    break;
                }
                start = he + one;
            }
            if open {
                out.push((start, end));
            }
        }
        // Adjacent or overlapping pieces as one range: the exact prefix
        // cover of each maximal range is then the aggregate of the whole
        // (no `IpNet::aggregate` pass, which was a third of this function's
        // time in a 10,000-node policy edit).
        out.sort_unstable();
        let mut merged: Vec<(T, T)> = Vec::with_capacity(out.len());
        for (s, e) in out {
            match merged.last_mut() {
                Some(last) if s <= last.1 || s - last.1 == one => {
                    if e > last.1 {
                        last.1 = e;
                    }
                }
                _ => merged.push((s, e)),
            }
        }
        merged
    }
    let v4 = |n: &IpNet| match n {
        IpNet::V4(n) => Some((u32::from(n.network()), u32::from(n.broadcast()))),
        IpNet::V6(_) => None,
    };
    let v6 = |n: &IpNet| match n {
        IpNet::V6(n) => Some((u128::from(n.network()), u128::from(n.broadcast()))),
        IpNet::V4(_) => None,
    };
    let mut out: Vec<IpNet> = Vec::new();
    for (s, e) in cut(
        nets.iter().filter_map(v4).collect(),
        hole.iter().filter_map(v4).collect(),
        1,
    ) {
        out.extend(ipnet::Ipv4Subnets::new(s.into(), e.into(), 0).map(IpNet::V4));
    }
    for (s, e) in cut(
        nets.iter().filter_map(v6).collect(),
        hole.iter().filter_map(v6).collect(),
        1,
    ) {
        out.extend(ipnet::Ipv6Subnets::new(s.into(), e.into(), 0).map(IpNet::V6));
    }
    out
}

impl<K: Ord + Clone> LivePolicy<K> {
    /// Compiles `policy` for `nodes`.
    pub fn new(policy: Policy, nodes: impl IntoIterator<Item = (K, NodeFacts)>) -> Self {
        let mut live = LivePolicy {
            sides: BTreeMap::new(),
            policy: Arc::new(policy),
            nodes: BTreeMap::new(),
            dirty: BTreeSet::new(),
            before: BTreeMap::new(),
            before_names: BTreeMap::new(),
        };
        for (k, facts) in nodes {
            live.insert(k, facts);
        }
        live.dirty = live.nodes.keys().cloned().collect();
        live.before.clear();
        live.before_names.clear();
        live.flush();
        live
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Replaces the policy and recompiles every node (flushing pending changes);
    /// the transition holds the whole state before.
    pub fn set_policy(&mut self, policy: Policy) -> Flushed<K> {
        let nodes: Vec<(K, NodeFacts)> = self
            .nodes
            .iter()
            .map(|(k, n)| (k.clone(), n.facts.clone()))
            .collect();
        let next = LivePolicy::new(policy, nodes);
        let old = std::mem::replace(self, next);
        let changed = self
            .nodes
            .iter()
            .filter(|(k, n)| {
                old.nodes.get(*k).and_then(|o| o.compiled.as_ref()) != n.compiled.as_ref()
            })
            .map(|(k, _)| k.clone())
            .collect();
        Flushed {
            changed,
            transition: Transition(Before::Rebuilt(Box::new(old))),
        }
    }

    fn insert(&mut self, k: K, facts: NodeFacts) {
        let sel = selection(&self.policy, &facts);
        for e in &sel {
            self.sides.entry(e.key).or_default().add(&k, &e.nets);
        }
        self.nodes.insert(
            k,
            LiveNode {
                facts,
                sel,
                compiled: None,
            },
        );
    }

    /// The parts of the side opposite `key`, with their members.
    fn opposite_sides<'a>(
        &'a self,
        key: &'a SideKey,
    ) -> impl Iterator<Item = (&'a SideKey, &'a Side<K>)> + 'a {
        self.sides
            .range(key.opposite_start()..)
            .take_while(move |(k, _)| key.faces(k))
    }

    /// Marks dirty the node and every member of a side opposite one of its entries.
    fn mark(&mut self, k: &K, sel: &[Entry]) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.insert(k.clone());
        for e in sel {
            for (_, s) in self.opposite_sides(&e.key) {
                dirty.extend(s.members.iter().cloned());
            }
        }
        self.dirty = dirty;
    }

    /// Takes `k` out of the sides; returns its node.
    fn take(&mut self, k: &K) -> Option<LiveNode> {
        let node = self.nodes.remove(k)?;
        for e in &node.sel {
            if let Some(s) = self.sides.get_mut(&e.key) {
                s.remove(k, &e.nets);
                if s.members.is_empty() {
                    self.sides.remove(&e.key);
                }
            }
        }
        Some(node)
    }

    /// Adds node `k` or replaces its facts (recompiled at the next flush).
    pub fn upsert(&mut self, k: K, facts: NodeFacts) {
        if self.nodes.get(&k).is_some_and(|n| n.facts == facts) {
            return;
        }
        let old = self.take(&k);
        if let Some(o) = &old {
            self.mark(&k, &o.sel);
        }
        let compiled = old.as_ref().and_then(|o| o.compiled.clone());
        let old_sel = old.map(|o| o.sel);
        self.before.entry(k.clone()).or_insert(old_sel);
        // Its name as of the last flush (its compile's), None if it is new.
        let name = compiled.as_ref().map(|c| c.node.clone());
        self.before_names.entry(k.clone()).or_insert(name);
        self.insert(k.clone(), facts);
        if let Some(n) = self.nodes.get_mut(&k) {
            // Kept to tell at the flush whether it changed.
            n.compiled = compiled;
        }
        let sel = self
            .nodes
            .get(&k)
            .map(|n| n.sel.clone())
            .unwrap_or_default();
        self.mark(&k, &sel);
    }

    /// Removes node `k` (its peers are recompiled at the next flush).
    pub fn remove(&mut self, k: &K) {
        if let Some(old) = self.take(k) {
            self.mark(k, &old.sel);
            self.before.entry(k.clone()).or_insert(Some(old.sel));
            self.before_names
                .entry(k.clone())
                .or_insert(Some(old.facts.name));
        }
    }

    /// Recompiles the nodes the changes since the last flush may affect.
    pub fn flush(&mut self) -> Flushed<K> {
        for s in self.sides.values_mut() {
            s.refresh();
        }
        let dirty = std::mem::take(&mut self.dirty);
        let mut changed = BTreeSet::new();
        for k in dirty {
            let Some(node) = self.nodes.get(&k) else {
                continue;
            };
            // A node that did not change itself keeps its SSH grants towards
            // the nodes that did not change either.
            let unchanged = node
                .compiled
                .as_deref()
                .filter(|_| !self.before.contains_key(&k));
            let next = match unchanged {
                // Picked by a deny rule: update its old compile with the changed
                // nodes only.
                Some(old) if !self.deny_free(node) => self
                    .update_node(&k, node, old)
                    .unwrap_or_else(|| self.compile_node(&k, node, unchanged)),
                _ => self.compile_node(&k, node, unchanged),
            };
            if node.compiled.as_deref() != Some(&next) {
                changed.insert(k.clone());
                if let Some(n) = self.nodes.get_mut(&k) {
                    n.compiled = Some(Arc::new(next));
                }
            }
        }
        self.before_names.clear();
        // A node changed and changed back since the last flush: nothing to report.
        let before = std::mem::take(&mut self.before)
            .into_iter()
            .filter(|(k, sel)| self.nodes.get(k).map(|n| &n.sel) != sel.as_ref())
            .collect();
        Flushed {
            changed,
            transition: Transition(Before::Nodes(before)),
        }
    }

    /// The compiled policy of `k` as of the last flush (`visible_peers` empty).
    pub fn compiled(&self, k: &K) -> Option<&Arc<CompiledPolicy>> {
        self.nodes.get(k).and_then(|n| n.compiled.as_ref())
    }

    /// Whether `a` and `b` (both present, distinct) may see each other.
    pub fn is_visible(&self, a: &K, b: &K) -> bool {
        if a == b {
            return false;
        }
        match (self.nodes.get(a), self.nodes.get(b)) {
            (Some(x), Some(y)) => pair_visible(&self.policy, &x.sel, &y.sel),
            _ => false,
        }
    }

    /// Node `k`'s viewpoint (None if absent).
    pub fn viewpoint<'a>(&'a self, k: &'a K) -> Option<Viewpoint<'a, K>> {
        self.nodes.get(k).map(|n| Viewpoint {
            key: k,
            sel: &n.sel,
            policy: &self.policy,
        })
    }

    /// The nodes `k` may see, O(n).
    pub fn visible_peers(&self, k: &K) -> Vec<K> {
        self.nodes
            .keys()
            .filter(|o| self.is_visible(k, o))
            .cloned()
            .collect()
    }

    /// The ids of all nodes.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.nodes.keys()
    }

    fn peer_nets(&self, z: &K, key: &SideKey) -> &[IpNet] {
        self.nodes
            .get(z)
            .and_then(|n| find(&n.sel, key))
            .map_or(&[], |e| e.nets.as_slice())
    }

    fn deny_free(&self, node: &LiveNode) -> bool {
        node.sel
            .iter()
            .all(|e| action(&self.policy, e.key.rule) == Some(Action::Allow))
    }

    /// `old` (the compile of unchanged node `k` before the changes since the last
    /// flush) with the changed nodes' old contributions taken out and their new
    /// ones put in: O(changed nodes × rules) instead of O(n). None when that is
    /// not exact (a removed prefix is not a host prefix, a routed subnet covers
    /// it, or an unchanged node contributes it too, or a rule of the node has
    /// `to` parts with their own ports); then compile from scratch.
    fn update_node(&self, k: &K, node: &LiveNode, old: &CompiledPolicy) -> Option<CompiledPolicy> {
        let rules = &self.policy.rules;
        let empty = Side::default();
        let mut outbound = Vec::new();
        let mut inbound = Vec::new();
        for mine in [FROM, TO] {
            let theirs_side = 1 - mine;
            let old_flows = if mine == FROM {
                &old.outbound
            } else {
                &old.inbound
            };
            for e in node.sel.iter().filter(|e| e.key.side == mine) {
                if restricted(&self.policy, e.key.rule) {
                    return None;
                }
                let Some(rule) = rules.get(e.key.rule as usize) else {
                    continue;
                };
                let tkey = SideKey {
                    rule: e.key.rule,
                    side: theirs_side,
                    restr: Restr::Plain,
                };
                let side = self.sides.get(&tkey).unwrap_or(&empty);
                let mut removed: Vec<IpNet> = Vec::new();
                let mut added: Vec<IpNet> = Vec::new();
                for (c, before) in &self.before {
                    if c == k {
                        continue;
                    }
                    if let Some(b) = before
                        && let Some(be) = find(b, &tkey)
                        && pair_visible(&self.policy, &node.sel, b)
                    {
                        removed.extend(be.nets.iter().copied());
                    }
                    if let Some(now) = self.nodes.get(c)
                        && let Some(ne) = find(&now.sel, &tkey)
                        && pair_visible(&self.policy, &node.sel, &now.sel)
                    {
                        added.extend(ne.nets.iter().copied());
                    }
                }
                for p in &removed {
                    if !is_host(p) || side.covered(p) {
                        return None;
                    }
                    // Contributors now, less the changed nodes among them: must be none.
                    let now = side.count.get(p).copied().unwrap_or(0);
                    let changed_now = self
                        .before
                        .keys()
                        .filter_map(|c| self.nodes.get(c))
                        .filter_map(|n| find(&n.sel, &tkey))
                        .filter(|ne| ne.nets.contains(p))
                        .count();
                    if usize::try_from(now).ok()? != changed_now {
                        return None;
                    }
                }
                let old_peers = old_flows
                    .iter()
                    .find(|f| f.rule.0 == e.key.rule)
                    .map_or(&[][..], |f| f.peers.as_slice());
                let mut peers = if removed.is_empty() {
                    old_peers.to_vec()
                } else {
                    subtract(old_peers, &removed)
                };
                if !added.is_empty() {
                    peers.extend(added);
                    peers = IpNet::aggregate(&peers);
                }
                if peers.is_empty() {
                    continue;
                }
                let flow = FlowRule {
                    rule: RuleId(e.key.rule),
                    action: rule.action,
                    proto: rule.proto,
                    ports: rule.ports.clone(),
                    local: e.nets.clone(),
                    peers,
                };
                if mine == FROM {
                    outbound.push(flow);
                } else {
                    inbound.push(flow);
                }
            }
        }
        Some(self.finish(k, node, outbound, inbound, Some(old)))
    }

    /// The compiled policy from its flow rules, with the node's SSH grants:
    /// `unchanged` (its compile before the changes since the last flush, when
    /// the node itself did not change) with the grants towards the changed
    /// nodes decided again, else decided afresh against the members opposite
    /// its `[[ssh]]` entries.
    fn finish(
        &self,
        k: &K,
        node: &LiveNode,
        outbound: Vec<FlowRule>,
        inbound: Vec<FlowRule>,
        unchanged: Option<&CompiledPolicy>,
    ) -> CompiledPolicy {
        let me = Party {
            facts: &node.facts,
            sel: &node.sel,
        };
        if let Some(old) = unchanged {
            let mut gone: BTreeSet<&str> = BTreeSet::new();
            let mut changed = Vec::new();
            for (c, name) in &self.before_names {
                gone.extend(name.as_deref());
                if let Some(n) = self.nodes.get(c).filter(|_| c != k) {
                    gone.insert(&n.facts.name);
                    changed.push(Party {
                        facts: &n.facts,
                        sel: &n.sel,
                    });
                }
            }
            let (ssh_inbound, ssh_outbound) = update_grants(&self.policy, me, old, &gone, &changed);
            return self.assemble(node, outbound, inbound, ssh_inbound, ssh_outbound);
        }
        let mut clients = BTreeSet::new();
        let mut servers = BTreeSet::new();
        for e in node.sel.iter().filter(|e| ssh_entry(&self.policy, e)) {
            let into = if e.key.side == FROM {
                &mut servers
            } else {
                &mut clients
            };
            for (_, s) in self.opposite_sides(&e.key) {
                into.extend(s.members.iter().filter(|z| *z != k));
            }
        }
        let party = |z: &K| {
            self.nodes.get(z).map(|n| Party {
                facts: &n.facts,
                sel: &n.sel,
            })
        };
        let (ssh_inbound, ssh_outbound) = grants(
            &self.policy,
            me,
            clients.into_iter().filter_map(party),
            servers.into_iter().filter_map(party),
        );
        self.assemble(node, outbound, inbound, ssh_inbound, ssh_outbound)
    }

    fn assemble(
        &self,
        node: &LiveNode,
        outbound: Vec<FlowRule>,
        inbound: Vec<FlowRule>,
        ssh_inbound: Vec<SshGrant>,
        ssh_outbound: Vec<SshGrant>,
    ) -> CompiledPolicy {
        CompiledPolicy {
            node: node.facts.name.clone(),
            rules: rule_infos(
                &self.policy,
                &outbound,
                &inbound,
                &ssh_inbound,
                &ssh_outbound,
            ),
            inbound,
            outbound,
            visible_peers: Vec::new(),
            ssh_inbound,
            ssh_outbound,
        }
    }

    fn compile_node(
        &self,
        k: &K,
        node: &LiveNode,
        unchanged: Option<&CompiledPolicy>,
    ) -> CompiledPolicy {
        let deny_free = self.deny_free(node);
        // Exact visibility, only needed when a deny rule picks the node.
        let visible: Option<BTreeSet<&K>> = (!deny_free).then(|| {
            let mut candidates = BTreeSet::new();
            for e in &node.sel {
                if action(&self.policy, e.key.rule) == Some(Action::Allow) {
                    for (_, s) in self.opposite_sides(&e.key) {
                        candidates.extend(s.members.iter());
                    }
                }
            }
            candidates
                .into_iter()
                .filter(|z| {
                    *z != k
                        && self
                            .nodes
                            .get(*z)
                            .is_some_and(|o| pair_visible(&self.policy, &node.sel, &o.sel))
                })
                .collect()
        });
        let mut outbound = Vec::new();
        let mut inbound = Vec::new();
        for mine in [FROM, TO] {
            for e in node.sel.iter().filter(|e| e.key.side == mine) {
                for (tkey, theirs) in self.opposite_sides(&e.key) {
                    let restr = if mine == FROM {
                        &tkey.restr
                    } else {
                        &e.key.restr
                    };
                    let Some(eff) = eff(&self.policy, e.key.rule, restr) else {
                        continue;
                    };
                    let own = find(&node.sel, tkey).map(|o| o.nets.as_slice());
                    let all = theirs.agg.as_deref().unwrap_or_default();
                    let peers = match (&visible, own) {
                        (None, None) => all.to_vec(),
                        (None, Some(own)) if own.iter().all(|n| theirs.sole(n)) => {
                            subtract(all, own)
                        }
                        _ => {
                            let nets: Vec<IpNet> = theirs
                                .members
                                .iter()
                                .filter(|z| {
                                    *z != k && visible.as_ref().is_none_or(|v| v.contains(z))
                                })
                                .flat_map(|z| self.peer_nets(z, tkey).iter().copied())
                                .collect();
                            IpNet::aggregate(&nets)
                        }
                    };
                    if peers.is_empty() {
                        continue;
                    }
                    let flow = FlowRule {
                        rule: RuleId(e.key.rule),
                        action: eff.action,
                        proto: eff.proto,
                        ports: eff.ports.to_vec(),
                        local: e.nets.clone(),
                        peers,
                    };
                    if mine == FROM {
                        outbound.push(flow);
                    } else {
                        inbound.push(flow);
                    }
                }
            }
        }
        self.finish(k, node, outbound, inbound, unchanged)
    }
}

impl<K: Ord + Clone> Transition<K> {
    /// Whether `a` and `b` could see each other before the flush that produced
    /// this transition; `now` is the state after it.
    pub fn was_visible(&self, now: &LivePolicy<K>, a: &K, b: &K) -> bool {
        if a == b {
            return false;
        }
        let (state, before) = match &self.0 {
            Before::Rebuilt(old) => (&**old, &old.before),
            Before::Nodes(before) => (now, before),
        };
        let sel = |k: &K| match before.get(k) {
            Some(s) => s.as_deref(),
            None => state.nodes.get(k).map(|n| n.sel.as_slice()),
        };
        match (sel(a), sel(b)) {
            (Some(x), Some(y)) => pair_visible(&state.policy, x, y),
            _ => false,
        }
    }

    /// Node `k`'s viewpoint before the flush that produced this transition
    /// (None if it did not exist); `now` is the state after it.
    pub fn viewpoint_before<'a>(
        &'a self,
        now: &'a LivePolicy<K>,
        k: &'a K,
    ) -> Option<Viewpoint<'a, K>> {
        let (state, before) = match &self.0 {
            Before::Rebuilt(old) => (&**old, &old.before),
            Before::Nodes(before) => (now, before),
        };
        let sel = match before.get(k) {
            Some(s) => s.as_deref(),
            None => state.nodes.get(k).map(|n| n.sel.as_slice()),
        }?;
        Some(Viewpoint {
            key: k,
            sel,
            policy: &state.policy,
        })
    }

    /// The nodes whose visibility to others may have changed: `Some(those)`, or
    /// `None` when the policy was replaced (anyone's may have).
    pub fn changed_nodes(&self) -> Option<impl Iterator<Item = &K>> {
        match &self.0 {
            Before::Rebuilt(_) => None,
            Before::Nodes(before) => Some(before.keys()),
        }
    }
}

#[cfg(test)]
mod subtract_tests {
    use super::*;
    use proptest::prelude::*;

    /// What `subtract` computed before it merged ranges itself: the cover of
    /// each piece, aggregated.
    fn reference(nets: &[IpNet], hole: &[IpNet]) -> Vec<IpNet> {
        let mut left: Vec<IpNet> = Vec::new();
        for n in nets {
            let mut pieces = vec![*n];
            for h in hole {
                pieces = pieces
                    .into_iter()
                    .flat_map(|p| {
                        if !p.contains(h) && !h.contains(&p) {
                            vec![p]
                        } else if h.contains(&p) {
                            Vec::new()
                        } else {
                            // Split p until h is cut out.
                            let mut keep = Vec::new();
                            let mut cur = p;
                            while cur != *h {
                                let Ok(mut halves) = cur.subnets(cur.prefix_len() + 1) else {
                                    break;
                                };
                                let (Some(a), Some(b)) = (halves.next(), halves.next()) else {
                                    break;
                                };
                                let (into, other) = if a.contains(h) { (a, b) } else { (b, a) };
                                keep.push(other);
                                cur = into;
                            }
                            keep
                        }
                    })
                    .collect();
            }
            left.extend(pieces);
        }
        IpNet::aggregate(&left)
    }

    fn net() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            (0u32..64, 24u8..=32).prop_map(|(a, l)| {
                let addr = std::net::Ipv4Addr::from(0x0a00_0000 | (a << 2));
                IpNet::new(addr.into(), l)
                    .map(|n| n.trunc())
                    .unwrap_or_default()
            }),
            (0u128..64, 120u8..=128).prop_map(|(a, l)| {
                let addr = std::net::Ipv6Addr::from((0xfd00u128 << 112) | (a << 1));
                IpNet::new(addr.into(), l)
                    .map(|n| n.trunc())
                    .unwrap_or_default()
            }),
        ]
    }

    proptest! {
        #[test]
        fn subtract_is_the_aggregate_of_what_is_left(
            nets in proptest::collection::vec(net(), 0..12),
            hole in proptest::collection::vec(net(), 0..4),
        ) {
            prop_assert_eq!(subtract(&nets, &hole), reference(&nets, &hole));
        }
    }

    #[test]
    fn a_host_cut_from_a_sequential_block_leaves_its_exact_cover() {
        let all: Vec<IpNet> = vec![
            "10.0.0.0/22".parse().unwrap(),
            "fd00::/118".parse().unwrap(),
        ];
        let own: Vec<IpNet> = vec![
            "10.0.1.7/32".parse().unwrap(),
            "fd00::107/128".parse().unwrap(),
        ];
        let got = subtract(&all, &own);
        assert_eq!(got, reference(&all, &own));
        assert_eq!(got.len(), 10 + 10);
    }
}
