//! Property test of the replication core: clusters of 3 and 5 replicas over a network whose
//! every decision proptest makes (deliver, drop, duplicate, reorder, delay; crash and
//! restart nodes, losing what was not durable; partition and heal; advance time), with
//! Raft's safety properties checked after every step and liveness checked after healing.
//! Two spare nodes run outside the configuration: the schedules add them as learners,
//! promote them, and remove members (one change at a time, on whichever node leads), so
//! every property is checked across changing configurations too.
//!
//! A failing case shrinks to a short schedule, printed step by step with the cluster's
//! trace, and its seed is saved in `raft_properties.proptest-regressions` next to this file
//! so that every later run replays it first. `RAFT_PROPTEST_CASES` sets the number of cases per cluster size (default 1000);
//! `RAFT_PROPTEST_STEPS` the longest schedule (default 200).

mod raft_harness;

use std::collections::BTreeSet;

use chorus::replication::{MembershipChange, ReplicaConfig, Role};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestError, TestRunner};
use raft_harness::{Cluster, Failure};

#[derive(Debug, Clone)]
enum Step {
    /// Deliver the in-flight message at this position (modulo the count): reordering.
    Deliver(usize),
    /// Deliver everything in flight, in order.
    DeliverAll,
    Drop(usize),
    Duplicate(usize),
    /// Make this node's pending state durable (and release what waited for it).
    Persist(u64),
    /// Let time pass (messages in flight meanwhile are delayed).
    Advance {
        ms: u64,
    },
    /// Let the cluster run normally for a while (within the current partitions and crashes).
    Run {
        ms: u64,
    },
    Propose {
        node: u64,
        value: u16,
    },
    /// Propose on whichever node leads the newest term, as a client that found it would.
    ProposeOnLeader(u16),
    ReadOnLeader,
    Read(u64),
    Transfer {
        from: u64,
        to: u64,
    },
    /// The process dies: whatever it had not persisted is lost.
    Crash(u64),
    /// The node that received the last message dies, likely mid-way between answering
    /// and persisting: the window where "reply only after fsync" matters.
    CrashLastReceiver,
    CrashLeader,
    /// Cut the leader off alone (it keeps accepting proposals until CheckQuorum).
    IsolateLeader,
    Restart(u64),
    RestartAll,
    /// Cut the nodes in the bit mask off from the rest.
    Partition(u8),
    CutOneWay {
        from: u64,
        to: u64,
    },
    Heal,
    /// The node snapshots its state machine and compacts its log, keeping this many entries
    /// before the snapshot's last one: lagging followers then need a snapshot.
    Compact {
        node: u64,
        keep: u64,
    },
    /// On whichever node leads: add this node as a learner, promote it, or remove it.
    AddLearner(u64),
    Promote(u64),
    Remove(u64),
}

/// How many kinds of step there are, for swarm weights.
const STEP_KINDS: usize = 26;
/// Nodes outside the first configuration, for the schedules to add.
const SPARES: u64 = 2;

/// Steps drawn with per-case weights (swarm testing: each case leans on a different mix of
/// faults, which finds more bugs than one fixed mix).
fn step_strategy(size: u64, weights: Vec<u32>) -> impl Strategy<Value = Step> {
    let nodes = size + SPARES;
    let node = move || 1..=nodes;
    let kinds: Vec<BoxedStrategy<Step>> = vec![
        any::<usize>().prop_map(Step::Deliver).boxed(),
        Just(Step::DeliverAll).boxed(),
        any::<usize>().prop_map(Step::Drop).boxed(),
        any::<usize>().prop_map(Step::Duplicate).boxed(),
        node().prop_map(Step::Persist).boxed(),
        prop_oneof![Just(10u64), Just(50), Just(100), Just(400), Just(1500)]
            .prop_map(|ms| Step::Advance { ms })
            .boxed(),
        prop_oneof![Just(100u64), Just(300), Just(1000), Just(3000)].prop_map(|ms| Step::Run { ms }).boxed(),
        (node(), any::<u16>()).prop_map(|(node, value)| Step::Propose { node, value }).boxed(),
        any::<u16>().prop_map(Step::ProposeOnLeader).boxed(),
        node().prop_map(Step::Read).boxed(),
        Just(Step::ReadOnLeader).boxed(),
        (node(), node()).prop_map(|(from, to)| Step::Transfer { from, to }).boxed(),
        node().prop_map(Step::Crash).boxed(),
        Just(Step::CrashLastReceiver).boxed(),
        Just(Step::CrashLeader).boxed(),
        Just(Step::IsolateLeader).boxed(),
        node().prop_map(Step::Restart).boxed(),
        Just(Step::RestartAll).boxed(),
        (1u8..(1 << nodes) - 1).prop_map(Step::Partition).boxed(),
        (node(), node()).prop_map(|(from, to)| Step::CutOneWay { from, to }).boxed(),
        Just(Step::Heal).boxed(),
        any::<usize>().prop_map(Step::Deliver).boxed(),
        (node(), 0u64..4).prop_map(|(node, keep)| Step::Compact { node, keep }).boxed(),
        node().prop_map(Step::AddLearner).boxed(),
        node().prop_map(Step::Promote).boxed(),
        node().prop_map(Step::Remove).boxed(),
    ];
    assert_eq!(kinds.len(), STEP_KINDS);
    // Every case keeps delivering and persisting at least a little, or nothing happens.
    let weighted = kinds.into_iter().zip(weights).enumerate().map(|(kind, (strategy, weight))| {
        let floor = if kind < 2 || kind == 4 { 3 } else { 0 };
        (weight + floor, strategy)
    });
    proptest::strategy::Union::new_weighted(weighted.filter(|(w, _)| *w > 0).collect())
}

