//! The log of a node that is a cluster of one: a command is committed as soon as it is
//! applied, because the apply transaction is itself fsynced (`synchronous=FULL`) before
//! the outcome is returned.

use std::sync::Arc;

use chorus_proto::v1::Command;

use super::{ChatState, ProposeError, Proposer};
use crate::chat::Outcome;
use crate::seam::run_blocking;

pub struct SingleNodeLog {
    state: Arc<ChatState>,
    /// Serializes proposals: the index of the last command given to the state machine.
    last_index: tokio::sync::Mutex<u64>,
}

impl SingleNodeLog {
    pub fn new(state: Arc<ChatState>) -> Self {
        let last_index = tokio::sync::Mutex::new(state.last_applied());
        Self { state, last_index }
    }
}

impl Proposer for SingleNodeLog {
    async fn propose(&self, command: Command) -> Result<Outcome, ProposeError> {
        let mut last_index = self.last_index.lock().await;
        let index = *last_index + 1;
        let state = Arc::clone(&self.state);
        let outcome = run_blocking(move || state.apply_blocking(index, &command))
            .await
            .map_err(|e| ProposeError::Storage(e.to_string()))?;
        // Only a successful apply consumes the index; a failed one rolled back entirely.
        *last_index = index;
        Ok(outcome)
    }

    async fn read_fence(&self) -> Result<(), ProposeError> {
        // Every proposal returns only after it is applied, so the applied state already
        // holds every acknowledged write.
        Ok(())
    }
}
