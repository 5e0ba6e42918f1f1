//! The simulation suite: every scenario over a range of seeds.
//!
//! Seeds: `MADSIM_TEST_SEED` (first seed, default 1) and `MADSIM_TEST_NUM` (seeds per
//! scenario, default 8). `CHORUS_SIM_SCENARIO` runs one scenario only.
#![cfg(madsim)]

use chorus_sim::scenario::{RunReport, SCENARIOS, Scenario, run_seed};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Runs `seeds` on two threads; returns every report.
fn run_seeds(scenario: Scenario, seeds: Vec<u64>) -> Vec<RunReport> {
    let (first, second): (Vec<u64>, Vec<u64>) = seeds.iter().partition(|seed| *seed % 2 == 0);
    let other =
        std::thread::spawn(move || second.into_iter().map(|seed| run_seed(scenario, seed, None)).collect::<Vec<_>>());
    let mut reports: Vec<RunReport> = first.into_iter().map(|seed| run_seed(scenario, seed, None)).collect();
    reports.extend(other.join().expect("simulation thread"));
    reports.sort_by_key(|r| r.seed);
    reports
}

fn init_logging() {
    if std::env::var("RUST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_ansi(false)
            .try_init();
    }
}

fn run_scenario(name: &str) {
    if std::env::var("CHORUS_SIM_SCENARIO").is_ok_and(|only| only != name) {
        return;
    }
    init_logging();
    let scenario = SCENARIOS.iter().find(|s| s.name == name).copied().expect("known scenario");
    let base = env_number("MADSIM_TEST_SEED", 1);
    let count = env_number("MADSIM_TEST_NUM", 8);
    let reports = run_seeds(scenario, (base..base + count).collect());
    let mut failures = Vec::new();
    for report in &reports {
        println!(
            "{} seed {}: {} operations, {:.1} s simulated in {:.2} s ({:.0}x), trace {}{}",
            report.scenario,
            report.seed,
            report.operations,
            report.simulated.as_secs_f64(),
            report.wall.as_secs_f64(),
            report.simulated.as_secs_f64() / report.wall.as_secs_f64().max(1e-9),
            report.trace_hash,
            if report.failed() { "  FAILED" } else { "" }
        );
        if report.failed() {
            failures.push(report.describe());
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn available_crash() {
    run_scenario("available-crash");
}

#[test]
fn available_power_loss() {
    run_scenario("available-power-loss");
}

#[test]
fn safety_crash() {
    run_scenario("safety-crash");
}

#[test]
fn safety_power_loss() {
    run_scenario("safety-power-loss");
}

/// The same seed twice gives the same trace: the simulation replays bit for bit. Both runs
/// must succeed and record something: two runs that fail the same way (or record nothing)
/// prove nothing about replay.
#[test]
fn a_seed_replays_identically() {
    let scenario = SCENARIOS[1];
    let seed = env_number("MADSIM_TEST_SEED", 1);
    let dump = std::env::var("CHORUS_SIM_DUMP").ok();
    let first = run_seed(scenario, seed, None);
    if let Some(dump) = &dump {
        let _ = std::fs::rename(dump, format!("{dump}.first"));
    }
    let second = run_seed(scenario, seed, None);
    for report in [&first, &second] {
        assert!(!report.failed(), "a run of the determinism check failed:\n{}", report.describe());
        assert!(!report.trace_hash.is_empty() && report.operations > 0, "a run recorded nothing");
    }
    assert_eq!(first.trace_hash, second.trace_hash, "seed {seed} of {} diverged between two runs", scenario.name);
}

#[test]
fn snapshot_catch_up() {
    run_scenario("snapshot-catch-up");
}
