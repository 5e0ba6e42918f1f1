//! The chat state machine as the runtime shares it: one SQLite connection behind a mutex,
//! and a watch of the applied index that live subscriptions wait on.

use std::sync::{Arc, Mutex, MutexGuard};

use chorus_proto::v1::Command;
use tokio::sync::watch;

use crate::chat::{ChatStateMachine, Outcome, StateMachineError};
use crate::seam::run_blocking;

pub struct ChatState {
    machine: Mutex<ChatStateMachine>,
    applied: watch::Sender<u64>,
}

impl ChatState {
    pub fn new(machine: ChatStateMachine) -> Result<Arc<Self>, StateMachineError> {
        let last_applied = machine.last_applied()?;
        let (applied, _) = watch::channel(last_applied);
        Ok(Arc::new(Self { machine: Mutex::new(machine), applied }))
    }

    fn lock(&self) -> MutexGuard<'_, ChatStateMachine> {
        // A panic while holding the lock is an invariant failure inside apply; the process
        // is going down anyway, and the database rolled the transaction back.
        self.machine.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs a query against the applied state, off the async workers.
    pub async fn read<R, F>(self: &Arc<Self>, query: F) -> R
    where
        F: FnOnce(&ChatStateMachine) -> R + Send + 'static,
        R: Send + 'static,
    {
        let state = Arc::clone(self);
        run_blocking(move || query(&state.lock())).await
    }

    /// Applies a committed command at `index` and wakes everyone watching the applied index.
    /// Blocking: call it from a blocking context.
    pub fn apply_blocking(&self, index: u64, command: &Command) -> Result<Outcome, StateMachineError> {
        let outcome = self.lock().apply(index, command)?;
        self.applied.send_replace(index);
        Ok(outcome)
    }

    /// The index of the last applied command.
    pub fn last_applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// A receiver that changes whenever a command is applied.
    pub fn watch_applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }
}
