//! The nemesis: faults chosen by the seed, applied over the run, and recorded as a
//! timeline that is printed when a run fails or is replayed.
//!
//! Two families. *Available*: at most two of the five nodes are faulty at any moment
//! (killed or stopped, cut off, on the minority side of a partition, or with a corrupt or
//! wiped disk) and the rest are connected, so every operation must complete. *Safety-only*:
//! anything goes, including every node down at once; operations may fail, but nothing may
//! be wrong. In both, each node's clocks are wrong in their own ways (offset, jumps forward
//! and back, drift), which must change nothing: no decision depends on a clock reading.

use std::collections::BTreeSet;
use std::time::Duration;

use madsim::net::NetSim;
use rand::Rng;
use rand::rngs::StdRng;

use crate::cluster::{SimCluster, StorageModel};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Available,
    SafetyOnly,
}

/// At most this many nodes faulty at once in the available family.
const AVAILABLE_FAULTY_MAX: usize = 2;

pub struct Nemesis {
    family: Family,
    rng: StdRng,
    start: tokio::time::Instant,
    pub timeline: Vec<(Duration, String)>,
    killed: BTreeSet<u64>,
    /// Nodes cut off from everyone (airplane mode).
    isolated: BTreeSet<u64>,
    /// The minority side of the current partition, if any.
    partitioned: BTreeSet<u64>,
    /// Directed links cut (partitions and one-way cuts).
    cut_links: BTreeSet<(u64, u64)>,
    /// Nodes whose disk was corrupted or wiped: they take no part (they refuse to start, or
    /// quarantine themselves when they find the fault running), for good.
    corrupted: BTreeSet<u64>,
    degraded_network: bool,
    /// A node kept down for the whole fault phase (see [`Nemesis::hold_down_one`]): never
    /// restarted or wiped by the faults, brought back by `heal_all`.
    held_down: Option<u64>,
}

impl Nemesis {
    pub fn new(family: Family, rng: StdRng) -> Self {
        Self {
            family,
            rng,
            start: tokio::time::Instant::now(),
            timeline: Vec::new(),
            killed: BTreeSet::new(),
            isolated: BTreeSet::new(),
            partitioned: BTreeSet::new(),
            cut_links: BTreeSet::new(),
            corrupted: BTreeSet::new(),
            degraded_network: false,
            held_down: None,
        }
    }

    fn note(&mut self, what: String) {
        tracing::info!(target: "nemesis", "{what}");
        self.timeline.push((self.start.elapsed(), what));
    }

    pub fn corrupted(&self) -> &BTreeSet<u64> {
        &self.corrupted
    }

    fn faulty(&self) -> BTreeSet<u64> {
        let mut faulty: BTreeSet<u64> = self.killed.union(&self.isolated).copied().collect();
        faulty.extend(&self.partitioned);
        faulty.extend(&self.corrupted);
        faulty.extend(self.cut_links.iter().map(|(from, _)| *from));
        faulty
    }

    /// Whether `extra` more faulty nodes keep within the family's budget.
    fn can_fault(&self, extra: &BTreeSet<u64>) -> bool {
        match self.family {
            Family::SafetyOnly => true,
            Family::Available => self.faulty().union(extra).count() <= AVAILABLE_FAULTY_MAX,
        }
    }

    /// The largest wall-clock jump, either way: two days, past any window a clock-based
    /// rule could have had.
    const CLOCK_JUMP_MS_MAX: i64 = 2 * 24 * 3600 * 1000;
    /// The largest clock drift, either way (a poor quartz oscillator).
    const CLOCK_DRIFT_PPM_MAX: i64 = 500;

    /// Kills one node (power loss, on that storage model) and keeps it down until
    /// `heal_all`: meanwhile the others compact their logs past what it holds, so that it
    /// catches up from a snapshot. It counts against the family's budget of faulty nodes.
    pub fn hold_down_one(&mut self, cluster: &mut SimCluster) {
        let ids = cluster.ids();
        let Some(id) = self.pick(&ids) else { return };
        let disk = cluster.kill(id, &mut self.rng);
        self.killed.insert(id);
        self.held_down = Some(id);
        self.note(format!("hold node {id} down for the fault phase{}{disk}", if disk.is_empty() { "" } else { ": " }));
    }

    /// Runs faults for `duration`, one every 0.3-3 s.
    pub async fn run(&mut self, cluster: &mut SimCluster, duration: Duration) {
        let end = tokio::time::Instant::now() + duration;
        while tokio::time::Instant::now() < end {
            let pause = Duration::from_millis(self.rng.random_range(300..3000));
            tokio::time::sleep(pause).await;
            self.step(cluster);
        }
    }

