//! Target `chat_command`: a run of committed log entries as the chat state machine gets
//! them. Each entry is a no-op or a payload decoded as the runtime decodes it
//! ([`decode_logged_command`]), at increasing indices with gaps. Two fresh databases apply
//! them, one in the input's batches and one entry by entry.
//!
//! Properties: apply never fails and never panics, whatever the commands hold (only a
//! storage failure may fail it, and an in-memory disk has none); each batch gives one
//! outcome per entry; the applied index is the last entry's; and the two databases end in
//! the same state (equal digests), as replicas must, however each batched its applies.
//!
//! Input: entries, each a control byte (bit 0: a no-op; bit 1: the batch ends after it;
//! bits 4-7: how many indices are skipped before it) and, for a command, its payload as a
//! `u16`-sized byte string.

use std::sync::OnceLock;

use chorus::chat::{ChatStateMachine, Outcome, decode_logged_command};
use chorus_proto::v1::Command;

use crate::input::Input;
use crate::scratch::{self, Template};

/// Entries per run: enough for stories (accounts, logins, sends, reads), few enough that
/// each run stays fast.
const ENTRIES_MAX: usize = 64;

/// The batches an input describes: `(index, command)` with `None` for a no-op.
pub fn batches(data: &[u8]) -> Vec<Vec<(u64, Option<Command>)>> {
    let mut input = Input::new(data);
    let mut batches = vec![Vec::new()];
    let mut index = 0u64;
    for _ in 0..ENTRIES_MAX {
        if input.is_empty() {
            break;
        }
        let control = input.u8();
        index += 1 + u64::from(control >> 4);
        let command = if control & 1 == 1 { None } else { Some(decode_logged_command(input.sized_bytes())) };
        batches.last_mut().expect("at least one batch").push((index, command));
        if control & 2 == 2 {
            batches.push(Vec::new());
        }
    }
    batches.retain(|batch| !batch.is_empty());
    batches
}

pub fn run(data: &[u8]) {
    let _ = apply_twice(data);
}

/// Applies the entries `data` holds to two fresh replicas, checking the properties above;
/// returns what applying them produced (one outcome per command, in log order).
pub fn apply_twice(data: &[u8]) -> Vec<Outcome> {
    let batches = batches(data);
    static EMPTY: OnceLock<Template> = OnceLock::new();
    let empty = Template::get(&EMPTY, |path| {
        ChatStateMachine::open(path).expect("a new chat database opens");
    });
    let scratch = scratch::directory();
    let mut replicas = ["a.db", "b.db"].map(|name| {
        let path = scratch.path().join(name);
        empty.copy_to(&path);
        ChatStateMachine::open(&path).expect("a fresh chat database opens")
    });
    // Replicas apply what committed in batches of their own making (a follower's are not
    // its leader's): the first in the input's batches, the second one entry at a time.
    let singles: Vec<Vec<(u64, Option<Command>)>> = batches.iter().flatten().map(|entry| vec![entry.clone()]).collect();
    let mut outcomes: [Vec<Outcome>; 2] = Default::default();
    for ((replica, batches), outcomes) in replicas.iter_mut().zip([&batches, &singles]).zip(&mut outcomes) {
        for batch in batches {
            let entries: Vec<(u64, Option<&Command>)> =
                batch.iter().map(|(index, command)| (*index, command.as_ref())).collect();
            let applied = replica.apply_batch(&entries).unwrap_or_else(|e| panic!("apply failed: {e}"));
            assert_eq!(applied.outcomes.len(), entries.len(), "one outcome per entry");
            for ((_, command), outcome) in entries.iter().zip(applied.outcomes) {
                assert_eq!(command.is_some(), outcome.is_some(), "an outcome for each command, none for a no-op");
                outcomes.extend(outcome);
            }
            let last = entries.last().expect("batches are not empty").0;
            assert_eq!(replica.last_applied().expect("the applied index reads back"), last);
        }
    }
    let [a, b] = &replicas;
    let digest = |replica: &ChatStateMachine| replica.queries().state_digest().expect("the state digest reads");
    assert_eq!(digest(a), digest(b), "two replicas applied the same entries into different states");
    let [first, second] = outcomes;
    // What clients are told must not depend on how a replica batched its applies either.
    assert_eq!(first, second, "two replicas gave different outcomes for the same entries");
    first
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seeds;

    fn seed(name: &str) -> Vec<u8> {
        seeds::named("chat_command", name)
    }

    /// The harness reaches the state machine's inner paths: the story's eleven commands
    /// are all applied, none rejected at the door; an entry that does not decode is
    /// refused like a command of no kind, and the entry after it applied.
    #[test]
    fn the_story_is_applied_and_an_undecodable_entry_is_refused() {
        let outcomes = apply_twice(&seed("story"));
        assert_eq!(outcomes.len(), 11, "{outcomes:?}");
        let rejected: Vec<_> = outcomes.iter().filter(|o| matches!(o, Outcome::Rejected(_))).collect();
        assert!(rejected.is_empty(), "{rejected:?}");
        let outcomes = apply_twice(&seed("undecodable"));
        assert!(matches!(outcomes[0], Outcome::Rejected(_)), "{outcomes:?}");
        assert!(matches!(outcomes[1], Outcome::AccountCreated { .. }), "{outcomes:?}");
    }
}
