//! An in-memory cluster of replication cores for tests: a network the test controls
//! message by message (deliver, drop, duplicate, reorder, delay, partition), disks that
//! lose whatever was not yet persisted when their node crashes, and an observer that checks
//! Raft's safety properties after every step.
//!
//! Every choice comes from the test (or proptest's schedule): there is no hidden randomness.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use bytes::Bytes;
use chorus::replication::{
    Entry, LogIndex, LogPosition, Membership, MembershipChange, MemoryStorage, Message, MessageBody, NodeId, Payload,
    ReadOutcome, Ready, Replica, ReplicaConfig, Role, SnapshotMeta, SnapshotTransfer, Storage, Term,
};

/// One simulated machine.
pub struct Node {
    /// `None` while crashed.
    pub replica: Option<Replica<MemoryStorage>>,
    /// The disk of a crashed node (a running node's disk lives inside its replica).
    pub crashed_storage: Option<MemoryStorage>,
    /// A `Ready` whose messages that need nothing durable have left, but whose state is not
    /// yet durable: a crash now loses it.
    pub pending: Option<Ready>,
    /// The state machine: every applied entry, in order. It survives crashes (it stands for
    /// a durable state machine such as the chat database).
    pub applied: Vec<Entry>,
    /// Every snapshot this node took or installed, by last index: the state machine's
    /// entries through it. Durable, like the snapshot files of a real node.
    pub snapshots: BTreeMap<LogIndex, Vec<Entry>>,
    /// Snapshot data a leader's transfer staged here, waiting for the `Ready` that
    /// installs it (the transport stages it before it hands over the message).
    pub staged: Option<(SnapshotMeta, Vec<Entry>)>,
    pub restarts: u64,
}

impl Node {
    pub fn applied_index(&self) -> LogIndex {
        self.applied.last().map_or(0, |e| e.index)
    }

    pub fn storage(&self) -> &MemoryStorage {
        match &self.replica {
            Some(replica) => replica.storage(),
            None => self.crashed_storage.as_ref().expect("a crashed node keeps its disk"),
        }
    }

    pub fn is_up(&self) -> bool {
        self.replica.is_some()
    }
}

/// A violated invariant or a stuck cluster, with the trace that led to it.
#[derive(Debug)]
pub struct Failure(pub String);

pub struct Cluster {
    pub nodes: BTreeMap<NodeId, Node>,
    /// The cluster's first configuration, which every node starts from (a spare is a node
    /// outside it, waiting to be added).
    initial: Membership,
    pub config: ReplicaConfig,
    seed: u64,
    /// Messages in flight, in send order; tests pick which to deliver.
    pub network: Vec<Message>,
    /// Directed links that drop everything.
    blocked: BTreeSet<(NodeId, NodeId)>,
    pub now_ms: u64,
    // Observer state.
    leaders_by_term: BTreeMap<Term, NodeId>,
    /// Every entry any node applied, by index: all must agree.
    pub committed: BTreeMap<LogIndex, Entry>,
    /// Reads asked for: (node, context) -> the highest index known committed when asked.
    reads_asked: BTreeMap<(NodeId, u64), LogIndex>,
    pub reads_confirmed: Vec<(NodeId, u64, LogIndex)>,
    next_read_context: u64,
    /// Counts of what happened, for tests that assert on efficiency.
    pub delivered: BTreeMap<&'static str, u64>,
    pub append_rejections_by_follower: BTreeMap<NodeId, u64>,
    /// Snapshots installed on followers from a leader.
    pub snapshots_installed: u64,
    /// The node the last delivered message went to.
    pub last_receiver: Option<NodeId>,
    /// Forged messages were injected: Raft promises no safety against them (they are
    /// Byzantine), so the cross-node safety checks are off; each node's own invariants
    /// (its assertions, applying in order) and liveness are still checked.
    pub forgeries_injected: bool,
    trace: Vec<String>,
}

