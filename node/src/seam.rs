//! The clock and randomness seam: the only place node code reads the wall clock or draws
//! entropy from the operating system.
//!
//! Everything else receives time and randomness from here, so a simulation can replay a
//! run bit for bit: under madsim, `SystemTime` is simulated and `getrandom` (which rand 0.9
//! seeds from) is fed from the run's seed.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::SeedableRng;
use rand::rngs::StdRng;

/// Milliseconds since the Unix epoch by the wall clock. Used only to stamp commands before
/// they are proposed (message send times, session open times); never read while applying.
pub fn unix_time_ms() -> u64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(elapsed) => u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        // A clock set before 1970 is a misconfigured host, not a reason to stop serving.
        Err(_) => 0,
    }
}

/// A cryptographically strong generator (ChaCha12) seeded from the operating system; under
/// madsim the seed comes from the simulation's seed. Session tokens and password salts
/// are drawn from it.
pub fn os_seeded_rng() -> StdRng {
    StdRng::from_os_rng()
}

/// Runs blocking work (SQLite, password hashing) off the async worker threads. Under madsim
/// it runs inline: blocking calls cost no simulated time and spawning threads would break
/// replay.
pub async fn run_blocking<F, R>(work: F) -> R
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    #[cfg(not(madsim))]
    {
        match tokio::task::spawn_blocking(work).await {
            Ok(result) => result,
            // The closure panicked: that is a bug, and it must stay loud.
            Err(join_error) => std::panic::resume_unwind(join_error.into_panic()),
        }
    }
    #[cfg(madsim)]
    {
        work()
    }
}

/// How many cores this machine has: how many CPU-heavy computations (password hashing) a
/// node runs at once. Under madsim such work runs inline, so the number changes nothing.
pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |count| count.get())
}

/// Now, by the monotonic clock timers use (tokio's; simulated under madsim): for deadlines.
pub fn monotonic_now() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

/// The monotonic clock the replication core is ticked with: milliseconds since this clock
/// was started. It reads tokio's clock, which madsim replaces with simulated time, so a
/// simulated node needs no other implementation.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    start: tokio::time::Instant,
}

impl MonotonicClock {
    pub fn start() -> Self {
        Self { start: monotonic_now() }
    }

    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}