fn config_strategy() -> impl Strategy<Value = ReplicaConfig> {
    (1usize..=4, 1usize..=3, prop_oneof![Just(64usize), Just(1024)]).prop_map(
        |(append_entries_max, inflight_appends_max, append_bytes_max)| ReplicaConfig {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 2000,
            append_entries_max,
            append_bytes_max,
            inflight_appends_max,
        },
    )
}

fn run_step(cluster: &mut Cluster, step: &Step, size: u64) -> Result<(), Failure> {
    match *step {
        Step::Deliver(position) => cluster.deliver(position)?,
        Step::DeliverAll => cluster.deliver_all()?,
        Step::Drop(position) => cluster.drop_message(position),
        Step::Duplicate(position) => cluster.duplicate(position),
        Step::Persist(node) => cluster.persist(node)?,
        Step::Advance { ms } => cluster.advance(ms)?,
        Step::Run { ms } => cluster.run_for(ms)?,
        Step::Propose { node, value } => {
            cluster.propose(node, &format!("v{value}"));
        }
        Step::ProposeOnLeader(value) => {
            if let Some(leader) = cluster.leader() {
                cluster.propose(leader, &format!("v{value}"));
            }
        }
        Step::Read(node) => {
            cluster.read(node);
        }
        Step::ReadOnLeader => {
            if let Some(leader) = cluster.leader() {
                cluster.read(leader);
            }
        }
        Step::Transfer { from, to } => cluster.transfer(from, to),
        Step::Crash(node) => cluster.crash(node),
        Step::CrashLastReceiver => {
            if let Some(node) = cluster.last_receiver {
                cluster.crash(node);
            }
        }
        Step::CrashLeader => {
            if let Some(leader) = cluster.leader() {
                cluster.crash(leader);
            }
        }
        Step::IsolateLeader => {
            if let Some(leader) = cluster.leader() {
                cluster.partition(&BTreeSet::from([leader]));
            }
        }
        Step::Restart(node) => cluster.restart(node),
        Step::RestartAll => {
            for id in cluster.ids() {
                cluster.restart(id);
            }
        }
        Step::Partition(mask) => {
            let side: BTreeSet<u64> = (1..=size + SPARES).filter(|id| mask & (1 << (id - 1)) != 0).collect();
            cluster.partition(&side);
        }
        Step::CutOneWay { from, to } if from != to => cluster.cut_one_way(from, to),
        Step::CutOneWay { .. } => {}
        Step::Heal => cluster.heal(),
        Step::Compact { node, keep } => cluster.compact(node, keep),
        Step::AddLearner(node) => change_on_leader(cluster, MembershipChange::AddLearner(node)),
        Step::Promote(node) => change_on_leader(cluster, MembershipChange::Promote(node)),
        Step::Remove(node) => change_on_leader(cluster, MembershipChange::Remove(node)),
    }
    cluster.check()
}

fn change_on_leader(cluster: &mut Cluster, change: MembershipChange) {
    if let Some(leader) = cluster.leader() {
        cluster.change_membership(leader, change);
    }
}

