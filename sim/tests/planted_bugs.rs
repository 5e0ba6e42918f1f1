//! Every checker earns its keep: with a bug planted on purpose, the suite must fail within
//! its seed budget. Prints, for each bug, the seed that caught it and what was violated.
//!
//! `CHORUS_SIM_BUG_BUDGET` sets the seeds tried per bug (default 24).
#![cfg(madsim)]

use chorus::bugs::Bug;
use chorus_sim::scenario::{RunReport, run_seed, scenario};

fn budget() -> u64 {
    std::env::var("CHORUS_SIM_BUG_BUDGET").ok().and_then(|v| v.parse().ok()).unwrap_or(24)
}

/// Runs seeds 1, 2, ... of `scenario_name` with `bug` planted until one is caught by
/// `checker` (the one docs/testing.md names for the bug): a run that fails for another
/// reason does not count as catching it.
fn first_caught_by(bug: Bug, scenario_name: &str, checker: &str) -> Option<RunReport> {
    let scenario = scenario(scenario_name).expect("known scenario");
    (1..=budget())
        .map(|seed| run_seed(scenario, seed, Some(bug)))
        .find(|report| report.violations.iter().any(|v| v.checker == checker))
}

fn assert_caught(bug: Bug, scenario_name: &str, checker: &str) {
    match first_caught_by(bug, scenario_name, checker) {
        Some(report) => {
            let checkers: std::collections::BTreeSet<&str> = report.violations.iter().map(|v| v.checker).collect();
            let first = report.violations.iter().find(|v| v.checker == checker).expect("caught by it");
            println!(
                "planted {bug:?}: caught in {scenario_name} by seed {} ({} violations; checkers {checkers:?}); {first}",
                report.seed,
                report.violations.len(),
            );
        }
        None => {
            panic!("planted {bug:?} went unnoticed by the {checker:?} checker in {} seeds of {scenario_name}", budget())
        }
    }
}

#[test]
fn commit_without_quorum_is_caught() {
    assert_caught(Bug::CommitWithoutQuorum, "available-crash", "raft: state machine safety");
}

#[test]
fn skipping_the_fsync_is_caught() {
    assert_caught(Bug::SkipFsync, "available-power-loss", "convergence");
}

#[test]
fn applying_before_commit_is_caught() {
    assert_caught(Bug::ApplyBeforeCommit, "available-crash", "raft: state machine safety");
}

#[test]
fn forgetting_the_dedup_is_caught() {
    assert_caught(Bug::ForgetDedup, "available-crash", "exactly-once");
}

#[test]
fn skipping_read_index_is_caught() {
    assert_caught(Bug::SkipReadIndex, "available-crash", "linearizable");
}
