//! Checkers of the mailboxes: durability and exactly-once delivery, no phantoms, and
//! linearizability of mailbox reads.
//!
//! A mailbox is an append-only list of message ids (as in Jepsen's list-append workload):
//! ids are assigned in commit order, so a read that sees message `b` must see every
//! message committed before it, and a later read never sees less. That keeps the check
//! polynomial: no search over interleavings is needed.

use std::collections::{BTreeMap, BTreeSet};

use super::Violation;
use crate::history::{History, Observed, Op, Operation, Outcome};

fn violation(checker: &'static str, detail: String) -> Violation {
    Violation { checker, detail }
}

/// Ids each user may have deleted by the time `before` (a delete invoked earlier that did
/// not certainly fail).
fn maybe_deleted(history: &History) -> BTreeMap<&str, Vec<(u64, &Operation)>> {
    let mut deleted: BTreeMap<&str, Vec<(u64, &Operation)>> = BTreeMap::new();
    for operation in &history.operations {
        if let Op::Delete { user, ids } = &operation.op
            && operation.may_have_happened()
        {
            deleted.entry(user.as_str()).or_default().extend(ids.iter().map(|id| (*id, operation)));
        }
    }
    deleted
}

fn deleted_before(deletes: Option<&Vec<(u64, &Operation)>>, id: u64, before: Option<std::time::Duration>) -> bool {
    deletes.is_some_and(|deletes| {
        deletes.iter().any(|(deleted, op)| *deleted == id && before.is_none_or(|before| op.invoked < before))
    })
}

/// 1. Durability: every acknowledged send is in its recipient's final mailbox (unless the
///    recipient deleted it), with the body that was sent; no message is stored twice; and
///    each user's subscription delivered every message of the final mailbox, once, in order.
pub fn durability(history: &History) -> Vec<Violation> {
    let mut found = Vec::new();
    let deleted = maybe_deleted(history);
    let finals: BTreeMap<&str, BTreeMap<u64, &Observed>> = history
        .final_mailboxes
        .iter()
        .map(|(user, messages)| (user.as_str(), messages.iter().map(|m| (m.id, m)).collect()))
        .collect();
    for operation in &history.operations {
        let (Op::Send { from, to, body }, Some(Outcome::Sent { message_id })) = (&operation.op, operation.ok()) else {
            continue;
        };
        let Some(mailbox) = finals.get(to.as_str()) else { continue };
        match mailbox.get(message_id) {
            Some(stored) if stored.body == *body && stored.from == *from => {}
            Some(stored) => found.push(violation(
                "durability",
                format!("send {body:?} from {from} to {to} was acknowledged as message {message_id}, which holds {stored:?}"),
            )),
            None if deleted_before(deleted.get(to.as_str()), *message_id, None) => {}
            None => found.push(violation(
                "durability",
                format!(
                    "send {body:?} from {from} to {to}, acknowledged as message {message_id} at {:?}, is missing from the final mailbox",
                    operation.completed_at().unwrap_or_default()
                ),
            )),
        }
    }
    for (user, messages) in &history.final_mailboxes {
        let mut bodies: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for message in messages {
            bodies.entry(&message.body).or_default().push(message.id);
        }
        for (body, ids) in bodies.into_iter().filter(|(_, ids)| ids.len() > 1) {
            found.push(violation(
                "exactly-once",
                format!("{user}'s mailbox holds {body:?} {} times: ids {ids:?}", ids.len()),
            ));
        }
    }
    let mut streams: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for delivery in &history.deliveries {
        streams.entry(&delivery.user).or_default().push(delivery.message.id);
    }
    for (user, ids) in &streams {
        if let Some(pair) = ids.windows(2).find(|pair| pair[1] <= pair[0]) {
            found.push(violation(
                "exactly-once",
                format!(
                    "{user}'s subscription delivered message {} after message {} (a repeat or out of order)",
                    pair[1], pair[0]
                ),
            ));
        }
    }
    // What the servers sent, before the client library drops repeats: each stream resumes
    // after the last message delivered, so the ids a user's streams send must rise
    // strictly, across streams too. A server that repeats or reorders fails here even when
    // the library hides it from the user.
    let mut raw: BTreeMap<&str, Vec<(u64, u64)>> = BTreeMap::new();
    for delivery in &history.raw_deliveries {
        raw.entry(&delivery.user).or_default().push((delivery.stream, delivery.id));
    }
    for (user, sent) in &raw {
        if let Some(pair) = sent.windows(2).find(|pair| pair[1].1 <= pair[0].1) {
            let (first, second) = (pair[0], pair[1]);
            let same = if first.0 == second.0 { "on the same stream" } else { "on the stream that resumed it" };
            found.push(violation(
                "subscription streams",
                format!(
                    "a server sent {user} message {} after message {} {same} (a repeat or out of order)",
                    second.1, first.1
                ),
            ));
        }
    }
    for (user, messages) in &history.final_mailboxes {
        let delivered: BTreeSet<u64> = streams.get(user.as_str()).into_iter().flatten().copied().collect();
        let missing: Vec<u64> = messages.iter().map(|m| m.id).filter(|id| !delivered.contains(id)).collect();
        if !missing.is_empty() {
            found
                .push(violation("exactly-once", format!("{user}'s subscription never delivered messages {missing:?}")));
        }
    }
    found
}

