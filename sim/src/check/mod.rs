//! The checkers. Each reads a [`History`] and reports every violation it finds; each is
//! shown to fail on a planted bug (see `tests/planted_bugs.rs`) and on hand-made histories
//! (the unit tests here).

mod accounts;
mod mailbox;

use std::fmt;

use crate::history::History;

pub use accounts::accounts_linearizable;
pub use mailbox::{durability, mailboxes_linearizable, no_phantoms};

/// A property a run broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub checker: &'static str,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.checker, self.detail)
    }
}

/// 5. Liveness: every operation completed, with a definite answer, within `bound` of
///    simulated time. Required only where at most two nodes were faulty at a time.
pub fn liveness(history: &History, bound: std::time::Duration) -> Vec<Violation> {
    let mut found = Vec::new();
    for operation in &history.operations {
        let detail = match &operation.completed {
            None => Some(format!("{:?} invoked at {:?} never completed", operation.op, operation.invoked)),
            Some((_, crate::history::Outcome::Unknown(why))) => {
                Some(format!("{:?} invoked at {:?} ended without an answer: {why}", operation.op, operation.invoked))
            }
            Some((at, _)) if *at - operation.invoked > bound => {
                Some(format!("{:?} took {:?}, more than the {bound:?} allowed", operation.op, *at - operation.invoked))
            }
            Some(_) => None,
        };
        if let Some(detail) = detail {
            found.push(Violation { checker: "liveness", detail });
        }
    }
    found
}

/// Every history checker (convergence, liveness and the Raft observer are checked by the
/// scenario as the run goes).
pub fn check_history(history: &History) -> Vec<Violation> {
    let mut violations = durability(history);
    violations.extend(no_phantoms(history));
    violations.extend(mailboxes_linearizable(history));
    violations.extend(accounts_linearizable(history));
    violations
}
