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
    workers: Semaphore,
    waiting: AtomicUsize,
}

impl PasswordPool {
    /// A pool of `workers` (at least one), each with its working memory allocated now.
    pub fn new(hasher: PasswordHasher, workers: usize) -> Self {
        let workers = workers.max(1);
        let memories = (0..workers).map(|_| hasher.memory()).collect();
        Self {
            hasher: Arc::new(hasher),
            memories: Arc::new(Mutex::new(memories)),
            workers: Semaphore::new(workers),
            waiting: AtomicUsize::new(0),
        }
    }

    /// Runs `work` (a hash or a check) on a worker, or refuses it if too many wait.
    pub async fn run<R, F>(&self, work: F) -> Result<R, Status>
    where
        F: FnOnce(&PasswordHasher, &mut HashMemory) -> R + Send + 'static,
        R: Send + 'static,
    {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= WAITING_MAX {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(status::overloaded(format!(
                "{WAITING_MAX} password checks are already waiting on this node; retry shortly"
            )));
        }
        let permit = self.workers.acquire().await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        let _permit = permit.map_err(|_| status::internal("the password pool is closed"))?;
        let lock = |memories: &Mutex<Vec<HashMemory>>| {
            let mut memories = memories.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            memories.pop()
        };
        // A computation whose caller went away still finishes on its blocking thread and
        // drops its memory there; the next one then allocates a replacement. At most
        // `workers` exist at a time either way: each needs a permit.
        let mut memory = lock(&self.memories).unwrap_or_else(|| self.hasher.memory());
        let hasher = Arc::clone(&self.hasher);
        let memories = Arc::clone(&self.memories);
        let result = run_blocking(move || {
            let result = work(&hasher, &mut memory);
            memories.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(memory);
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
        while pool.waiting.load(Ordering::Acquire) < WAITING_MAX {
            tokio::task::yield_now().await;
        }
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
}
