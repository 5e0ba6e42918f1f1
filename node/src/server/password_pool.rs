//! Password hashing and checking on a bounded pool: a fixed number of computations at a
//! time (half the cores), each in working memory allocated once and reused, and at most
//! [`WAITING_MAX`] requests waiting; beyond that a request is refused at once
//! (RESOURCE_EXHAUSTED, OVERLOADED, with a retry delay) rather than queued without bound.
//! A burst of sign-ups and logins therefore costs a node a fixed amount of memory
//! (workers × the hash cost, 19 MiB each by default) and a bounded queue, and the
//! replication runtime keeps its share of the CPU.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use tonic::Status;

use super::status;
use crate::chat::credentials::{HashMemory, PasswordHasher};
use crate::seam::run_blocking;

/// Requests waiting for a worker before new ones are refused: a few seconds of work at the
/// default cost on a small machine.
pub const WAITING_MAX: usize = 64;

pub struct PasswordPool {
    hasher: Arc<PasswordHasher>,
    /// One working memory per worker, taken for a computation and put back after.
    memories: Arc<Mutex<Vec<HashMemory>>>,
    workers_max: usize,
    /// A permit per computation, held by the computation itself (moved onto its blocking
    /// thread), not by the request: a request that is cancelled (its client gave up, a
    /// `grpc-timeout` ran out) drops its future, but its computation still runs to the end
    /// and only then frees the worker. Held by the request instead, a client that cancels
    /// quickly and repeats would start a computation (and a working memory) per request.
    workers: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
}

