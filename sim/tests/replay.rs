//! Replays one seed of one scenario with full tracing: what `scripts/replay.sh` runs.
//!
//! `CHORUS_SIM_REPLAY_SEED` (default 1), `CHORUS_SIM_REPLAY_SCENARIO` (default
//! available-crash), `CHORUS_SIM_REPLAY_BUG` (a planted bug's name, optional), `RUST_LOG`
//! (tracing filter, default info). The replay is run twice, once with tracing on and once
//! without, and the two traces must be equal: what a person replays is what the suite ran.
#![cfg(madsim)]

use chorus::bugs::Bug;
use chorus_sim::scenario::{run_seed, scenario};

#[test]
fn replay() {
    let seed = std::env::var("CHORUS_SIM_REPLAY_SEED")
        .ok()
        .map_or(1, |v| v.parse::<u64>().unwrap_or_else(|_| panic!("CHORUS_SIM_REPLAY_SEED={v:?} is not a number")));
    let name = std::env::var("CHORUS_SIM_REPLAY_SCENARIO").unwrap_or_else(|_| "available-crash".to_owned());
    let scenario = scenario(&name).unwrap_or_else(|| panic!("unknown scenario {name:?}"));
    let bug = std::env::var("CHORUS_SIM_REPLAY_BUG").ok().filter(|name| !name.is_empty()).map(|name| {
        *Bug::ALL
            .iter()
            .find(|b| format!("{b:?}").eq_ignore_ascii_case(&name))
            .unwrap_or_else(|| panic!("unknown bug {name:?}; one of {:?}", Bug::ALL))
    });
    let quiet = run_seed(scenario, seed, bug);
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_ansi(false)
        .try_init();
    let report = run_seed(scenario, seed, bug);
    println!("{}", report.describe());
    println!(
        "{} operations, {:.1} s simulated in {:.2} s, trace {}",
        report.operations,
        report.simulated.as_secs_f64(),
        report.wall.as_secs_f64(),
        report.trace_hash
    );
    assert!(!report.trace_hash.is_empty() || report.failed(), "the replay recorded nothing");
    assert_eq!(quiet.trace_hash, report.trace_hash, "tracing changed the run of seed {seed} of {name}");
    assert!(!report.failed(), "seed {seed} of {name} fails");
}