/// 2. No phantoms: every message anyone observed was sent (by that sender, to that
///    recipient, with that body), and an id always names the same message.
pub fn no_phantoms(history: &History) -> Vec<Violation> {
    let mut found = Vec::new();
    let sends: BTreeMap<&str, (&str, &str)> = history
        .operations
        .iter()
        .filter_map(|op| match &op.op {
            Op::Send { from, to, body } => Some((body.as_str(), (from.as_str(), to.as_str()))),
            _ => None,
        })
        .collect();
    let mut by_id: BTreeMap<u64, &Observed> = BTreeMap::new();
    let observed = history
        .operations
        .iter()
        .filter_map(|op| match op.ok() {
            Some(Outcome::Messages(messages)) => Some(messages.iter()),
            _ => None,
        })
        .flatten()
        .chain(history.deliveries.iter().map(|d| &d.message))
        .chain(history.final_mailboxes.iter().flat_map(|(_, messages)| messages.iter()));
    for message in observed {
        match sends.get(message.body.as_str()) {
            Some((from, to)) if *from == message.from && *to == message.to => {}
            _ => found.push(violation("no-phantoms", format!("observed a message nobody sent like that: {message:?}"))),
        }
        match by_id.get(&message.id) {
            Some(first) if *first != message => {
                found.push(violation("no-phantoms", format!("id {} named {first:?} and later {message:?}", message.id)))
            }
            _ => {
                by_id.insert(message.id, message);
            }
        }
    }
    found
}

