//! The chat state machine as the runtime shares it: one SQLite connection behind a mutex,
//! and a watch of the applied index that live subscriptions wait on.

use std::sync::{Arc, Mutex, MutexGuard};

use chorus_proto::v1::Command;

use crate::chat::{ChatStateMachine, Outcome, StateMachineError};
use crate::seam::run_blocking;
use crate::watch::Watch;

pub struct ChatState {
    machine: Mutex<ChatStateMachine>,
    applied: Watch<u64>,
}

impl ChatState {
    pub fn new(machine: ChatStateMachine) -> Result<Arc<Self>, StateMachineError> {
        let last_applied = machine.last_applied()?;
        Ok(Arc::new(Self { machine: Mutex::new(machine), applied: Watch::new(last_applied) }))
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

    /// Applies committed log entries (`None`: an entry that is not a chat command) in one
    /// transaction and wakes everyone watching the applied index. Blocking: call it from a
    /// blocking context.
    pub fn apply_blocking(&self, batch: &[(u64, Option<Command>)]) -> Result<Vec<Option<Outcome>>, StateMachineError> {
        let Some(&(last_index, _)) = batch.last() else { return Ok(Vec::new()) };
        let borrowed: Vec<(u64, Option<&Command>)> = batch.iter().map(|(index, c)| (*index, c.as_ref())).collect();
        let outcomes = self.lock().apply_batch(&borrowed)?;
        self.applied.set(last_index);
        Ok(outcomes)
    }

    /// The index of the last applied command.
    pub fn last_applied(&self) -> u64 {
        self.applied.get()
    }

    /// The applied index, to wait on: it changes whenever commands are applied.
    pub fn watch_applied(&self) -> Watch<u64> {
        self.applied.clone()
    }
}