/// After the faults: heal everything, restart everyone, and require a leader and a new
/// committed entry on every member within a bounded time.
fn check_liveness(cluster: &mut Cluster) -> Result<(), Failure> {
    cluster.heal();
    for id in cluster.ids() {
        cluster.restart(id);
    }
    const QUIET_PERIOD_MS: u64 = 20_000;
    let deadline = cluster.now_ms + QUIET_PERIOD_MS;
    let mut proposed = false;
    while cluster.now_ms < deadline {
        cluster.run_for(100)?;
        let Some(leader) = cluster.leader() else { continue };
        if !proposed || cluster.replica(leader).role() != Role::Leader {
            proposed = cluster.propose(leader, "liveness");
        }
        if cluster.applied_by_members("liveness") {
            return Ok(());
        }
    }
    let roles: Vec<String> = cluster
        .ids()
        .iter()
        .map(|&id| {
            let r = cluster.replica(id);
            format!(
                "{id}: {:?} ({:?}) term {} commit {} last {}",
                r.role(),
                r.member_role(),
                r.term(),
                r.commit_index(),
                r.last_index()
            )
        })
        .collect();
    Err(Failure(format!(
        "liveness: no new entry committed everywhere within {QUIET_PERIOD_MS} ms of quiet\n{}\nlast steps:\n{}",
        roles.join("\n"),
        cluster.trace_tail(40)
    )))
}

/// What a schedule exercised.
struct Exercised {
    /// Snapshots followers installed from a leader.
    snapshots_installed: u64,
    /// Whether the committed configuration ended different from the first.
    membership_changed: bool,
}

/// Runs one schedule.
fn run_schedule(size: u64, seed: u64, config: ReplicaConfig, steps: &[Step]) -> Result<Exercised, TestCaseError> {
    let mut cluster = Cluster::with_spares(size, SPARES, config, seed);
    // Start from a working cluster: the faults are more interesting with a leader to fight.
    cluster.elect().map_err(|Failure(why)| TestCaseError::fail(why))?;
    for (n, step) in steps.iter().enumerate() {
        cluster.note(format!("step {n}: {step:?}"));
        run_step(&mut cluster, step, size).map_err(|Failure(why)| TestCaseError::fail(why))?;
    }
    check_liveness(&mut cluster).map_err(|Failure(why)| TestCaseError::fail(why))?;
    let membership_changed = cluster.committed_membership().voters != (1..=size).collect();
    Ok(Exercised { snapshots_installed: cluster.snapshots_installed, membership_changed })
}

