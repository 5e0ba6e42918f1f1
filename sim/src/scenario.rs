//! Scenarios: a family of faults, a storage model and a workload, run for one seed.

use std::collections::BTreeSet;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use chorus::bugs::{self, Bug};
use rand::SeedableRng;
use rand::rngs::StdRng;
use sha2::{Digest, Sha256};

use crate::check::{Violation, check_history, liveness};
use crate::cluster::{SimCluster, StorageModel};
use crate::history::History;
use crate::nemesis::{Family, Nemesis};
use crate::workload::{self, CALL_DEADLINE, Recorder};

#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub name: &'static str,
    pub family: Family,
    pub storage: StorageModel,
    /// How long the nemesis injects faults (simulated time).
    pub fault_duration: Duration,
    pub clients: usize,
    /// One node is held down through the fault phase, and must catch up from a snapshot
    /// once back (the run fails if no snapshot was installed).
    pub lagging_node: bool,
}

/// The scenarios the suite runs.
pub const SCENARIOS: [Scenario; 5] = [
    Scenario {
        name: "available-crash",
        family: Family::Available,
        storage: StorageModel::Sqlite,
        fault_duration: Duration::from_secs(30),
        clients: 4,
        lagging_node: false,
    },
    Scenario {
        name: "available-power-loss",
        family: Family::Available,
        storage: StorageModel::PowerLoss,
        fault_duration: Duration::from_secs(30),
        clients: 4,
        lagging_node: false,
    },
    Scenario {
        name: "safety-crash",
        family: Family::SafetyOnly,
        storage: StorageModel::Sqlite,
        fault_duration: Duration::from_secs(30),
        clients: 4,
        lagging_node: false,
    },
    Scenario {
        name: "safety-power-loss",
        family: Family::SafetyOnly,
        storage: StorageModel::PowerLoss,
        fault_duration: Duration::from_secs(30),
        clients: 4,
        lagging_node: false,
    },
    Scenario {
        name: "snapshot-catch-up",
        family: Family::Available,
        storage: StorageModel::PowerLoss,
        fault_duration: Duration::from_secs(30),
        clients: 4,
        lagging_node: true,
    },
];

pub fn scenario(name: &str) -> Option<Scenario> {
    SCENARIOS.iter().find(|s| s.name == name).copied()
}

/// How long, after the faults, every operation must have completed (liveness bound).
pub const OPERATION_BOUND: Duration = CALL_DEADLINE;
/// How long replicas get to converge once healed.
const CONVERGENCE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long subscriptions get to catch up with the final mailboxes.
const SUBSCRIPTION_CATCH_UP: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct RunReport {
    pub scenario: &'static str,
    pub seed: u64,
    pub bug: Option<Bug>,
    pub violations: Vec<Violation>,
    pub timeline: String,
    /// A digest of everything observable (history, timeline): equal for equal seeds.
    pub trace_hash: String,
    pub simulated: Duration,
    pub operations: usize,
    pub wall: Duration,
}

impl RunReport {
    pub fn failed(&self) -> bool {
        !self.violations.is_empty()
    }

    pub fn describe(&self) -> String {
        let violations: Vec<String> = self.violations.iter().take(20).map(|v| format!("  {v}")).collect();
        let more = self.violations.len().saturating_sub(20);
        format!(
            "scenario {} seed {}{}: {} violation(s)\n{}{}\nnemesis timeline:\n{}\nreplay: scripts/replay.sh {} {}",
            self.scenario,
            self.seed,
            self.bug.map(|b| format!(" (planted bug {b:?})")).unwrap_or_default(),
            self.violations.len(),
            violations.join("\n"),
            if more > 0 { format!("\n  ... and {more} more") } else { String::new() },
            self.timeline,
            self.seed,
            self.scenario
        )
    }
}

/// The runs under way in this process, by data directory name (`run_name` and seed).
static RUNNING: Mutex<BTreeSet<(String, u64)>> = Mutex::new(BTreeSet::new());
static RUN_ENDED: Condvar = Condvar::new();

/// The name of a run's data directory: the same in every run of one seed, because paths
/// appear in error messages, and those are part of the trace that must replay.
fn run_name(scenario: Scenario, bug: Option<Bug>) -> String {
    format!("{}-{}", scenario.name, bug.map_or("none".to_owned(), |b| format!("{b:?}")))
}

/// Held while a run uses its data directory. Two runs of one scenario, bug and seed at
/// once (the determinism test replays a seed that a scenario test runs beside it) would
/// trample each other's files, so they take turns.
struct DirectoryTurn((String, u64));

impl DirectoryTurn {
    fn take(key: (String, u64)) -> Self {
        let mut running = RUNNING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while running.contains(&key) {
            running = RUN_ENDED.wait(running).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        running.insert(key.clone());
        Self(key)
    }
}

impl Drop for DirectoryTurn {
    fn drop(&mut self) {
        RUNNING.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&self.0);
        RUN_ENDED.notify_all();
    }
}

/// Runs one seed of one scenario (with `bug` planted, if any) in a fresh simulation.
///
/// Each run gets a thread of its own, as madsim's own determinism check does: std seeds
/// hash maps from per-thread state that advances with every map created, so two runs on
/// one thread would iterate some maps differently.
pub fn run_seed(scenario: Scenario, seed: u64, bug: Option<Bug>) -> RunReport {
    // Released when this function returns, however the run ended (its thread is joined).
    let _turn = DirectoryTurn::take((run_name(scenario, bug), seed));
    let started = std::time::Instant::now();
    let outcome = std::thread::spawn(move || {
        let runtime = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
        runtime.block_on(run(scenario, seed, bug))
    })
    .join();
    let mut report = outcome.unwrap_or_else(|panic| {
        // A panic anywhere (a node's invariant assertion, say) fails the run like any
        // other violation, with the seed to replay it.
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "(no message)".to_owned());
        RunReport {
            scenario: scenario.name,
            seed,
            bug,
            violations: vec![Violation { checker: "panic", detail: message }],
            timeline: "(lost with the panic; replay the seed to see it)".to_owned(),
            trace_hash: String::new(),
            simulated: Duration::ZERO,
            operations: 0,
            wall: Duration::ZERO,
        }
    });
    report.wall = started.elapsed();
    report
}

