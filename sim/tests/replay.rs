//! Replays one seed of one scenario with full tracing: what `scripts/replay.sh` runs.
//!
//! `CHORUS_SIM_REPLAY_SEED` (required, else this test does nothing), `CHORUS_SIM_REPLAY_SCENARIO`
//! (default available-crash), `CHORUS_SIM_REPLAY_BUG` (a planted bug's name, optional),
//! `RUST_LOG` (tracing filter, default info).
#![cfg(madsim)]

use chorus::bugs::Bug;
use chorus_sim::scenario::{run_seed, scenario};

#[test]
fn replay() {
    let Some(seed) = std::env::var("CHORUS_SIM_REPLAY_SEED").ok().and_then(|v| v.parse::<u64>().ok()) else {
        return;
    };
    let name = std::env::var("CHORUS_SIM_REPLAY_SCENARIO").unwrap_or_else(|_| "available-crash".to_owned());
    let scenario = scenario(&name).unwrap_or_else(|| panic!("unknown scenario {name:?}"));
    let bug = std::env::var("CHORUS_SIM_REPLAY_BUG").ok().filter(|name| !name.is_empty()).map(|name| {
        *Bug::ALL
            .iter()
            .find(|b| format!("{b:?}").eq_ignore_ascii_case(&name))
            .unwrap_or_else(|| panic!("unknown bug {name:?}; one of {:?}", Bug::ALL))
    });
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
    assert!(!report.failed(), "seed {seed} of {name} fails");
}