fn env_number(name: &str, default: u32) -> u32 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn run_property(size: u64) {
    let cases = env_number("RAFT_PROPTEST_CASES", 1000);
    let steps_max = env_number("RAFT_PROPTEST_STEPS", 200) as usize;
    let config = Config {
        cases,
        // A failing case's seed goes to tests/raft_properties.proptest-regressions and is
        // replayed first on every later run: commit it to keep the regression forever.
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        source_file: Some(file!()),
        // Shrinking re-runs whole schedules; bound it so a failing CI run ends (delta
        // debugging below finishes the job).
        max_shrink_time: 60_000,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let strategy = (any::<u64>(), config_strategy(), prop::collection::vec(0u32..12, STEP_KINDS)).prop_flat_map(
        move |(seed, config, weights)| {
            (Just(seed), Just(config), prop::collection::vec(step_strategy(size, weights), 1..steps_max))
        },
    );
    let started = std::time::Instant::now();
    let steps_run = std::cell::Cell::new(0usize);
    let (cases_with_snapshots, snapshots) = (std::cell::Cell::new(0u32), std::cell::Cell::new(0u64));
    let cases_with_new_voters = std::cell::Cell::new(0u32);
    let result = runner.run(&strategy, |(seed, config, steps)| {
        steps_run.set(steps_run.get() + steps.len());
        let exercised = run_schedule(size, seed, config, &steps)?;
        cases_with_snapshots.set(cases_with_snapshots.get() + u32::from(exercised.snapshots_installed > 0));
        snapshots.set(snapshots.get() + exercised.snapshots_installed);
        cases_with_new_voters.set(cases_with_new_voters.get() + u32::from(exercised.membership_changed));
        Ok(())
    });
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "{size}-node harness: {cases} cases, {} scheduled steps in {seconds:.1} s ({:.0} steps/s, excluding elections and liveness phases)",
        steps_run.get(),
        steps_run.get() as f64 / seconds
    );
    eprintln!(
        "{size}-node harness: {} snapshots installed from a leader, in {} of {cases} cases",
        snapshots.get(),
        cases_with_snapshots.get()
    );
    eprintln!(
        "{size}-node harness: the voters changed (a committed promotion or removal) in {} of {cases} cases",
        cases_with_new_voters.get()
    );
    match result {
        Ok(()) => {
            // The schedules must reach the snapshot and membership paths, or their safety
            // goes unchecked.
            assert!(
                cases < 100 || cases_with_snapshots.get() > 0,
                "no case installed a snapshot: the schedules no longer exercise it"
            );
            assert!(
                cases < 100 || cases_with_new_voters.get() > 0,
                "no case changed the voters: the schedules no longer exercise membership changes"
            );
        }
        Err(TestError::Fail(_, (seed, config, steps))) => {
            // Said before minimizing, which re-runs the schedule many times and can be slow.
            if let Err(error) = run_schedule(size, seed, config.clone(), &steps) {
                eprintln!("{size}-node cluster failed ({} steps; minimizing):\n{error}", steps.len());
            }
            // proptest's shrinking keeps the schedule's length mostly; cut it down further
            // by delta debugging (steps whose removal keeps the failure are dropped).
            let fails = |candidate: &[Step]| run_schedule(size, seed, config.clone(), candidate).is_err();
            let minimal = minimize(steps, fails);
            let why = match run_schedule(size, seed, config.clone(), &minimal) {
                Err(error) => error.to_string(),
                Ok(_) => "(the minimized schedule passed; see the proptest output above)".to_owned(),
            };
            let numbered: Vec<String> =
                minimal.iter().enumerate().map(|(n, step)| format!("  {n}: {step:?}")).collect();
            panic!(
                "{size}-node cluster failed.\n{why}\nminimal schedule (seed {seed}, {config:?}):\n{}",
                numbered.join("\n")
            );
        }
        Err(error) => panic!("{size}-node cluster: {error}"),
    }
}

/// Delta debugging (Zeller's ddmin): the smallest sub-schedule found that still fails.
fn minimize(mut steps: Vec<Step>, fails: impl Fn(&[Step]) -> bool) -> Vec<Step> {
    let mut chunks = 2;
    while steps.len() >= 2 {
        let chunk_len = steps.len().div_ceil(chunks);
        let mut reduced = false;
        for start in (0..steps.len()).step_by(chunk_len) {
            let mut candidate = steps.clone();
            candidate.drain(start..(start + chunk_len).min(steps.len()));
            if fails(&candidate) {
                steps = candidate;
                chunks = (chunks - 1).max(2);
                reduced = true;
                break;
            }
        }
        if !reduced {
            if chunks >= steps.len() {
                break;
            }
            chunks = (chunks * 2).min(steps.len());
        }
    }
    steps
}

#[test]
fn three_node_cluster_is_safe_and_live_under_faults() {
    run_property(3);
}

#[test]
fn five_node_cluster_is_safe_and_live_under_faults() {
    run_property(5);
}

/// A number a forged or corrupt frame might carry: small ones (which a replica may well
/// hold), the edges of the integers and just past what a replica accepts, or anything at
/// all.
fn wire_index() -> BoxedStrategy<u64> {
    use chorus::replication::INDEX_MAX;
    prop_oneof![
        6 => 0u64..12,
        1 => prop_oneof![Just(u64::MAX), Just(u64::MAX - 1), Just(INDEX_MAX), Just(INDEX_MAX + 1)],
        1 => any::<u64>(),
    ]
    .boxed()
}

/// A term a forged or corrupt frame might carry, as [`wire_index`]. Not TERM_MAX itself:
/// a cluster at the last term can never campaign again, and until peers authenticate a
/// forger can put it there (see docs/design.md).
fn wire_term() -> BoxedStrategy<u64> {
    use chorus::replication::TERM_MAX;
    prop_oneof![
        6 => 0u64..12,
        1 => prop_oneof![Just(u64::MAX), Just(u64::MAX - 1), Just(TERM_MAX + 1)],
        1 => any::<u64>().prop_filter("the last term", |term| *term != TERM_MAX),
    ]
    .boxed()
}

