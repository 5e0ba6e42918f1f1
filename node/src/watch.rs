//! A watched value whose waiters wake in a fixed order.
//!
//! tokio's `watch` channel spreads its waiters over several notifiers chosen at random from
//! a thread-local generator that madsim cannot seed, so which waiter runs first differs
//! from run to run and a simulation no longer replays. This is the small part of it that
//! Chorus uses, on a single `Notify`, whose waiters wake in the order they started waiting.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

struct Shared<T> {
    /// The value and how many times it was set.
    state: Mutex<(T, u64)>,
    notify: Notify,
}

/// A value that tasks can wait on. Clones share it.
pub struct Watch<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Watch<T> {
    fn clone(&self) -> Self {
        Self { shared: Arc::clone(&self.shared) }
    }
}

impl<T: Clone> Watch<T> {
    pub fn new(value: T) -> Self {
        Self { shared: Arc::new(Shared { state: Mutex::new((value, 0)), notify: Notify::new() }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (T, u64)> {
        self.shared.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sets the value and wakes every waiter.
    pub fn set(&self, value: T) {
        {
            let mut state = self.lock();
            state.0 = value;
            state.1 += 1;
        }
        self.shared.notify.notify_waiters();
    }

    /// Changes the value in place if `change` says so, waking waiters only then.
    pub fn set_if(&self, change: impl FnOnce(&mut T) -> bool) {
        let changed = {
            let mut state = self.lock();
            let changed = change(&mut state.0);
            if changed {
                state.1 += 1;
            }
            changed
        };
        if changed {
            self.shared.notify.notify_waiters();
        }
    }

    pub fn get(&self) -> T {
        self.lock().0.clone()
    }

    /// How many times the value was set: pass it to [`Watch::changed_since`].
    pub fn version(&self) -> u64 {
        self.lock().1
    }

    /// Waits until the value is set after `version` was read; returns the new version.
    pub async fn changed_since(&self, version: u64) -> u64 {
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            // Register before looking, so that a set between the look and the wait wakes us.
            notified.as_mut().enable();
            let current = self.version();
            if current > version {
                return current;
            }
            notified.await;
        }
    }

    /// Waits until the value satisfies `ready`; returns it.
    pub async fn wait_for(&self, ready: impl Fn(&T) -> bool) -> T {
        loop {
            let version = self.version();
            let value = self.get();
            if ready(&value) {
                return value;
            }
            self.changed_since(version).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_see_every_change_they_wait_for() {
        let watch = Watch::new(0u64);
        let waiter = {
            let watch = watch.clone();
            tokio::task::spawn(async move { watch.wait_for(|v| *v >= 3).await })
        };
        for value in 1..=3 {
            tokio::task::yield_now().await;
            watch.set(value);
        }
        assert_eq!(waiter.await.unwrap(), 3);
        let version = watch.version();
        watch.set_if(|v| {
            *v += 1;
            true
        });
        assert_eq!(watch.changed_since(version).await, version + 1);
        watch.set_if(|_| false);
        assert_eq!(watch.version(), version + 1);
    }
}