async fn run(scenario: Scenario, seed: u64, bug: Option<Bug>) -> RunReport {
    bugs::activate(bug);
    let begin = tokio::time::Instant::now();
    let mut cluster = SimCluster::start(&run_name(scenario, bug), seed, 5, scenario.storage);
    let recorder = Recorder::new();
    let clients = workload::start(scenario.clients, cluster.servers(), seed, &recorder);
    // The scenario's name is part of the nemesis's seed, so that one seed explores
    // different schedules in different scenarios.
    let salt = scenario.name.bytes().fold(0x006e_656d_6573_6973_u64, |h, b| h.rotate_left(5) ^ u64::from(b));
    let mut nemesis = Nemesis::new(scenario.family, StdRng::seed_from_u64(seed ^ salt));
    if scenario.lagging_node {
        nemesis.hold_down_one(&mut cluster);
    }
    nemesis.run(&mut cluster, scenario.fault_duration).await;
    nemesis.heal_all(&mut cluster).await;
    // A quiet while with everything healthy, for the workload to finish in.
    tokio::time::sleep(Duration::from_secs(5)).await;
    recorder.stop();
    for client in clients {
        let _ = tokio::time::timeout(CALL_DEADLINE * 2, client).await;
    }

    let mut violations = Vec::new();
    let corrupted: BTreeSet<u64> = nemesis.corrupted().clone();
    if let Err(detail) = cluster.converge(CONVERGENCE_TIMEOUT, &corrupted).await {
        violations
            .push(Violation { checker: "convergence", detail: format!("replicas differ after healing: {detail}") });
    }
    match workload::final_mailboxes(&cluster.servers(), scenario.clients).await {
        Ok(mailboxes) => recorder.set_final_mailboxes(mailboxes),
        Err(status) => violations.push(Violation {
            checker: "liveness",
            detail: format!("the final mailboxes could not be read from the healed cluster: {status}"),
        }),
    }
    let history = wait_for_subscriptions(&recorder).await;
    violations.extend(check_history(&history));
    violations.extend(cluster.observer.violations());
    if scenario.family == Family::Available {
        violations.extend(liveness(&history, OPERATION_BOUND));
    }
    if scenario.lagging_node && cluster.observer.snapshots_installed() == 0 {
        let detail =
            "the node held down caught up without installing a snapshot: the run did not reach the path it is for"
                .to_owned();
        violations.push(Violation { checker: "coverage", detail });
    }
    bugs::activate(None);
    RunReport {
        scenario: scenario.name,
        seed,
        bug,
        trace_hash: trace_hash(&history, &nemesis),
        timeline: nemesis.timeline_text(),
        violations,
        simulated: begin.elapsed(),
        operations: history.operations.len(),
        wall: Duration::ZERO,
    }
}

/// Gives every user's subscription time to deliver its whole final mailbox.
async fn wait_for_subscriptions(recorder: &Recorder) -> History {
    let deadline = tokio::time::Instant::now() + SUBSCRIPTION_CATCH_UP;
    loop {
        let history = recorder.history();
        let caught_up = history.final_mailboxes.iter().all(|(user, mailbox)| {
            let delivered = recorder.delivered(user);
            mailbox.iter().all(|m| delivered.contains(&m.id))
        });
        if caught_up || tokio::time::Instant::now() >= deadline {
            return history;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn trace_hash(history: &History, nemesis: &Nemesis) -> String {
    if let Ok(path) = std::env::var("CHORUS_SIM_DUMP") {
        let text = format!(
            "{}\n{:#?}\n{:#?}\n{:#?}\n",
            nemesis.timeline_text(),
            history.operations,
            history.deliveries,
            history.final_mailboxes
        );
        let _ = std::fs::write(path, text);
    }
    let mut hasher = Sha256::new();
    hasher.update(format!("{:?}", history.operations));
    hasher.update(format!("{:?}", history.deliveries));
    hasher.update(format!("{:?}", history.raw_deliveries));
    hasher.update(format!("{:?}", history.final_mailboxes));
    hasher.update(nemesis.timeline_text());
    hex::encode(&hasher.finalize()[..8])
}

/// Runs seed `seed` of the first power-loss scenario under madsim's own determinism check,
/// which compares every random draw of two runs and stops at the first that differs.
pub fn check_determinism(seed: u64) {
    let _turn = DirectoryTurn::take((run_name(probe_scenario(), None), seed));
    // A function pointer: madsim calls it afresh for each of its two runs.
    madsim::runtime::Runtime::check_determinism(seed, madsim::Config::default(), || async {
        let seed = madsim::runtime::Handle::current().seed();
        let _ = run(probe_scenario(), seed, None).await;
    });
}

/// The scenario `check_determinism` runs: `PROBE_SCENARIO` (an index, default 1) with
/// `PROBE_CLIENTS` clients if set.
fn probe_scenario() -> Scenario {
    let index: usize = std::env::var("PROBE_SCENARIO").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let mut scenario = SCENARIOS[index];
    if let Some(clients) = std::env::var("PROBE_CLIENTS").ok().and_then(|v| v.parse().ok()) {
        scenario.clients = clients;
    }
    scenario
}