fn arbitrary_message(size: u64) -> impl Strategy<Value = chorus::replication::Message> {
    use chorus::replication::{AppendResult, Entry, LogPosition, Membership, Message, MessageBody, Payload};
    let position = || (wire_term(), wire_index()).prop_map(|(term, index)| LogPosition { term, index }).boxed();
    let entry =
        (wire_term(), wire_index()).prop_map(|(term, index)| Entry { term, index, payload: Payload::Noop }).boxed();
    let body = prop_oneof![
        (position(), any::<bool>())
            .prop_map(|(last_log, leadership_transfer)| MessageBody::PreVoteRequest { last_log, leadership_transfer }),
        any::<bool>().prop_map(|granted| MessageBody::PreVoteResponse { granted }),
        (position(), any::<bool>())
            .prop_map(|(last_log, leadership_transfer)| MessageBody::VoteRequest { last_log, leadership_transfer }),
        any::<bool>().prop_map(|granted| MessageBody::VoteResponse { granted }),
        (position(), prop::collection::vec(entry, 0..4), wire_index(), wire_index(), prop::option::of(0..=size + 1))
            .prop_map(|(previous, entries, leader_commit, heartbeat_round, transfer_target)| {
                MessageBody::AppendRequest { previous, entries, leader_commit, heartbeat_round, transfer_target }
            }),
        (wire_index(), wire_index()).prop_map(|(match_index, heartbeat_round)| MessageBody::AppendResponse {
            result: AppendResult::Accepted { match_index },
            heartbeat_round
        }),
        (wire_index(), prop::option::of(wire_term()), wire_index(), wire_index()).prop_map(
            |(rejected_previous, conflict_term, first_index_of_term, heartbeat_round)| MessageBody::AppendResponse {
                result: AppendResult::Rejected { rejected_previous, conflict_term, first_index_of_term },
                heartbeat_round
            }
        ),
        position().prop_map(|last_log| MessageBody::TimeoutNow { last_log }),
        // Only snapshots a replica must refuse (at index 0, beyond the largest index, or
        // with a configuration no correct replica holds): a well-formed forged snapshot is
        // forged state, which a replica installs and commits (as it would forged entries
        // with a forged commit index), after which no cluster can promise liveness.
        (
            prop_oneof![Just(0u64), Just(chorus::replication::INDEX_MAX + 1), 1u64..12],
            wire_term(),
            prop_oneof![
                Just(Membership::with_voters([])),
                Just(Membership::with_voters([0, 1, 2])),
                Just(Membership::with_voters(1..=8)),
                Just(Membership { learners: [2].into(), ..Membership::with_voters([1, 2]) }),
            ]
        )
            .prop_map(|(index, term, membership)| MessageBody::InstallSnapshot {
                snapshot: chorus::replication::SnapshotMeta {
                    last_included: chorus::replication::LogPosition { term, index },
                    membership
                }
            }),
    ]
    .boxed();
    (1..=size + 1, 1..=size + 1, wire_term(), body).prop_map(|(from, to, term, body)| Message { from, to, term, body })
}

proptest! {
    #![proptest_config(Config { cases: 512, failure_persistence: None, ..Config::default() })]

    /// Whatever arrives on the wire, even forged or corrupt, with any numbers in it, a
    /// replica does not panic, and once the forgeries stop and the network heals, the
    /// cluster elects a leader and commits again. (Safety is not checked here: forged votes
    /// or appends are Byzantine faults, which Raft does not tolerate; what a forger can do is
    /// written down in docs/design.md.)
    #[test]
    fn arbitrary_messages_neither_panic_a_replica_nor_stop_the_cluster(
        seed in any::<u64>(),
        injected in prop::collection::vec((arbitrary_message(3), 0u64..400), 1..60),
    ) {
        let mut cluster = Cluster::new(3, raft_harness::tight_config(), seed);
        cluster.elect().map_err(|Failure(why)| TestCaseError::fail(why))?;
        cluster.settle().map_err(|Failure(why)| TestCaseError::fail(why))?;
        cluster.forgeries_injected = true;
        for (message, pause_ms) in injected {
            let target = message.to.clamp(1, 3);
            cluster.note(format!("forged {}", raft_harness::describe(&message)));
            cluster.replica_mut(target).step(message).unwrap();
            cluster.collect(target);
            cluster.advance(pause_ms).map_err(|Failure(why)| TestCaseError::fail(why))?;
            cluster.settle().map_err(|Failure(why)| TestCaseError::fail(why))?;
        }
        check_liveness(&mut cluster).map_err(|Failure(why)| TestCaseError::fail(why))?;
    }
}
