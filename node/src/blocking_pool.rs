//! A fixed set of resources (read-only database connections, password-hash memories), each
//! lent to one blocking computation at a time, with a bounded number of callers waiting
//! for one; beyond that a caller is refused at once ([`PoolBusy`]) rather than queued
//! without bound.
//!
//! A waiting caller is a future, not a blocking thread: however many wait, they hold no
//! thread of the runtime's blocking pool, which the replication loop's own disk writes
//! and apply use too. (Waiting inside a blocking thread, 512 slow queries would fill that
//! pool and the next fsync would queue behind them.)
//!
//! Cancellation: a caller that goes away while it waits (a client that gave up, a
//! `grpc-timeout`) stops being counted; one that goes away while its computation runs
//! leaves the computation to finish on its thread, with its resource, which comes back
//! only then. So there are never more computations at once than resources.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::seam::run_blocking;

pub struct BlockingPool<T> {
    idle: Arc<Mutex<Vec<T>>>,
    /// One permit per idle resource: a caller holding one finds a resource in `idle`.
    permits: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    waiting_max: usize,
    size: usize,
}

/// Every resource is busy and `waiting_max` callers already wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("all {resources} workers are busy and {waiting_max} requests already wait for one")]
pub struct PoolBusy {
    pub resources: usize,
    pub waiting_max: usize,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while the list is held cannot leave it inconsistent (a push or a pop).
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A caller counted as waiting until it gets a resource or goes away.
struct Waiting(Arc<AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A resource lent to a computation, with the permit that stands for it: given back when
/// the computation ends, even by a panic, the resource before the permit.
struct Lent<T> {
    resource: Option<T>,
    idle: Arc<Mutex<Vec<T>>>,
    _permit: OwnedSemaphorePermit,
}

impl<T> Drop for Lent<T> {
    fn drop(&mut self) {
        if let Some(resource) = self.resource.take() {
            lock(&self.idle).push(resource);
        }
    }
}

impl<T: Send + 'static> BlockingPool<T> {
    /// A pool lending `resources` (at least one), with at most `waiting_max` callers
    /// waiting (0: refuse whenever all are busy).
    pub fn new(resources: Vec<T>, waiting_max: usize) -> Self {
        assert!(!resources.is_empty(), "a pool needs at least one resource");
        Self {
            permits: Arc::new(Semaphore::new(resources.len())),
            size: resources.len(),
            idle: Arc::new(Mutex::new(resources)),
            waiting: Arc::new(AtomicUsize::new(0)),
            waiting_max,
        }
    }

    /// Runs `work` with a resource on a blocking thread, once one is free; refused if every
    /// resource is busy and `waiting_max` callers already wait.
    pub async fn run<R, F>(&self, work: F) -> Result<R, PoolBusy>
    where
        F: FnOnce(&mut T) -> R + Send + 'static,
        R: Send + 'static,
    {
        let permit = match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let waiting = Waiting(Arc::clone(&self.waiting));
                if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.waiting_max {
                    return Err(PoolBusy { resources: self.size, waiting_max: self.waiting_max });
                }
                let permit = Arc::clone(&self.permits).acquire_owned().await;
                drop(waiting);
                permit.expect("the pool's semaphore is never closed")
            }
        };
        let resource = lock(&self.idle).pop().expect("a permit stands for an idle resource");
        let mut lent = Lent { resource: Some(resource), idle: Arc::clone(&self.idle), _permit: permit };
        Ok(run_blocking(move || work(lent.resource.as_mut().expect("lent until dropped"))).await)
    }

    /// Callers waiting for a resource now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Resources not lent now.
    pub fn idle(&self) -> usize {
        lock(&self.idle).len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Waits (a bounded time) until `condition` holds.
    async fn until(condition: impl Fn() -> bool, what: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// A pool of one counter, whose computations wait for a release and check that none
    /// runs beside another.
    struct Held {
        pool: Arc<BlockingPool<u32>>,
        running: Arc<AtomicUsize>,
        release: std::sync::mpsc::Sender<()>,
        hold: Arc<Mutex<std::sync::mpsc::Receiver<()>>>,
    }

    impl Held {
        fn new(waiting_max: usize) -> Self {
            let (release, hold) = std::sync::mpsc::channel();
            Self {
                pool: Arc::new(BlockingPool::new(vec![0], waiting_max)),
                running: Arc::new(AtomicUsize::new(0)),
                release,
                hold: Arc::new(Mutex::new(hold)),
            }
        }

        fn start(&self) -> tokio::task::JoinHandle<Result<u32, PoolBusy>> {
            let (pool, hold, running) = (Arc::clone(&self.pool), Arc::clone(&self.hold), Arc::clone(&self.running));
            tokio::task::spawn(async move {
                pool.run(move |uses| {
                    assert_eq!(running.fetch_add(1, Ordering::AcqRel), 0, "two computations at once");
                    let _ = lock(&hold).recv();
                    running.fetch_sub(1, Ordering::AcqRel);
                    *uses += 1;
                    *uses
                })
                .await
            })
        }
    }

    /// Beyond `waiting_max` callers are refused at once; the admitted ones all run, one at
    /// a time, on the one resource.
    #[tokio::test]
    async fn callers_beyond_the_waiting_bound_are_refused_and_the_rest_served_in_turn() {
        let held = Held::new(8);
        let admitted: Vec<_> = (0..9).map(|_| held.start()).collect();
        until(|| held.pool.waiting() == 8, "eight wait behind the first").await;
        let refused = held.pool.run(|_| 0).await.unwrap_err();
        assert_eq!(refused.waiting_max, 8);
        for _ in 0..admitted.len() {
            held.release.send(()).unwrap();
        }
        let mut uses: Vec<u32> = Vec::new();
        for call in admitted {
            uses.push(call.await.unwrap().unwrap());
        }
        uses.sort_unstable();
        assert_eq!(uses, (1..=9).collect::<Vec<_>>(), "each ran once, on the one resource");
        assert_eq!(held.pool.idle(), 1);
    }

    /// With no room to wait, a caller is refused whenever the resource is busy, and served
    /// when it is free.
    #[tokio::test]
    async fn a_pool_without_waiting_room_refuses_only_while_busy() {
        let held = Held::new(0);
        let first = held.start();
        until(|| held.running.load(Ordering::Acquire) == 1, "the first computation runs").await;
        assert!(held.pool.run(|_| 0).await.is_err());
        held.release.send(()).unwrap();
        assert_eq!(first.await.unwrap(), Ok(1));
        assert_eq!(held.pool.run(|uses| *uses).await, Ok(1));
    }

    /// Callers cancelled while they wait, or while their computation runs, neither stay
    /// counted as waiting nor free the resource before the computation ends; the pool
    /// takes new callers afterwards. (Before, 64 cancelled waits refused every later
    /// caller, and a cancelled caller freed its place while its computation still ran.)
    #[tokio::test]
    async fn cancelled_callers_neither_leak_a_waiting_place_nor_free_a_busy_resource() {
        let held = Held::new(16);
        let first = held.start();
        until(|| held.running.load(Ordering::Acquire) == 1, "the first computation runs").await;
        for _ in 0..3 {
            let waits: Vec<_> = (0..16).map(|_| held.start()).collect();
            until(|| held.pool.waiting() == 16, "the callers wait").await;
            for wait in &waits {
                wait.abort();
            }
            for wait in waits {
                assert!(wait.await.unwrap_err().is_cancelled());
            }
            assert_eq!(held.pool.waiting(), 0, "cancelled waits are no longer counted");
        }
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        let second = held.start();
        until(|| held.pool.waiting() == 1, "a new caller waits for the busy resource").await;
        held.release.send(()).unwrap();
        held.release.send(()).unwrap();
        assert_eq!(second.await.unwrap(), Ok(2), "served after the cancelled computation ended");
        assert_eq!(held.pool.idle(), 1);
    }
}