impl Cluster {
    /// A fresh cluster of `size` empty nodes with ids 1..=size.
    pub fn new(size: u64, config: ReplicaConfig, seed: u64) -> Self {
        Self::with_spares(size, 0, config, seed)
    }

    /// A fresh cluster of `size` voters with ids 1..=size, and `spares` more empty nodes
    /// (the next ids) running outside the configuration until they are added.
    pub fn with_spares(size: u64, spares: u64, config: ReplicaConfig, seed: u64) -> Self {
        let storages = (1..=size + spares).map(|id| (id, MemoryStorage::new())).collect();
        Self::start_with(storages, Membership::with_voters(1..=size), config, seed)
    }

    /// A cluster whose nodes start from the given disks (for the dissertation's figures).
    pub fn with_storages(storages: BTreeMap<NodeId, MemoryStorage>, config: ReplicaConfig, seed: u64) -> Self {
        let initial = Membership::with_voters(storages.keys().copied());
        Self::start_with(storages, initial, config, seed)
    }

    fn start_with(
        storages: BTreeMap<NodeId, MemoryStorage>,
        initial: Membership,
        config: ReplicaConfig,
        seed: u64,
    ) -> Self {
        let mut cluster = Self {
            nodes: BTreeMap::new(),
            initial,
            config,
            seed,
            network: Vec::new(),
            blocked: BTreeSet::new(),
            now_ms: 0,
            leaders_by_term: BTreeMap::new(),
            committed: BTreeMap::new(),
            reads_asked: BTreeMap::new(),
            reads_confirmed: Vec::new(),
            next_read_context: 1,
            delivered: BTreeMap::new(),
            append_rejections_by_follower: BTreeMap::new(),
            snapshots_installed: 0,
            last_receiver: None,
            forgeries_injected: false,
            trace: Vec::new(),
        };
        for (id, storage) in storages {
            cluster.nodes.insert(
                id,
                Node {
                    replica: None,
                    crashed_storage: Some(storage),
                    pending: None,
                    applied: Vec::new(),
                    snapshots: BTreeMap::new(),
                    staged: None,
                    restarts: 0,
                },
            );
            cluster.start(id);
        }
        cluster
    }

    /// Every node, member or not.
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// The configuration in effect once every committed entry is applied: the last one
    /// among the entries any node applied (all agree on them), or the first.
    pub fn committed_membership(&self) -> &Membership {
        let logged = self.committed.values().rev().find_map(|entry| match &entry.payload {
            Payload::Membership(membership) => Some(membership),
            _ => None,
        });
        logged.unwrap_or(&self.initial)
    }

    pub fn replica(&self, id: NodeId) -> &Replica<MemoryStorage> {
        self.nodes[&id].replica.as_ref().unwrap_or_else(|| panic!("node {id} is down"))
    }

    pub fn replica_mut(&mut self, id: NodeId) -> &mut Replica<MemoryStorage> {
        self.nodes.get_mut(&id).unwrap().replica.as_mut().unwrap_or_else(|| panic!("node {id} is down"))
    }

    pub fn note(&mut self, line: String) {
        self.trace.push(format!("[{:>6} ms] {line}", self.now_ms));
    }

    /// The last `lines` lines of what happened.
    pub fn trace_tail(&self, lines: usize) -> String {
        let start = self.trace.len().saturating_sub(lines);
        let mut out = String::new();
        for line in &self.trace[start..] {
            let _ = writeln!(out, "  {line}");
        }
        out
    }

    fn fail(&self, what: String) -> Failure {
        Failure(format!("{what}\nlast steps:\n{}", self.trace_tail(60)))
    }

    // ---- Node lifecycle ------------------------------------------------------------

    fn start(&mut self, id: NodeId) {
        let now = self.now_ms;
        let node = self.nodes.get_mut(&id).unwrap();
        let storage = node.crashed_storage.take().expect("node is down");
        let rng_seed = self.seed.wrapping_mul(31).wrapping_add(node.restarts);
        let replica =
            Replica::new(id, self.initial.clone(), self.config.clone(), storage, node.applied_index(), rng_seed, now)
                .expect("replica starts");
        node.replica = Some(replica);
        self.collect(id);
    }

