//! The clock and randomness seam: the only place node code reads the wall clock or draws
//! entropy from the operating system.
//!
//! Everything else receives time and randomness from here, so a simulation can replay a
//! run bit for bit: under madsim, `SystemTime` is simulated and `getrandom` (which rand 0.9
//! seeds from) is fed from the run's seed.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rand::SeedableRng;
use rand::rngs::StdRng;

/// Milliseconds since the Unix epoch by the machine's wall clock. Used only to stamp what
/// people see (message times, session open times), never to decide anything; a node reads
/// it through its [`NodeClock`].
pub fn unix_time_ms() -> u64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(elapsed) => u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        // A clock set before 1970 is a misconfigured host, not a reason to stop serving.
        Err(_) => 0,
    }
}

/// A node's clocks. In production, the machine's. A simulation gives each node a
/// [`ClockSkew`] of its own, so that nodes disagree the way real machines do: the wall
/// clock offset (and jumping, forward or back), and both clocks running fast or slow.
#[derive(Clone, Default)]
pub struct NodeClock {
    skew: Option<Arc<ClockSkew>>,
}

impl NodeClock {
    /// The machine's clocks, as they are.
    pub fn system() -> Self {
        Self { skew: None }
    }

    /// Clocks that `skew` bends.
    pub fn skewed(skew: Arc<ClockSkew>) -> Self {
        Self { skew: Some(skew) }
    }

    /// Milliseconds since the Unix epoch by this node's wall clock.
    pub fn unix_time_ms(&self) -> u64 {
        let system = unix_time_ms();
        match &self.skew {
            None => system,
            Some(skew) => system.saturating_add_signed(skew.wall_offset_ms()),
        }
    }

    /// This node's monotonic clock, starting now.
    pub fn monotonic(&self) -> MonotonicClock {
        let drift_start_us = self.skew.as_ref().map_or(0, |skew| skew.drift_us());
        MonotonicClock { start: monotonic_now(), drift_start_us, skew: self.skew.clone() }
    }
}

/// How a simulated node's clocks differ from true (simulated) time.
pub struct ClockSkew {
    state: Mutex<SkewState>,
}

struct SkewState {
    /// The wall clock's offset, apart from drift.
    offset_ms: i64,
    /// How fast both clocks run, in parts per million (+500: 0.05 % fast).
    drift_ppm: i64,
    /// Drift gained before `segment_start` (microseconds), and when the current rate began.
    drift_accumulated_us: i64,
    segment_start: tokio::time::Instant,
}

impl Default for ClockSkew {
    fn default() -> Self {
        Self::new()
    }
}

impl ClockSkew {
    /// No skew yet: the clocks tell true time until changed.
    pub fn new() -> Self {
        let state = SkewState { offset_ms: 0, drift_ppm: 0, drift_accumulated_us: 0, segment_start: monotonic_now() };
        Self { state: Mutex::new(state) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SkewState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The wall clock jumps by `delta_ms` (negative: back), as an NTP step or a person
    /// setting the time does. The monotonic clock does not jump.
    pub fn jump_wall_clock(&self, delta_ms: i64) {
        let mut state = self.lock();
        state.offset_ms = state.offset_ms.saturating_add(delta_ms);
    }

    /// Both clocks run `ppm` parts per million fast (negative: slow) from now on.
    pub fn set_drift_ppm(&self, ppm: i64) {
        assert!(ppm.abs() < 1_000_000, "a clock that stops or runs backwards is not a clock ({ppm} ppm)");
        let mut state = self.lock();
        let now = monotonic_now();
        state.drift_accumulated_us = drift_at(&state, now);
        state.segment_start = now;
        state.drift_ppm = ppm;
    }

    /// What drift has added to a clock by now, in microseconds.
    fn drift_us(&self) -> i64 {
        drift_at(&self.lock(), monotonic_now())
    }

    fn wall_offset_ms(&self) -> i64 {
        let state = self.lock();
        state.offset_ms + drift_at(&state, monotonic_now()) / 1000
    }
}

fn drift_at(state: &SkewState, now: tokio::time::Instant) -> i64 {
    let elapsed_us = i64::try_from(now.duration_since(state.segment_start).as_micros()).unwrap_or(i64::MAX);
    state.drift_accumulated_us + elapsed_us.saturating_mul(state.drift_ppm) / 1_000_000
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
        // What the work logs stays inside the caller's span (the node's).
        let span = tracing::Span::current();
        match tokio::task::spawn_blocking(move || span.in_scope(work)).await {
            Ok(result) => result,
            // The closure panicked: that is a bug, and it must stay loud.
            Err(join_error) if join_error.is_panic() => std::panic::resume_unwind(join_error.into_panic()),
            // Cancelled before it started: the runtime is shutting down, and drops this
            // task too at its next await, which this is.
            Err(_) => std::future::pending().await,
        }
    }
    #[cfg(madsim)]
    {
        work()
    }
}

/// Runs `future` on a thread of its own, with its own single-threaded async runtime, and
/// returns a handle to await its output on the caller's runtime (a panic in it resumes
/// there). The replication runtime runs so: the core reads log entries older than the
/// log's cache from SQLite synchronously, and those reads then block only the Raft loop's
/// own thread, never a worker that serves clients. Under madsim it is an ordinary task:
/// a thread would break replay, and blocking costs no simulated time.
///
/// Its timers are its own runtime's: time paused in the caller's runtime
/// (`tokio::time::pause`, `start_paused`) does not reach it, so a test that pauses time
/// must not run a node this way.
pub fn spawn_dedicated<F>(name: &str, future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    use tracing::Instrument;
    let future = future.in_current_span();
    #[cfg(not(madsim))]
    {
        let (done, output) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("an async runtime for a dedicated thread");
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(future)));
                let _ = done.send(outcome);
            })
            .expect("the system refused to start a thread");
        tokio::task::spawn(async move {
            match output.await {
                Ok(Ok(output)) => output,
                Ok(Err(panic)) => std::panic::resume_unwind(panic),
                Err(_) => panic!("the thread ended without finishing its work"),
            }
        })
    }
    #[cfg(madsim)]
    {
        let _ = name;
        tokio::task::spawn(future)
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
/// was started, by tokio's clock (which madsim replaces with simulated time), bent by the
/// node's drift in a simulation. Never goes back: drift is below a million ppm.
#[derive(Clone)]
pub struct MonotonicClock {
    start: tokio::time::Instant,
    /// The node's drift when this clock started: only drift since then counts.
    drift_start_us: i64,
    skew: Option<Arc<ClockSkew>>,
}

impl MonotonicClock {
    /// The machine's monotonic clock, starting now.
    pub fn start() -> Self {
        NodeClock::system().monotonic()
    }

    pub fn now_ms(&self) -> u64 {
        let elapsed_us = i64::try_from(self.start.elapsed().as_micros()).unwrap_or(i64::MAX);
        let drift_us = self.skew.as_ref().map_or(0, |skew| skew.drift_us() - self.drift_start_us);
        u64::try_from(elapsed_us.saturating_add(drift_us).max(0) / 1000).unwrap_or(0)
    }
}
