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

/// Runs seeds 1, 2, ... of `scenario_name` with `bug` planted until one fails.
fn first_failure(bug: Bug, scenario_name: &str) -> Option<RunReport> {
    let scenario = scenario(scenario_name).expect("known scenario");
    (1..=budget()).map(|seed| run_seed(scenario, seed, Some(bug))).find(RunReport::failed)
}

fn assert_caught(bug: Bug, scenario_name: &str) {
    match first_failure(bug, scenario_name) {
        Some(report) => {
            let checkers: std::collections::BTreeSet<&str> = report.violations.iter().map(|v| v.checker).collect();
            println!(
                "planted {bug:?}: caught in {scenario_name} by seed {} ({} violations; checkers {checkers:?}); first: {}",
                report.seed,
                report.violations.len(),
                report.violations[0]
            );
        }
        None => panic!("planted {bug:?} went unnoticed in {} seeds of {scenario_name}", budget()),
    }
}

#[test]
fn commit_without_quorum_is_caught() {
    assert_caught(Bug::CommitWithoutQuorum, "available-crash");
}

#[test]
fn skipping_the_fsync_is_caught() {
    assert_caught(Bug::SkipFsync, "available-power-loss");
}

#[test]
fn applying_before_commit_is_caught() {
    assert_caught(Bug::ApplyBeforeCommit, "available-crash");
}

#[test]
fn forgetting_the_dedup_is_caught() {
    assert_caught(Bug::ForgetDedup, "available-crash");
}

#[test]
fn skipping_read_index_is_caught() {
    assert_caught(Bug::SkipReadIndex, "available-crash");
}