    fn pick(&mut self, from: &[u64]) -> Option<u64> {
        if from.is_empty() { None } else { Some(from[self.rng.random_range(0..from.len())]) }
    }

    fn step(&mut self, cluster: &mut SimCluster) {
        let ids = cluster.ids();
        let healthy: Vec<u64> = ids.iter().copied().filter(|id| !self.faulty().contains(id)).collect();
        let leader = cluster.observer.leader().filter(|id| !self.faulty().contains(id));
        match self.rng.random_range(0..18) {
            0 | 1 => {
                // Kill the leader (most disruptive) or anyone healthy.
                let target = if self.rng.random_bool(0.5) { leader } else { self.pick(&healthy) };
                if let Some(id) = target.filter(|id| self.can_fault(&BTreeSet::from([*id]))) {
                    let disk = cluster.kill(id, &mut self.rng);
                    self.killed.insert(id);
                    let how = if cluster.storage == StorageModel::PowerLoss { "power loss" } else { "SIGKILL" };
                    self.note(format!("kill node {id} ({how}{}{disk})", if disk.is_empty() { "" } else { ": " }));
                }
            }
            2 | 3 => {
                let killed: Vec<u64> = self.killed.iter().copied().filter(|id| Some(*id) != self.held_down).collect();
                if let Some(id) = self.pick(&killed) {
                    cluster.restart(id);
                    self.killed.remove(&id);
                    self.note(format!("restart node {id}"));
                }
            }
            4 => {
                let target = if self.rng.random_bool(0.5) { leader } else { self.pick(&healthy) };
                if let Some(id) = target.filter(|id| self.can_fault(&BTreeSet::from([*id]))) {
                    NetSim::current().clog_node(cluster.node_id(id));
                    self.isolated.insert(id);
                    self.note(format!("airplane mode on node {id}"));
                }
            }
            5 => {
                let isolated: Vec<u64> = self.isolated.iter().copied().collect();
                if let Some(id) = self.pick(&isolated) {
                    NetSim::current().unclog_node(cluster.node_id(id));
                    self.isolated.remove(&id);
                    self.note(format!("airplane mode off on node {id}"));
                }
            }
            6 | 7 if self.partitioned.is_empty() => {
                let size = match self.family {
                    Family::Available => self.rng.random_range(1..=AVAILABLE_FAULTY_MAX),
                    Family::SafetyOnly => self.rng.random_range(1..ids.len()),
                };
                let mut side = BTreeSet::new();
                if self.rng.random_bool(0.5)
                    && let Some(leader) = leader
                {
                    side.insert(leader);
                }
                while side.len() < size {
                    let id = ids[self.rng.random_range(0..ids.len())];
                    side.insert(id);
                }
                if self.can_fault(&side) {
                    for &a in &side {
                        for &b in ids.iter().filter(|b| !side.contains(b)) {
                            self.cut(cluster, a, b);
                            self.cut(cluster, b, a);
                        }
                    }
                    self.partitioned = side.clone();
                    self.note(format!("partition {side:?} from the rest"));
                }
            }
            8 => {
                // One-way link: a node that can send but not hear, or the reverse.
                let (Some(from), Some(to)) = (self.pick(&ids), self.pick(&ids)) else { return };
                if from != to && self.can_fault(&BTreeSet::from([from])) {
                    self.cut(cluster, from, to);
                    self.note(format!("cut the link {from} -> {to} (one way)"));
                }
            }
            9 | 10 => self.heal_network(cluster),
            11 => {
                if !self.degraded_network {
                    let loss = self.rng.random_range(0.01..0.1);
                    let latency_ms = self.rng.random_range(20..200);
                    NetSim::current().update_config(|config| {
                        config.packet_loss_rate = loss;
                        config.send_latency = Duration::from_millis(1)..Duration::from_millis(latency_ms);
                    });
                    self.degraded_network = true;
                    self.note(format!("network degraded: {:.0}% loss, up to {latency_ms} ms latency", loss * 100.0));
                } else {
                    self.calm_network();
                }
            }
            12 if cluster.storage == StorageModel::PowerLoss && self.corrupted.is_empty() => {
                // A bit flips on a node's disk: one that is down will refuse to start; one
                // that runs finds it by its scrub and stops taking part.
                let running = self.rng.random_bool(0.5);
                let candidates: Vec<u64> = if running {
                    healthy.iter().copied().filter(|id| self.can_fault(&BTreeSet::from([*id]))).collect()
                } else {
                    self.killed.iter().copied().collect()
                };
                if let Some(id) = self.pick(&candidates)
                    && cluster.corrupt_disk(id, &mut self.rng)
                {
                    self.corrupted.insert(id);
                    let state = if running { "running" } else { "down" };
                    self.note(format!("flip a bit on node {id}'s disk ({state})"));
                }
            }
            14 => {
                // SIGTERM: a graceful stop, during which a leader hands leadership over.
                let target = if self.rng.random_bool(0.5) { leader } else { self.pick(&healthy) };
                if let Some(id) = target.filter(|id| self.can_fault(&BTreeSet::from([*id]))) {
                    cluster.terminate(id);
                    self.killed.insert(id);
                    self.note(format!("stop node {id} gracefully (SIGTERM)"));
                }
            }
            15 if self.corrupted.is_empty() => {
                // A node that is down loses its disk: it must not come back as the voter it
                // was, and refuses to start.
                let killed: Vec<u64> = self.killed.iter().copied().filter(|id| Some(*id) != self.held_down).collect();
                if let Some(id) = self.pick(&killed) {
                    cluster.wipe(id);
                    self.corrupted.insert(id);
                    self.note(format!("wipe node {id}'s disk"));
                }
            }
            16 => {
                let Some(id) = self.pick(&ids) else { return };
                let magnitude = self.rng.random_range(1_000..=Self::CLOCK_JUMP_MS_MAX);
                let delta = if self.rng.random_bool(0.5) { magnitude } else { -magnitude };
                cluster.clock(id).jump_wall_clock(delta);
                self.note(format!("node {id}'s wall clock jumps {:+.1} h", delta as f64 / 3_600_000.0));
            }
            17 => {
                let Some(id) = self.pick(&ids) else { return };
                let ppm = self.rng.random_range(-Self::CLOCK_DRIFT_PPM_MAX..=Self::CLOCK_DRIFT_PPM_MAX);
                cluster.clock(id).set_drift_ppm(ppm);
                self.note(format!("node {id}'s clocks drift {ppm:+} ppm"));
            }
            13 if self.family == Family::SafetyOnly && self.rng.random_bool(0.3) => {
                let running: Vec<u64> = ids.iter().copied().filter(|id| !self.killed.contains(id)).collect();
                for id in running {
                    let disk = cluster.kill(id, &mut self.rng);
                    self.killed.insert(id);
                    if !disk.is_empty() {
                        self.note(format!("node {id}'s disk: {disk}"));
                    }
                }
                self.note("kill every node (full stop)".to_owned());
            }
            _ => {}
        }
    }