/// A request counted as waiting for a worker, until it gets one or is dropped: counted
/// down on drop so that a request cancelled while it waits does not stay counted (64
/// cancelled waits would otherwise refuse every later request until a restart).
struct Waiting(Arc<AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl PasswordPool {
    /// A pool of `workers` (at least one), each with its working memory allocated now.
    pub fn new(hasher: PasswordHasher, workers: usize) -> Self {
        let workers = workers.max(1);
        let memories = (0..workers).map(|_| hasher.memory()).collect();
        Self {
            hasher: Arc::new(hasher),
            memories: Arc::new(Mutex::new(memories)),
            workers_max: workers,
            workers: Arc::new(Semaphore::new(workers)),
            waiting: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Runs `work` (a hash or a check) on a worker, or refuses it if too many wait.
    pub async fn run<R, F>(&self, work: F) -> Result<R, Status>
    where
        F: FnOnce(&PasswordHasher, &mut HashMemory) -> R + Send + 'static,
        R: Send + 'static,
    {
        let waiting = Waiting(Arc::clone(&self.waiting));
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= WAITING_MAX {
            return Err(status::overloaded(format!(
                "{WAITING_MAX} password checks are already waiting on this node; retry shortly"
            )));
        }
        let permit = Arc::clone(&self.workers)
            .acquire_owned()
            .await
            .map_err(|_| status::internal("the password pool is closed"))?;
        drop(waiting);
        let take = |memories: &Mutex<Vec<HashMemory>>| {
            let mut memories = memories.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            memories.pop()
        };
        // Only a computation that panicked loses its memory; the next one then allocates
        // a replacement. At most `workers` exist at a time: each is held under a permit.
        let mut memory = take(&self.memories).unwrap_or_else(|| self.hasher.memory());
        let hasher = Arc::clone(&self.hasher);
        let memories = Arc::clone(&self.memories);
        let workers_max = self.workers_max;
        let result = run_blocking(move || {
            let result = work(&hasher, &mut memory);
            let mut memories = memories.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            assert!(memories.len() < workers_max, "more working memories than workers");
            memories.push(memory);
            // The worker is free only once its memory is back.
            drop(permit);
            result
        })
        .await;
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::chat::credentials::PasswordHashCost;

    /// Beyond the waiting bound a request is refused at once with OVERLOADED; the work that
    /// was admitted all completes, in no more working memories than workers.
    #[tokio::test]
    async fn the_pool_refuses_beyond_its_queue_and_reuses_its_memory() {
        use tonic_types::StatusExt;
        let mut rng = StdRng::seed_from_u64(3);
        let hasher = PasswordHasher::new(PasswordHashCost::MINIMUM, &mut rng).unwrap();
        let pool = Arc::new(PasswordPool::new(hasher, 2));
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let hold = Arc::new(Mutex::new(hold));
        // Two workers held busy, then WAITING_MAX requests queued behind them.
        let mut admitted = Vec::new();
        for _ in 0..2 + WAITING_MAX {
            let pool = Arc::clone(&pool);
            let hold = Arc::clone(&hold);
            admitted.push(tokio::task::spawn(async move {
                pool.run(move |_, memory| {
                    let _ = hold.lock().unwrap().recv();
                    memory.bytes()
                })
                .await
            }));
            tokio::task::yield_now().await;
        }
        until(|| pool.waiting.load(Ordering::Acquire) == WAITING_MAX, "the requests wait").await;
        let refused = pool.run(|_, _| ()).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert_eq!(refused.get_details_error_info().unwrap().reason, chorus_proto::wire::OVERLOADED);
        for _ in 0..admitted.len() {
            release.send(()).unwrap();
        }
        for task in admitted {
            assert!(task.await.unwrap().unwrap() > 0);
        }
        assert_eq!(pool.memories.lock().unwrap().len(), 2, "the two memories came back, and no more were made");
    }

    /// Waits (a bounded time) until `condition` holds.
    async fn until(condition: impl Fn() -> bool, what: &str) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while !condition() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// Requests cancelled while they wait or while their computation runs (a client that
    /// gives up, a `grpc-timeout`) neither stay counted as waiting nor free their worker
    /// before the computation ends: the pool still runs at most `workers` computations,
    /// in no more memories, and takes new requests afterwards.
    #[tokio::test]
    async fn cancelled_requests_neither_leak_a_waiting_place_nor_free_a_busy_worker() {
        let mut rng = StdRng::seed_from_u64(4);
        let hasher = PasswordHasher::new(PasswordHashCost::MINIMUM, &mut rng).unwrap();
        let pool = Arc::new(PasswordPool::new(hasher, 1));
        let running = Arc::new(AtomicUsize::new(0));
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let hold = Arc::new(Mutex::new(hold));
        let busy = |pool: &Arc<PasswordPool>| {
            let (pool, hold, running) = (Arc::clone(pool), Arc::clone(&hold), Arc::clone(&running));
            tokio::task::spawn(async move {
                pool.run(move |_, _| {
                    assert_eq!(running.fetch_add(1, Ordering::AcqRel), 0, "two computations at once");
                    let _ = hold.lock().unwrap().recv();
                    running.fetch_sub(1, Ordering::AcqRel);
                })
                .await
            })
        };
        // One computation running, then more than WAITING_MAX waits, all cancelled.
        let first = busy(&pool);
        until(|| running.load(Ordering::Acquire) == 1, "the first computation runs").await;
        for _ in 0..3 {
            let waits: Vec<_> = (0..WAITING_MAX).map(|_| busy(&pool)).collect();
            until(|| pool.waiting.load(Ordering::Acquire) == WAITING_MAX, "the requests wait").await;
            for wait in &waits {
                wait.abort();
            }
            for wait in waits {
                assert!(wait.await.unwrap_err().is_cancelled());
            }
            assert_eq!(pool.waiting.load(Ordering::Acquire), 0, "cancelled waits are no longer counted");
        }
        // The running computation's request is cancelled too: its worker stays busy.
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        let second = busy(&pool);
        until(|| pool.waiting.load(Ordering::Acquire) == 1, "the new request waits for the busy worker").await;
        release.send(()).unwrap();
        release.send(()).unwrap();
        second.await.unwrap().expect("a request after the cancellations is served");
        assert_eq!(pool.memories.lock().unwrap().len(), 1, "one worker, one memory");
    }
}
