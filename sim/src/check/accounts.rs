//! Linearizability of the account table, by a Wing-Gong/Lowe search partitioned per
//! account name: for each name, some order of its operations consistent with real time
//! must explain every answer. Operations whose outcome is unknown may take effect at any
//! point after they were invoked, or never.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use super::Violation;
use crate::history::{History, Op, Operation, Outcome};

/// Most operations per name the search takes on (a bit set of them is the memo key).
const OPS_PER_KEY_MAX: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Create(Option<bool>),
    Exists(Option<bool>),
}

struct KeyOp {
    invoked: Duration,
    /// `None`: unknown outcome, which may land any time after invocation.
    completed: Option<Duration>,
    expect: Expect,
}

pub fn accounts_linearizable(history: &History) -> Vec<Violation> {
    let mut by_key: BTreeMap<&str, Vec<KeyOp>> = BTreeMap::new();
    for operation in &history.operations {
        let Some(key_op) = key_op(operation) else { continue };
        let user = match &operation.op {
            Op::CreateAccount { user } | Op::AccountExists { user } => user.as_str(),
            _ => continue,
        };
        by_key.entry(user).or_default().push(key_op);
    }
    let mut found = Vec::new();
    for (user, mut ops) in by_key {
        ops.truncate(OPS_PER_KEY_MAX);
        if !search(&ops) {
            found.push(Violation {
                checker: "linearizable",
                detail: format!("no order of the {} operations on account '{user}' explains their answers", ops.len()),
            });
        }
    }
    found
}

fn key_op(operation: &Operation) -> Option<KeyOp> {
    let unknown = matches!(operation.completed, Some((_, Outcome::Unknown(_) | Outcome::Ambiguous(_))) | None);
    let completed = if unknown { None } else { operation.completed_at() };
    let expect = match (&operation.op, operation.completed.as_ref().map(|(_, o)| o)) {
        (Op::CreateAccount { .. }, Some(Outcome::Created)) => Expect::Create(Some(true)),
        (Op::CreateAccount { .. }, Some(Outcome::AlreadyExists)) => Expect::Create(Some(false)),
        (Op::CreateAccount { .. }, _) if unknown => Expect::Create(None),
        (Op::AccountExists { .. }, Some(Outcome::Exists(exists))) => Expect::Exists(Some(*exists)),
        // A read with an unknown outcome constrains nothing.
        _ => return None,
    };
    Some(KeyOp { invoked: operation.invoked, completed, expect })
}

/// Depth-first search for a linearization, memoized on (remaining set, state).
fn search(ops: &[KeyOp]) -> bool {
    let all: u64 = if ops.len() == 64 { u64::MAX } else { (1u64 << ops.len()) - 1 };
    let mut seen: HashSet<(u64, bool)> = HashSet::new();
    explore(ops, all, false, &mut seen)
}

fn explore(ops: &[KeyOp], remaining: u64, exists: bool, seen: &mut HashSet<(u64, bool)>) -> bool {
    // Done when every operation with a known outcome is placed; unknown ones may never
    // have happened.
    let known_left = (0..ops.len()).any(|i| remaining & (1 << i) != 0 && ops[i].completed.is_some());
    if !known_left {
        return true;
    }
    if !seen.insert((remaining, exists)) {
        return false;
    }
    // An operation can go next if no other remaining one completed before it began.
    let earliest_end = (0..ops.len()).filter(|i| remaining & (1 << i) != 0).filter_map(|i| ops[i].completed).min();
    for i in 0..ops.len() {
        if remaining & (1 << i) == 0 || earliest_end.is_some_and(|end| end < ops[i].invoked) {
            continue;
        }
        let next = match ops[i].expect {
            Expect::Create(answer) => {
                if answer.is_some_and(|created| created == exists) {
                    continue;
                }
                true
            }
            Expect::Exists(answer) => {
                if answer.is_some_and(|seen_exists| seen_exists != exists) {
                    continue;
                }
                exists
            }
        };
        if explore(ops, remaining & !(1 << i), next, seen) {
            return true;
        }
    }
    // Unknown operations may also simply not have happened.
    (0..ops.len())
        .filter(|i| remaining & (1 << i) != 0 && ops[*i].completed.is_none())
        .any(|i| explore(ops, remaining & !(1 << i), exists, seen))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(user: &str, create: bool, invoked: u64, completed: u64, outcome: Outcome) -> Operation {
        let user = user.to_owned();
        Operation {
            client: 0,
            op: if create { Op::CreateAccount { user } } else { Op::AccountExists { user } },
            invoked: Duration::from_millis(invoked),
            completed: Some((Duration::from_millis(completed), outcome)),
        }
    }

    fn history(operations: Vec<Operation>) -> History {
        History { operations, ..History::default() }
    }

    #[test]
    fn consistent_histories_pass() {
        let ok = history(vec![
            op("a", false, 0, 5, Outcome::Exists(false)),
            op("a", true, 10, 20, Outcome::Created),
            op("a", false, 15, 18, Outcome::Exists(false)), // concurrent with the create
            op("a", true, 30, 40, Outcome::AlreadyExists),
            op("a", false, 50, 60, Outcome::Exists(true)),
        ]);
        assert_eq!(accounts_linearizable(&ok), vec![]);
        let unknown = history(vec![
            op("b", true, 0, 10, Outcome::Unknown("timeout".into())),
            op("b", false, 20, 30, Outcome::Exists(true)),
        ]);
        assert_eq!(accounts_linearizable(&unknown), vec![]);
    }

    #[test]
    fn impossible_answers_are_caught() {
        // Created twice.
        let twice = history(vec![op("a", true, 0, 10, Outcome::Created), op("a", true, 20, 30, Outcome::Created)]);
        assert_eq!(accounts_linearizable(&twice).len(), 1);
        // Seen, then gone (names are never freed).
        let vanished = history(vec![
            op("a", true, 0, 10, Outcome::Created),
            op("a", false, 20, 30, Outcome::Exists(true)),
            op("a", false, 40, 50, Outcome::Exists(false)),
        ]);
        assert_eq!(accounts_linearizable(&vanished).len(), 1);
        // A stale read after the creation completed.
        let stale =
            history(vec![op("a", true, 0, 10, Outcome::Created), op("a", false, 20, 30, Outcome::Exists(false))]);
        assert_eq!(accounts_linearizable(&stale).len(), 1);
    }
}