    /// The process dies: everything not yet durable is gone.
    pub fn crash(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).unwrap();
        let Some(replica) = node.replica.take() else { return };
        let lost = node.pending.take().map_or(0, |ready| ready.entries.len());
        node.crashed_storage = Some(replica.into_storage());
        node.restarts += 1;
        self.note(format!("crash {id} (unpersisted entries lost: {lost})"));
    }

    pub fn restart(&mut self, id: NodeId) {
        if self.nodes[&id].is_up() {
            return;
        }
        self.note(format!("restart {id}"));
        self.start(id);
    }

    // ---- Ready handling --------------------------------------------------------------

    /// Takes the node's next `Ready` if it has none pending: its immediate messages leave,
    /// the rest waits for `persist`.
    pub fn collect(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).unwrap();
        let Some(replica) = node.replica.as_mut() else { return };
        if node.pending.is_some() || !replica.has_ready() {
            return;
        }
        let mut ready = replica.ready().expect("memory storage does not fail");
        if let Some(soft) = ready.soft_state {
            let line = format!("node {id} is {:?} in term {} (leader {:?})", soft.role, soft.term, soft.leader);
            self.note(line);
        }
        let messages = std::mem::take(&mut ready.messages);
        self.network.extend(messages);
        self.nodes.get_mut(&id).unwrap().pending = Some(ready);
    }

    /// Makes the node's pending `Ready` durable, then sends what depended on it, applies
    /// what is committed, and advances.
    pub fn persist(&mut self, id: NodeId) -> Result<(), Failure> {
        let node = self.nodes.get_mut(&id).unwrap();
        let (Some(replica), Some(ready)) = (node.replica.as_mut(), node.pending.take()) else { return Ok(()) };
        if let Some(meta) = &ready.snapshot {
            // Installed whole, state machine and log together, before anything else.
            let Some((staged, data)) = node.staged.take().filter(|(staged, _)| staged == meta) else {
                return Err(self.fail(format!("node {id} was asked to install {meta:?}, which was never staged")));
            };
            replica.storage_mut().install_snapshot(staged);
            node.applied = data.clone();
            node.snapshots.insert(meta.last_included.index, data.clone());
            self.note(format!("node {id} installed the snapshot through {}", meta.last_included.index));
            self.snapshots_installed += 1;
            for entry in data {
                self.check_against_committed(id, entry)?;
            }
        }
        let node = self.nodes.get_mut(&id).unwrap();
        let replica = node.replica.as_mut().expect("up");
        if let Some(hard_state) = ready.hard_state {
            replica.storage_mut().set_hard_state(hard_state);
        }
        replica.storage_mut().append(ready.truncate_from, &ready.entries);
        self.network.extend(ready.messages_after_persist);
        for entry in ready.committed_entries {
            self.apply(id, entry)?;
        }
        for read in ready.reads {
            self.read_done(id, read)?;
        }
        self.replica_mut(id).advance().expect("memory storage does not fail");
        self.collect(id);
        Ok(())
    }

    pub fn persist_all(&mut self) -> Result<(), Failure> {
        for id in self.ids() {
            self.persist(id)?;
        }
        Ok(())
    }

    fn apply(&mut self, id: NodeId, entry: Entry) -> Result<(), Failure> {
        let node = self.nodes.get_mut(&id).unwrap();
        if entry.index != node.applied_index() + 1 {
            let expected = node.applied_index() + 1;
            return Err(self.fail(format!("node {id} applied index {} but expected {expected}", entry.index)));
        }
        node.applied.push(entry.clone());
        self.check_against_committed(id, entry)
    }

    /// State Machine Safety for one applied entry: every node applies the same at an index.
    fn check_against_committed(&mut self, id: NodeId, entry: Entry) -> Result<(), Failure> {
        if self.forgeries_injected {
            return Ok(());
        }
        match self.committed.get(&entry.index) {
            Some(first) if *first != entry => Err(self.fail(format!(
                "State Machine Safety: node {id} applied {entry:?} at index {} where another node applied {first:?}",
                entry.index
            ))),
            Some(_) => Ok(()),
            None => {
                self.committed.insert(entry.index, entry);
                Ok(())
            }
        }
    }

    fn read_done(&mut self, id: NodeId, read: ReadOutcome) -> Result<(), Failure> {
        let Some(floor) = self.reads_asked.remove(&(id, read.context)) else {
            return Err(self.fail(format!("node {id} answered read {} that was never asked", read.context)));
        };
        match read.result {
            Ok(index) if index < floor => Err(self.fail(format!(
                "linearizability: read {} on node {id} confirmed at index {index}, but {floor} was already committed when it was asked",
                read.context
            ))),
            Ok(index) => {
                self.note(format!("read {} on node {id} confirmed at index {index}", read.context));
                self.reads_confirmed.push((id, read.context, index));
                Ok(())
            }
            Err(_) => {
                self.note(format!("read {} on node {id} aborted", read.context));
                Ok(())
            }
        }
    }

    // ---- Inputs ----------------------------------------------------------------------

    /// Time passes: pending state is persisted (disks are faster than timers), and every
    /// live node ticks.
    pub fn advance(&mut self, ms: u64) -> Result<(), Failure> {
        self.persist_all()?;
        self.now_ms += ms;
        for id in self.ids() {
            if self.nodes[&id].is_up() {
                let now = self.now_ms;
                self.replica_mut(id).tick(now).expect("memory storage does not fail");
                self.collect(id);
            }
        }
        Ok(())
    }

    pub fn propose(&mut self, id: NodeId, value: &str) -> bool {
        if !self.nodes[&id].is_up() {
            return false;
        }
        let result = self.replica_mut(id).propose(Bytes::from(value.to_owned()));
        self.note(format!("propose {value:?} on node {id}: {result:?}"));
        self.collect(id);
        result.is_ok()
    }

    pub fn read(&mut self, id: NodeId) -> Option<u64> {
        if !self.nodes[&id].is_up() {
            return None;
        }
        let context = self.next_read_context;
        self.next_read_context += 1;
        // Everything any node knows committed now must be visible to this read.
        let floor = self.max_known_commit();
        let result = self.replica_mut(id).read_index(context);
        self.note(format!("read {context} on node {id}: {result:?}"));
        if result.is_ok() {
            self.reads_asked.insert((id, context), floor);
        }
        self.collect(id);
        result.ok().map(|()| context)
    }

    /// The node snapshots its state machine at its applied index and compacts its log
    /// through `keep` entries before it (as the runtime does once the log has grown).
    pub fn compact(&mut self, id: NodeId, keep: u64) {
        let node = self.nodes.get_mut(&id).unwrap();
        let Some(replica) = node.replica.as_mut() else { return };
        let applied = node.applied.last().map_or(0, |e| e.index);
        let storage = replica.storage();
        let taken = storage.snapshot().expect("memory storage does not fail").map_or(0, |s| s.last_included.index);
        if applied <= taken {
            return;
        }
        let term = storage.term(applied).expect("memory storage does not fail").expect("applied entries are stored");
        let membership = replica.membership_at(applied).expect("the applied index is past the installed snapshot");
        let meta = SnapshotMeta { last_included: LogPosition { term, index: applied }, membership };
        let through =
            applied.saturating_sub(keep).max(storage.first_index().expect("memory storage does not fail") - 1);
        replica.storage_mut().record_snapshot(meta);
        replica.storage_mut().compact(through);
        node.snapshots.insert(applied, node.applied.clone());
        self.note(format!("node {id} took a snapshot through {applied} and compacted through {through}"));
    }

    /// Tells the sender of a snapshot how its transfer ended, as the transport does.
    fn report_snapshot(&mut self, message: &Message, transfer: SnapshotTransfer) {
        if !matches!(message.body, MessageBody::InstallSnapshot { .. }) {
            return;
        }
        if let Some(sender) = self.nodes.get_mut(&message.from).and_then(|n| n.replica.as_mut()) {
            sender.report_snapshot(message.to, transfer);
            self.collect(message.from);
        }
    }

    /// Proposes a membership change on `id` (the context names the change, so that every
    /// configuration is told apart in the trace); returns whether it was appended.
    pub fn change_membership(&mut self, id: NodeId, change: MembershipChange) -> bool {
        if !self.nodes[&id].is_up() {
            return false;
        }
        let context = Bytes::from(format!("{change:?}"));
        let result = self.replica_mut(id).propose_membership(change, context);
        self.note(format!("membership change {change:?} on node {id}: {result:?}"));
        self.collect(id);
        result.is_ok()
    }

    pub fn transfer(&mut self, id: NodeId, to: NodeId) {
        if !self.nodes[&id].is_up() {
            return;
        }
        let result = self.replica_mut(id).transfer_leadership(to);
        self.note(format!("transfer leadership {id} -> {to}: {result:?}"));
        self.collect(id);
    }

    fn max_known_commit(&self) -> LogIndex {
        let replicas = self.nodes.values().filter_map(|n| n.replica.as_ref()).map(|r| r.commit_index());
        replicas.chain(self.committed.keys().copied()).max().unwrap_or(0)
    }

    // ---- Network ---------------------------------------------------------------------

    /// Delivers the in-flight message at `position`. Messages over a blocked link, or to a
    /// node that is down, are lost.
    pub fn deliver(&mut self, position: usize) -> Result<(), Failure> {
        if self.network.is_empty() {
            return Ok(());
        }
        let message = self.network.remove(position % self.network.len());
        let (from, to) = (message.from, message.to);
        if self.blocked.contains(&(from, to)) || !self.nodes.get(&to).is_some_and(Node::is_up) {
            self.note(format!("lost {}", describe(&message)));
            self.report_snapshot(&message, SnapshotTransfer::Failed);
            return Ok(());
        }
        if let MessageBody::InstallSnapshot { snapshot } = &message.body {
            // The transport streams the sender's snapshot named by the message and stages
            // it at the receiver before handing the message over.
            let Some(data) = self.nodes[&from].snapshots.get(&snapshot.last_included.index).cloned() else {
                return Err(self.fail(format!("node {from} sent a snapshot it never took: {snapshot:?}")));
            };
            self.nodes.get_mut(&to).unwrap().staged = Some((snapshot.clone(), data));
        }
        self.note(format!("deliver {}", describe(&message)));
        *self.delivered.entry(message.body.kind()).or_default() += 1;
        if let MessageBody::AppendResponse { result: chorus::replication::AppendResult::Rejected { .. }, .. } =
            message.body
        {
            *self.append_rejections_by_follower.entry(from).or_default() += 1;
        }
        self.last_receiver = Some(to);
        self.replica_mut(to).step(message.clone()).expect("memory storage does not fail");
        self.collect(to);
        self.report_snapshot(&message, SnapshotTransfer::Delivered);
        Ok(())
    }

    /// Delivers everything in flight now (not what that produces), in send order.
    pub fn deliver_all(&mut self) -> Result<(), Failure> {
        for _ in 0..self.network.len() {
            self.deliver(0)?;
        }
        Ok(())
    }

    /// Delivers (in send order) the in-flight messages matching `wanted`, once each.
    pub fn deliver_matching(&mut self, wanted: impl Fn(&Message) -> bool) -> Result<usize, Failure> {
        let mut delivered = 0;
        let mut position = 0;
        let mut remaining = self.network.len();
        while remaining > 0 {
            remaining -= 1;
            if wanted(&self.network[position]) {
                self.deliver(position)?;
                delivered += 1;
            } else {
                position += 1;
            }
        }
        Ok(delivered)
    }

    /// Removes the in-flight messages matching `unwanted`, as a lossy network would.
    pub fn drop_matching(&mut self, unwanted: impl Fn(&Message) -> bool) -> usize {
        let (dropped, kept): (Vec<Message>, Vec<Message>) =
            std::mem::take(&mut self.network).into_iter().partition(unwanted);
        self.network = kept;
        for message in &dropped {
            self.report_snapshot(message, SnapshotTransfer::Failed);
        }
        dropped.len()
    }

    pub fn drop_message(&mut self, position: usize) {
        if !self.network.is_empty() {
            let message = self.network.remove(position % self.network.len());
            self.note(format!("drop {}", describe(&message)));
            self.report_snapshot(&message, SnapshotTransfer::Failed);
        }
    }

    pub fn duplicate(&mut self, position: usize) {
        if !self.network.is_empty() {
            let message = self.network[position % self.network.len()].clone();
            self.note(format!("duplicate {}", describe(&message)));
            self.network.push(message);
        }
    }

    /// Cuts every link between `side` and the rest, both ways.
    pub fn partition(&mut self, side: &BTreeSet<NodeId>) {
        self.blocked.clear();
        for &a in side {
            for b in self.ids() {
                if !side.contains(&b) {
                    self.blocked.insert((a, b));
                    self.blocked.insert((b, a));
                }
            }
        }
        self.note(format!("partition {side:?} | rest"));
    }

    pub fn cut_one_way(&mut self, from: NodeId, to: NodeId) {
        self.blocked.insert((from, to));
        self.note(format!("cut {from} -> {to}"));
    }

    pub fn heal(&mut self) {
        self.blocked.clear();
        self.note("heal".to_owned());
    }

    /// Lets the cluster run with a healthy network for `ms`, in heartbeat-sized steps.
    pub fn run_for(&mut self, ms: u64) -> Result<(), Failure> {
        let step = self.config.heartbeat_interval_ms / 2;
        let mut elapsed = 0;
        while elapsed < ms {
            self.settle()?;
            self.advance(step)?;
            elapsed += step;
        }
        self.settle()
    }

    /// Persists and delivers until nothing more happens without time passing.
    pub fn settle(&mut self) -> Result<(), Failure> {
        for _ in 0..1000 {
            self.persist_all()?;
            if self.network.is_empty() && self.nodes.values().all(|n| n.pending.is_none()) {
                return Ok(());
            }
            self.deliver_all()?;
            self.check()?;
        }
        Err(self.fail("the cluster did not settle within 1000 rounds".to_owned()))
    }

    // ---- Queries ---------------------------------------------------------------------

    /// The live node that is leader in the highest term any live node knows, if any.
    pub fn leader(&self) -> Option<NodeId> {
        let live = self.nodes.iter().filter_map(|(id, n)| n.replica.as_ref().map(|r| (*id, r)));
        let highest_term = live.clone().map(|(_, r)| r.term()).max()?;
        live.filter(|(_, r)| r.role() == Role::Leader && r.term() == highest_term).map(|(id, _)| id).next()
    }

    /// Runs until a leader exists; returns it.
    pub fn elect(&mut self) -> Result<NodeId, Failure> {
        for _ in 0..400 {
            if let Some(leader) = self.leader() {
                return Ok(leader);
            }
            self.settle()?;
            self.advance(self.config.heartbeat_interval_ms)?;
        }
        Err(self.fail("no leader within 400 heartbeats".to_owned()))
    }

    /// The full log (durable and not) of a live node.
    pub fn log_of(&self, id: NodeId) -> Vec<Entry> {
        let replica = self.replica(id);
        replica.entries(1, replica.last_index() + 1).expect("memory storage does not fail")
    }

    pub fn durable_log_of(&self, id: NodeId) -> Vec<Entry> {
        self.nodes[&id].storage().all_entries().cloned().collect()
    }

    pub fn applied_commands(&self, id: NodeId) -> Vec<String> {
        self.nodes[&id]
            .applied
            .iter()
            .filter_map(|e| match &e.payload {
                Payload::Command(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
                Payload::Noop | Payload::Membership(_) => None,
            })
            .collect()
    }

    // ---- The observer ----------------------------------------------------------------

    /// Raft's safety properties (§3.6.3), checked across the whole cluster.
    pub fn check(&mut self) -> Result<(), Failure> {
        if self.forgeries_injected {
            return Ok(());
        }
        self.check_election_safety()?;
        self.check_log_matching()?;
        self.check_leader_completeness()?;
        self.check_committed_durable()
    }

    /// Election Safety: at most one leader per term.
    fn check_election_safety(&mut self) -> Result<(), Failure> {
        let leaders: Vec<(NodeId, Term)> = self
            .nodes
            .iter()
            .filter_map(|(id, n)| n.replica.as_ref().filter(|r| r.role() == Role::Leader).map(|r| (*id, r.term())))
            .collect();
        for (id, term) in leaders {
            match self.leaders_by_term.get(&term) {
                Some(&other) if other != id => {
                    return Err(self.fail(format!("Election Safety: nodes {other} and {id} both led term {term}")));
                }
                _ => {
                    self.leaders_by_term.insert(term, id);
                }
            }
        }
        Ok(())
    }

    /// Log Matching: logs with an entry of the same index and term agree on everything up
    /// to it.
    fn check_log_matching(&self) -> Result<(), Failure> {
        let logs: Vec<(NodeId, Vec<Entry>)> =
            self.nodes.iter().filter(|(_, n)| n.is_up()).map(|(id, _)| (*id, self.log_of(*id))).collect();
        for (i, (a, log_a)) in logs.iter().enumerate() {
            for (b, log_b) in &logs[i + 1..] {
                // Over the indexes both still hold (compaction drops a prefix), find the last
                // where both have the same term; everything before it must match.
                let (Some(first_a), Some(first_b)) = (log_a.first(), log_b.first()) else { continue };
                let low = first_a.index.max(first_b.index);
                // (One log may end before the other starts: nothing to compare then.)
                let a_from = log_a.get((low - first_a.index) as usize..).unwrap_or_default();
                let b_from = log_b.get((low - first_b.index) as usize..).unwrap_or_default();
                let common = a_from.len().min(b_from.len());
                if let Some(last_same) = (0..common).rev().find(|&k| a_from[k].term == b_from[k].term)
                    && a_from[..=last_same] != b_from[..=last_same]
                {
                    return Err(self.fail(format!(
                        "Log Matching: nodes {a} and {b} both have index {} of term {} but differ before it",
                        a_from[last_same].index, a_from[last_same].term
                    )));
                }
            }
        }
        Ok(())
    }

    /// Leader Completeness: the leader of the newest term holds every committed entry. (A
    /// deposed leader of an older term that has not noticed yet may lack entries committed
    /// after it; that is allowed.)
    fn check_leader_completeness(&self) -> Result<(), Failure> {
        let newest_term = self
            .nodes
            .values()
            .map(|n| match &n.replica {
                Some(replica) => replica.term(),
                None => n.storage().hard_state().expect("memory storage does not fail").term,
            })
            .max()
            .unwrap_or(0);
        for (id, node) in &self.nodes {
            let Some(replica) = node.replica.as_ref().filter(|r| r.role() == Role::Leader && r.term() == newest_term)
            else {
                continue;
            };
            let first = replica.first_index().expect("memory storage does not fail");
            for (index, entry) in &self.committed {
                // A compacted entry is held in the leader's snapshot, which must have it.
                let held = if *index < first {
                    let snapshot = node.snapshots.range(index..).next().map(|(_, data)| data);
                    snapshot.and_then(|data| data.get(*index as usize - 1)).cloned()
                } else {
                    replica.entries(*index, index + 1).expect("memory storage does not fail").first().cloned()
                };
                if held.as_ref() != Some(entry) {
                    return Err(self.fail(format!(
                        "Leader Completeness: leader {id} of term {} lacks committed entry {entry:?}",
                        replica.term()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Nothing committed is ever lost: every committed entry is on the disks (in the log or
    /// the latest durable snapshot) of enough voters of the committed configuration that
    /// every majority of it includes one, so it survives any crash of a minority (and,
    /// with a restart, of everyone) and no leader can be elected without it. That is a
    /// majority for an odd number of voters, and half for an even one: an entry committed
    /// by a majority of the next configuration (one voter more, §4.1) may be on only half
    /// of the current one, which still meets every majority of it.
    fn check_committed_durable(&self) -> Result<(), Failure> {
        let voters = &self.committed_membership().voters;
        let needed = voters.len() - (voters.len() / 2 + 1) + 1;
        for (index, entry) in &self.committed {
            let holds = |id: &&NodeId| {
                let storage = self.nodes[*id].storage();
                let snapshot = storage.snapshot().ok().flatten().map_or(0, |s| s.last_included.index);
                *index <= snapshot || storage.term(*index).ok().flatten() == Some(entry.term)
            };
            let holders = voters.iter().filter(holds).count();
            if holders < needed {
                return Err(self.fail(format!(
                    "Durability: committed entry {index} (term {}) is on {holders} disks of the voters {voters:?}, too few to meet every majority of them",
                    entry.term
                )));
            }
        }
        Ok(())
    }

    /// Whether every member of the committed configuration applied `command`.
    pub fn applied_by_members(&self, command: &str) -> bool {
        self.committed_membership().members().all(|id| self.applied_commands(id).iter().any(|c| c == command))
    }
}

/// A message as a trace line shows it.
pub fn describe(message: &Message) -> String {
    let body = match &message.body {
        MessageBody::PreVoteRequest { last_log, leadership_transfer } => {
            format!("PreVoteRequest(last {}/{}, transfer {leadership_transfer})", last_log.index, last_log.term)
        }
        MessageBody::PreVoteResponse { granted } => format!("PreVoteResponse(granted {granted})"),
        MessageBody::VoteRequest { last_log, leadership_transfer } => {
            format!("VoteRequest(last {}/{}, transfer {leadership_transfer})", last_log.index, last_log.term)
        }
        MessageBody::VoteResponse { granted } => format!("VoteResponse(granted {granted})"),
        MessageBody::AppendRequest { previous, entries, leader_commit, heartbeat_round, transfer_target } => format!(
            "AppendRequest(after {}/{}, {} entries, commit {leader_commit}, round {heartbeat_round}, transfer {transfer_target:?})",
            previous.index,
            previous.term,
            entries.len()
        ),
        MessageBody::AppendResponse { result, heartbeat_round } => {
            format!("AppendResponse({result:?}, round {heartbeat_round})")
        }
        MessageBody::TimeoutNow { last_log } => format!("TimeoutNow(last {}/{})", last_log.index, last_log.term),
        MessageBody::InstallSnapshot { snapshot } => {
            format!("InstallSnapshot(through {}/{})", snapshot.last_included.index, snapshot.last_included.term)
        }
    };
    format!("{} -> {} term {}: {body}", message.from, message.to, message.term)
}

/// A log of `terms[i]` at index i + 1, each entry a command naming its position.
pub fn log_with_terms(terms: &[Term]) -> Vec<Entry> {
    terms
        .iter()
        .enumerate()
        .map(|(i, &term)| Entry {
            term,
            index: i as LogIndex + 1,
            payload: Payload::Command(Bytes::from(format!("{}@{term}", i + 1))),
        })
        .collect()
}

/// Small limits, so that batching, pipelining and flow control matter even in short runs.
pub fn tight_config() -> ReplicaConfig {
    ReplicaConfig {
        heartbeat_interval_ms: 100,
        election_timeout_min_ms: 1000,
        election_timeout_max_ms: 2000,
        append_entries_max: 3,
        append_bytes_max: 256,
        inflight_appends_max: 2,
    }
}