/// 3. Linearizable mailboxes. For every complete read of a whole mailbox:
///    - a send acknowledged before the read began is in it (unless a delete of it may
///      have happened first);
///    - it has no holes: between two ids it holds, every acknowledged message is there;
///    - it holds nothing sent only after it completed;
///    - a later read of the same mailbox holds everything an earlier one held (but what
///      may have been deleted in between).
///
/// For reads of unread messages: no message is returned as newly read twice.
pub fn mailboxes_linearizable(history: &History) -> Vec<Violation> {
    let mut found = Vec::new();
    let deleted = maybe_deleted(history);
    let sends: BTreeMap<&str, &Operation> = history
        .operations
        .iter()
        .filter_map(|op| match &op.op {
            Op::Send { body, .. } => Some((body.as_str(), op)),
            _ => None,
        })
        .collect();
    let mut reads: BTreeMap<&str, Vec<(&Operation, BTreeSet<u64>)>> = BTreeMap::new();
    let mut read_unread: BTreeMap<&str, BTreeMap<u64, &Operation>> = BTreeMap::new();
    for operation in &history.operations {
        match (&operation.op, operation.ok()) {
            (Op::ReadMailbox { user }, Some(Outcome::Messages(messages))) => {
                reads.entry(user).or_default().push((operation, messages.iter().map(|m| m.id).collect()));
                for message in messages {
                    if let Some(send) = sends.get(message.body.as_str())
                        && operation.precedes(send)
                    {
                        found.push(violation(
                            "linearizable",
                            format!(
                                "a read of {user}'s mailbox completed at {:?} saw {:?}, sent only at {:?}",
                                operation.completed_at().unwrap_or_default(),
                                message.body,
                                send.invoked
                            ),
                        ));
                    }
                }
            }
            (Op::ReadUnread { user }, Some(Outcome::Messages(messages))) => {
                let seen = read_unread.entry(user).or_default();
                for message in messages {
                    if let Some(first) = seen.insert(message.id, operation) {
                        found.push(violation(
                            "linearizable",
                            format!(
                                "message {} was returned as unread to {user} twice (at {:?} and {:?})",
                                message.id, first.invoked, operation.invoked
                            ),
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    for (user, user_reads) in &reads {
        let deletes = deleted.get(user);
        let acknowledged: Vec<(u64, &Operation)> = history
            .operations
            .iter()
            .filter_map(|op| match (&op.op, op.ok()) {
                (Op::Send { to, .. }, Some(Outcome::Sent { message_id })) if to == user => Some((*message_id, op)),
                _ => None,
            })
            .collect();
        for (read, ids) in user_reads {
            let read_end = read.completed_at();
            for (id, send) in &acknowledged {
                let may_be_deleted = deleted_before(deletes, *id, read_end);
                if send.precedes(read) && !ids.contains(id) && !may_be_deleted {
                    found.push(violation(
                        "linearizable",
                        format!("message {id} to {user} was acknowledged at {:?} but a read of the mailbox begun at {:?} lacks it", send.completed_at().unwrap_or_default(), read.invoked),
                    ));
                }
                if let (Some(low), Some(high)) = (ids.first(), ids.last())
                    && low < id
                    && id < high
                    && !ids.contains(id)
                    && !may_be_deleted
                {
                    found.push(violation(
                        "linearizable",
                        format!("a read of {user}'s mailbox at {:?} holds messages {low} and {high} but not {id} between them", read.invoked),
                    ));
                }
            }
            for (later, later_ids) in user_reads {
                if !read.precedes(later) {
                    continue;
                }
                for id in ids.difference(later_ids) {
                    if !deleted_before(deletes, *id, later.completed_at()) {
                        found.push(violation(
                            "linearizable",
                            format!(
                                "a read of {user}'s mailbox at {:?} saw message {id}, a later one at {:?} did not",
                                read.invoked, later.invoked
                            ),
                        ));
                    }
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::history::Delivery;

    fn at(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn message(id: u64, body: &str) -> Observed {
        Observed { id, from: "a".into(), to: "b".into(), body: body.into() }
    }

    fn send(body: &str, invoked: u64, completed: u64, outcome: Outcome) -> Operation {
        Operation {
            client: 0,
            op: Op::Send { from: "a".into(), to: "b".into(), body: body.into() },
            invoked: at(invoked),
            completed: Some((at(completed), outcome)),
        }
    }

    fn read(invoked: u64, completed: u64, messages: Vec<Observed>) -> Operation {
        Operation {
            client: 1,
            op: Op::ReadMailbox { user: "b".into() },
            invoked: at(invoked),
            completed: Some((at(completed), Outcome::Messages(messages))),
        }
    }

    fn healthy() -> History {
        History {
            operations: vec![
                send("x", 0, 10, Outcome::Sent { message_id: 1 }),
                send("y", 20, 30, Outcome::Sent { message_id: 2 }),
                read(40, 50, vec![message(1, "x"), message(2, "y")]),
            ],
            deliveries: vec![
                Delivery { user: "b".into(), message: message(1, "x"), at: at(11) },
                Delivery { user: "b".into(), message: message(2, "y"), at: at(31) },
            ],
            raw_deliveries: vec![raw(1, 1, 11), raw(2, 2, 31)],
            final_mailboxes: vec![("b".into(), vec![message(1, "x"), message(2, "y")])],
        }
    }

    fn raw(id: u64, stream: u64, ms: u64) -> crate::history::RawDelivery {
        crate::history::RawDelivery { user: "b".into(), id, stream, at: at(ms) }
    }

    /// A server that repeats a message, or sends one out of order, is caught from the raw
    /// streams even when the client library drops the repeat before the user sees it.
    #[test]
    fn a_server_side_repeat_or_reordering_is_caught() {
        let mut history = healthy();
        history.raw_deliveries.push(raw(2, 2, 40));
        let found = durability(&history);
        assert!(
            found.iter().any(|v| v.checker == "subscription streams" && v.detail.contains("same stream")),
            "{found:?}"
        );
        let mut history = healthy();
        history.raw_deliveries = vec![raw(2, 1, 11), raw(1, 2, 31)];
        let found = durability(&history);
        assert!(found.iter().any(|v| v.detail.contains("resumed it")), "{found:?}");
    }

    #[test]
    fn a_healthy_history_passes() {
        assert_eq!(super::super::check_history(&healthy()), vec![]);
    }

    #[test]
    fn a_lost_acknowledged_send_is_caught() {
        let mut history = healthy();
        history.final_mailboxes[0].1.pop();
        let found = durability(&history);
        assert!(found.iter().any(|v| v.detail.contains("missing from the final mailbox")), "{found:?}");
    }

    #[test]
    fn a_duplicate_is_caught() {
        let mut history = healthy();
        history.final_mailboxes[0].1.push(message(3, "y"));
        assert!(durability(&history).iter().any(|v| v.checker == "exactly-once"));
        history.deliveries.push(Delivery { user: "b".into(), message: message(2, "y"), at: at(60) });
        assert!(durability(&history).iter().any(|v| v.detail.contains("a repeat")));
    }

    #[test]
    fn a_phantom_is_caught() {
        let mut history = healthy();
        history.final_mailboxes[0].1.push(message(9, "never sent"));
        assert!(!no_phantoms(&history).is_empty());
    }

    #[test]
    fn a_stale_read_and_a_hole_are_caught() {
        let mut history = healthy();
        history.operations.push(read(60, 70, vec![message(1, "x")]));
        let found = mailboxes_linearizable(&history);
        assert!(found.iter().any(|v| v.detail.contains("lacks it")), "{found:?}");
        assert!(found.iter().any(|v| v.detail.contains("a later one")), "{found:?}");
        let mut history = healthy();
        history.operations.push(send("z", 32, 35, Outcome::Sent { message_id: 3 }));
        history.operations.push(read(36, 37, vec![message(1, "x"), message(3, "z")]));
        assert!(mailboxes_linearizable(&history).iter().any(|v| v.detail.contains("between them")));
    }

    #[test]
    fn a_deleted_message_may_be_missing() {
        let mut history = healthy();
        history.operations.push(Operation {
            client: 1,
            op: Op::Delete { user: "b".into(), ids: vec![1] },
            invoked: at(55),
            completed: Some((at(58), Outcome::Unknown("timeout".into()))),
        });
        history.operations.push(read(60, 70, vec![message(2, "y")]));
        history.final_mailboxes[0].1.remove(0);
        assert_eq!(super::super::check_history(&history), vec![]);
    }
}