    fn cut(&mut self, cluster: &SimCluster, from: u64, to: u64) {
        if self.cut_links.insert((from, to)) {
            NetSim::current().clog_link(cluster.node_id(from), cluster.node_id(to));
        }
    }

    fn heal_network(&mut self, cluster: &SimCluster) {
        if self.cut_links.is_empty() && self.partitioned.is_empty() {
            return;
        }
        for (from, to) in std::mem::take(&mut self.cut_links) {
            NetSim::current().unclog_link(cluster.node_id(from), cluster.node_id(to));
        }
        self.partitioned.clear();
        self.note("heal partitions and cut links".to_owned());
    }

    fn calm_network(&mut self) {
        NetSim::current().update_config(|config| {
            config.packet_loss_rate = 0.0;
            config.send_latency = Duration::from_millis(1)..Duration::from_millis(10);
        });
        self.degraded_network = false;
        self.note("network calm".to_owned());
    }

    /// Ends every fault: heals the network and restarts every node (but the corrupted).
    pub async fn heal_all(&mut self, cluster: &mut SimCluster) {
        // A killed node's tasks are dropped lazily, when the scheduler next reaches them;
        // a restart in the same instant would find its data directory still locked.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.heal_network(cluster);
        for id in std::mem::take(&mut self.isolated) {
            NetSim::current().unclog_node(cluster.node_id(id));
        }
        if self.degraded_network {
            self.calm_network();
        }
        for id in std::mem::take(&mut self.killed) {
            cluster.restart(id);
        }
        self.note("heal everything; restart every node".to_owned());
    }

    pub fn timeline_text(&self) -> String {
        self.timeline
            .iter()
            .map(|(at, what)| format!("  {:>8.3} s  {what}", at.as_secs_f64()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
