//! Password hashing and checking on a bounded pool: a fixed number of computations at a
//! time (half the cores), each in working memory allocated once and reused, and at most
//! [`WAITING_MAX`] requests waiting; beyond that a request is refused at once
//! (RESOURCE_EXHAUSTED, OVERLOADED, with a retry delay) rather than queued without bound.
//! A burst of sign-ups and logins therefore costs a node a fixed amount of memory
//! (workers × the hash cost, 19 MiB each by default) and a bounded queue, and the
//! replication runtime keeps its share of the CPU.

use std::sync::Arc;

use tonic::Status;

use super::status;
use crate::blocking_pool::BlockingPool;
use crate::chat::credentials::{HashMemory, PasswordHasher};

/// Requests waiting for a worker before new ones are refused: a few seconds of work at the
/// default cost on a small machine.
pub const WAITING_MAX: usize = 64;

pub struct PasswordPool {
    hasher: Arc<PasswordHasher>,
    /// One working memory per worker, lent to a computation for its duration.
    memories: BlockingPool<HashMemory>,
}

impl PasswordPool {
    /// A pool of `workers` (at least one), each with its working memory allocated now.
    pub fn new(hasher: PasswordHasher, workers: usize) -> Self {
        let memories = (0..workers.max(1)).map(|_| hasher.memory()).collect();
        Self { hasher: Arc::new(hasher), memories: BlockingPool::new(memories, WAITING_MAX) }
    }

    /// Refuses now if as many requests wait as the pool admits: a request that will need
    /// a password check asks before it does anything else that costs (a read fence is a
    /// heartbeat round), so that a flood of logins is turned away cheaply.
    pub fn refuse_if_full(&self) -> Result<(), Status> {
        if self.memories.waiting() >= WAITING_MAX {
            return Err(status::overloaded(format!(
                "password checks on this node: {WAITING_MAX} requests already wait; retry shortly"
            )));
        }
        Ok(())
    }

    /// Runs `work` (a hash or a check) on a worker, or refuses it if too many wait.
    pub async fn run<R, F>(&self, work: F) -> Result<R, Status>
    where
        F: FnOnce(&PasswordHasher, &mut HashMemory) -> R + Send + 'static,
        R: Send + 'static,
    {
        let hasher = Arc::clone(&self.hasher);
        self.memories
            .run(move |memory| work(&hasher, memory))
            .await
            .map_err(|busy| status::overloaded(format!("password checks on this node: {busy}; retry shortly")))
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use tonic_types::StatusExt;

    use super::*;
    use crate::chat::credentials::PasswordHashCost;

    /// A refusal is OVERLOADED with a retry delay, and the memories are the workers' own,
    /// allocated once: a computation gets one of them.
    #[tokio::test]
    async fn the_pool_refuses_with_overloaded_and_lends_its_memories() {
        let mut rng = StdRng::seed_from_u64(3);
        let hasher = PasswordHasher::new(PasswordHashCost::MINIMUM, &mut rng).unwrap();
        let expected_bytes = hasher.memory().bytes();
        let pool = Arc::new(PasswordPool::new(hasher, 1));
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let hold = Arc::new(std::sync::Mutex::new(hold));
        let mut admitted = Vec::new();
        for _ in 0..1 + WAITING_MAX {
            let (pool, hold) = (Arc::clone(&pool), Arc::clone(&hold));
            admitted.push(tokio::task::spawn(async move {
                pool.run(move |_, memory| {
                    let _ = hold.lock().unwrap().recv();
                    memory.bytes()
                })
                .await
            }));
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while pool.memories.waiting() < WAITING_MAX {
            assert!(tokio::time::Instant::now() < deadline, "the requests never queued");
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let refused = pool.run(|_, _| ()).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert_eq!(refused.get_details_error_info().unwrap().reason, chorus_proto::wire::OVERLOADED);
        assert!(refused.get_details_retry_info().is_some(), "{refused:?}");
        for _ in 0..admitted.len() {
            release.send(()).unwrap();
        }
        for task in admitted {
            assert_eq!(task.await.unwrap().unwrap(), expected_bytes);
        }
        assert_eq!(pool.memories.idle(), 1);
    }
}
