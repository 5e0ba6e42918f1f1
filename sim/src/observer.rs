//! The global observer: sees every node's role changes and applied entries, and checks
//! Raft's invariants across the whole cluster as the run goes (checker 6): at most one
//! leader per term, and every node applies the same entry at each index.

use std::collections::BTreeMap;
use std::sync::Mutex;

use chorus::replication::{Entry, LogIndex, NodeId, Payload, Role, Term};
use chorus::runtime::ReplicationObserver;
use sha2::{Digest, Sha256};

use crate::check::Violation;

#[derive(Default)]
struct State {
    leaders: BTreeMap<Term, NodeId>,
    /// What was applied at each index first: (term, digest of the payload, node).
    applied: BTreeMap<LogIndex, (Term, [u8; 32], NodeId)>,
    /// Each node's last reported term and role.
    roles: BTreeMap<NodeId, (Term, Role)>,
    /// Snapshots installed from a leader, per node.
    snapshots_installed: BTreeMap<NodeId, u64>,
    violations: Vec<Violation>,
}

#[derive(Default)]
pub struct GlobalObserver {
    state: Mutex<State>,
}

impl GlobalObserver {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn violations(&self) -> Vec<Violation> {
        self.lock().violations.clone()
    }

    /// The node that last reported leading the newest term anyone reported, if it still does.
    pub fn leader(&self) -> Option<NodeId> {
        let state = self.lock();
        let newest = state.roles.values().map(|(term, _)| *term).max()?;
        state.roles.iter().find(|(_, (term, role))| *term == newest && *role == Role::Leader).map(|(id, _)| *id)
    }

    /// A node restarted: it reports afresh.
    pub fn forget_role(&self, node: NodeId) {
        self.lock().roles.remove(&node);
    }

    /// Snapshots installed from a leader, in all.
    pub fn snapshots_installed(&self) -> u64 {
        self.lock().snapshots_installed.values().sum()
    }

    /// How many entries were applied anywhere (the highest index).
    pub fn applied_max(&self) -> LogIndex {
        self.lock().applied.keys().next_back().copied().unwrap_or(0)
    }
}

impl ReplicationObserver for GlobalObserver {
    fn role_changed(&self, node: NodeId, term: Term, role: Role) {
        let mut state = self.lock();
        state.roles.insert(node, (term, role));
        if role != Role::Leader {
            return;
        }
        match state.leaders.get(&term) {
            Some(&other) if other != node => {
                let detail = format!("nodes {other} and {node} both led term {term}");
                state.violations.push(Violation { checker: "raft: election safety", detail });
            }
            _ => {
                state.leaders.insert(term, node);
            }
        }
    }

    fn snapshot_installed(&self, node: NodeId, index: LogIndex) {
        let mut state = self.lock();
        *state.snapshots_installed.entry(node).or_default() += 1;
        // A snapshot holds applied state: some node applied every entry it covers.
        let applied_max = state.applied.keys().next_back().copied().unwrap_or(0);
        if index > applied_max {
            let detail =
                format!("node {node} installed a snapshot through {index}, but no node applied beyond {applied_max}");
            state.violations.push(Violation { checker: "raft: state machine safety", detail });
        }
    }

    fn entry_applied(&self, node: NodeId, entry: &Entry) {
        let digest: [u8; 32] = match &entry.payload {
            Payload::Noop => [0; 32],
            Payload::Command(bytes) => Sha256::digest(bytes).into(),
            Payload::Membership(membership) => Sha256::digest(format!("{membership:?}")).into(),
        };
        let mut state = self.lock();
        match state.applied.get(&entry.index) {
            Some(&(term, first, first_node)) if (term, first) != (entry.term, digest) => {
                let detail = format!(
                    "node {node} applied an entry of term {} at index {}, where node {first_node} applied one of term {term}",
                    entry.term, entry.index
                );
                state.violations.push(Violation { checker: "raft: state machine safety", detail });
            }
            Some(_) => {}
            None => {
                state.applied.insert(entry.index, (entry.term, digest, node));
            }
        }
    }
}
