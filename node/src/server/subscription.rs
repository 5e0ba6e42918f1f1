//! Live delivery: a stream of the messages a user receives.
//!
//! The database is the only source: the stream remembers the last id it delivered and,
//! whenever an apply touches the user's mailbox or sessions, asks for what came after it.
//! Messages cannot be missed between the backlog and the live part, nor delivered twice,
//! because there is no second source to reconcile.
//!
//! The stream fetches only when tonic asks it for the next message, which it does only
//! when the connection can take more: a client that stops reading stops the fetching, and
//! what waits in the node for it is at most one fetch ([`FETCH_BYTES_MAX`]). Each session
//! may hold [`SUBSCRIPTIONS_PER_SESSION_MAX`] streams, and a node
//! [`SUBSCRIPTIONS_PER_NODE_MAX`], so memory stays bounded however many streams are
//! opened and however much is sent to them.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use chorus_proto::v1::Message;
use chorus_proto::wire;
use tonic::{Code, Status};

use super::status;
use crate::chat::MessageView;
use crate::runtime::{ChatState, MailboxWatch};
use crate::watch::Watch;

/// Most messages fetched from the database at once.
const FETCH_MESSAGES_MAX: u32 = 64;
/// Most bytes fetched at once (at least one message, itself at most 64 KiB): what a slow
/// subscriber can hold in the node beyond what the connection buffers.
const FETCH_BYTES_MAX: usize = 64 * 1024;
/// Live streams per session: a client needs one; a few allow reconnecting before the node
/// notices that the old connection died.
pub const SUBSCRIPTIONS_PER_SESSION_MAX: usize = 4;
/// Live streams per account (all its sessions together): a person's few devices, and no
/// more, so that a handful of accounts cannot take a node's every stream.
pub const SUBSCRIPTIONS_PER_ACCOUNT_MAX: usize = 16;
/// Live streams per node.
pub const SUBSCRIPTIONS_PER_NODE_MAX: usize = 4096;

/// The streams open on this node, by session and by account.
#[derive(Default)]
pub struct Subscriptions {
    open: Mutex<OpenStreams>,
}

#[derive(Default)]
struct OpenStreams {
    total: usize,
    by_session: BTreeMap<Vec<u8>, usize>,
    by_account: BTreeMap<u64, usize>,
}

/// One open stream's place in [`Subscriptions`]; freed when the stream is dropped.
pub struct SubscriptionSlot {
    subscriptions: Arc<Subscriptions>,
    token_hash: Vec<u8>,
    user_id: u64,
}

/// Counts one more stream under `key`.
fn take<K: Ord>(counts: &mut BTreeMap<K, usize>, key: K) {
    *counts.entry(key).or_insert(0) += 1;
}

/// Counts one stream fewer under `key`, forgetting it at zero.
fn give_back<K: Ord>(counts: &mut BTreeMap<K, usize>, key: &K) {
    let open = counts.get_mut(key).expect("an open stream has a slot");
    assert!(*open > 0, "subscription slots went below zero");
    *open -= 1;
    if *open == 0 {
        counts.remove(key);
    }
}

impl Subscriptions {
    fn lock(&self) -> std::sync::MutexGuard<'_, OpenStreams> {
        self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a slot for a stream of `user_id`'s session `token_hash`, if the bounds allow.
    pub fn open(self: &Arc<Self>, token_hash: &[u8], user_id: u64) -> Result<SubscriptionSlot, Status> {
        let mut open = self.lock();
        if open.total >= SUBSCRIPTIONS_PER_NODE_MAX {
            return Err(status::overloaded(format!(
                "this node serves {SUBSCRIPTIONS_PER_NODE_MAX} live subscriptions, its most; subscribe on another node or later"
            )));
        }
        let limit = |what: &str, most: usize| {
            status::error(
                Code::ResourceExhausted,
                wire::SUBSCRIPTIONS_LIMIT,
                format!("this {what} already has {most} live subscriptions on this node, its most: close one first"),
            )
        };
        if open.by_session.get(token_hash).copied().unwrap_or(0) >= SUBSCRIPTIONS_PER_SESSION_MAX {
            return Err(limit("session", SUBSCRIPTIONS_PER_SESSION_MAX));
        }
        if open.by_account.get(&user_id).copied().unwrap_or(0) >= SUBSCRIPTIONS_PER_ACCOUNT_MAX {
            return Err(limit("account", SUBSCRIPTIONS_PER_ACCOUNT_MAX));
        }
        open.total += 1;
        take(&mut open.by_session, token_hash.to_vec());
        take(&mut open.by_account, user_id);
        Ok(SubscriptionSlot { subscriptions: Arc::clone(self), token_hash: token_hash.to_vec(), user_id })
    }
}

impl Drop for SubscriptionSlot {
    fn drop(&mut self) {
        let mut open = self.subscriptions.lock();
        assert!(open.total > 0, "subscription slots went below zero");
        open.total -= 1;
        give_back(&mut open.by_session, &self.token_hash);
        give_back(&mut open.by_account, &self.user_id);
    }
}

/// Where a stream is: what it delivered last and how it learns of new messages.
struct Cursor {
    state: Arc<ChatState>,
    token_hash: Vec<u8>,
    user_id: u64,
    last_delivered: u64,
    mailbox: MailboxWatch,
    ends: StreamEnds,
    _slot: SubscriptionSlot,
}

/// What ends every live stream of a node: it stops, it stops taking part (its log was
/// found corrupt, so it will never apply anything again), or it has known no leader for
/// `leaderless_max` (it is cut off from the majority, which goes on without it: its
/// streams would stay silent, however many messages the others store). Either way the
/// client resumes on another node.
#[derive(Clone)]
pub struct StreamEnds {
    pub stopping: Watch<bool>,
    pub fault: Watch<Option<String>>,
    /// Whether the node knows a leader (it changes only when that does).
    pub leader_known: Watch<bool>,
    pub leaderless_max: Duration,
    /// The node's clock: a session that expires ends its streams.
    pub clock: crate::seam::NodeClock,
}

/// Returns once the node has known no leader for `max` on end.
async fn leaderless_for(leader_known: &Watch<bool>, max: Duration) {
    loop {
        leader_known.wait_for(|known| !known).await;
        if tokio::time::timeout(max, leader_known.wait_for(|known| *known)).await.is_err() {
            return;
        }
    }
}

/// Longest a stream waits before looking at its session's expiry again.
const EXPIRY_WAIT_MAX: Duration = Duration::from_secs(24 * 3600);

/// What the next fetch produced.
enum Fetched {
    Messages(Vec<MessageView>),
    /// The stream ends with this status (the session ended, the node stops, storage failed).
    End(Status),
}

/// Waits for the next messages after the cursor, or for the reason the stream ends.
async fn fetch(mut cursor: Cursor) -> (Cursor, Fetched) {
    loop {
        // Note the mailbox's version *before* querying: anything applied after this point
        // wakes the wait below, so nothing slips between the two.
        let seen = cursor.mailbox.watch().version();
        let (token_hash, user_id, after) = (cursor.token_hash.clone(), cursor.user_id, cursor.last_delivered);
        let now_ms = cursor.ends.clock.unix_time_ms();
        let fetched = cursor
            .state
            .read(move |reader| {
                let session = reader.session_user(&token_hash, now_ms)?;
                let Some(session) = session.filter(|session| session.user_id == user_id) else {
                    return Ok(None);
                };
                let page = reader.received_after(user_id, after, FETCH_MESSAGES_MAX, FETCH_BYTES_MAX)?;
                Ok(Some((page, session.expires_at_ms)))
            })
            .await;
        let (page, expires_at_ms) = match fetched {
            Ok(Some(fetched)) => fetched,
            Ok(None) => return (cursor, Fetched::End(status::session_invalid())),
            Err(error) => return (cursor, Fetched::End(status::read(error))),
        };
        if let Some(last) = page.messages.last() {
            assert!(last.message_id > cursor.last_delivered, "subscription would go backwards");
            cursor.last_delivered = last.message_id;
            return (cursor, Fetched::Messages(page.messages));
        }
        // `biased`: a fixed polling order keeps simulations replayable.
        // The session's expiry by this node's clock ends the wait too: the next fetch then
        // finds it expired.
        // (At most a day at a time: a far expiry is no deadline a timer needs to hold.)
        let until_expiry = Duration::from_millis(expires_at_ms.saturating_sub(now_ms)).min(EXPIRY_WAIT_MAX);
        let end = tokio::select! {
            biased;
            _ = cursor.mailbox.watch().changed_since(seen) => None,
            () = tokio::time::sleep(until_expiry) => None,
            _ = cursor.ends.stopping.wait_for(|stopping| *stopping) => {
                Some(status::error(Code::Unavailable, wire::SHUTTING_DOWN, "this node is shutting down"))
            }
            fault = cursor.ends.fault.wait_for(Option::is_some) => {
                Some(status::not_applied(fault.unwrap_or_default()))
            }
            () = leaderless_for(&cursor.ends.leader_known, cursor.ends.leaderless_max) => {
                Some(status::not_applied(format!(
                    "this node has known no leader for {} ms (it may be cut off from the cluster); resume on another node",
                    cursor.ends.leaderless_max.as_millis()
                )))
            }
        };
        if let Some(end) = end {
            return (cursor, Fetched::End(end));
        }
    }
}

type PendingFetch = Pin<Box<dyn Future<Output = (Cursor, Fetched)> + Send>>;

/// The stream tonic sends from. It holds at most one fetch of messages, and fetches the next
/// only when asked for a message it does not have.
pub struct SubscriptionStream {
    buffered: VecDeque<MessageView>,
    cursor: Option<Cursor>,
    pending: Option<PendingFetch>,
    /// Set once the stream has ended: it answers `None` from then on.
    ended: bool,
}

/// Streams every message received by `user_id` (the session of `token_hash`) with id
/// greater than `after_id`, until the client goes away, the session ends or the node stops.
pub fn start(
    state: Arc<ChatState>,
    token_hash: Vec<u8>,
    user_id: u64,
    after_id: u64,
    ends: StreamEnds,
    slot: SubscriptionSlot,
) -> SubscriptionStream {
    let mailbox = state.watch_mailbox(user_id);
    let cursor = Cursor { state, token_hash, user_id, last_delivered: after_id, mailbox, ends, _slot: slot };
    SubscriptionStream { buffered: VecDeque::new(), cursor: Some(cursor), pending: None, ended: false }
}

impl futures_core::Stream for SubscriptionStream {
    type Item = Result<Message, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(message) = this.buffered.pop_front() {
                return Poll::Ready(Some(Ok(to_proto(message))));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            let pending = match &mut this.pending {
                Some(pending) => pending,
                None => {
                    let cursor = this.cursor.take().expect("a live stream has its cursor or a fetch under way");
                    this.pending.insert(Box::pin(fetch(cursor)))
                }
            };
            let (cursor, fetched) = std::task::ready!(pending.as_mut().poll(cx));
            this.pending = None;
            this.cursor = Some(cursor);
            match fetched {
                Fetched::Messages(messages) => this.buffered.extend(messages),
                Fetched::End(status) => {
                    this.ended = true;
                    // The slot and the mailbox watch go with the cursor, now.
                    this.cursor = None;
                    return Poll::Ready(Some(Err(status)));
                }
            }
        }
    }
}

pub fn to_proto(message: MessageView) -> Message {
    Message {
        id: message.message_id,
        from: message.from,
        to: message.to,
        body: message.body,
        sent_at_ms: message.sent_at_ms,
        read: message.read,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_and_accounts_hold_a_bounded_number_of_streams_and_slots_free_on_drop() {
        use tonic_types::StatusExt;
        let subscriptions = Arc::new(Subscriptions::default());
        let refused_for = |refused: Status, what: &str| {
            assert_eq!(refused.code(), Code::ResourceExhausted);
            assert_eq!(refused.get_details_error_info().unwrap().reason, wire::SUBSCRIPTIONS_LIMIT);
            assert!(refused.message().contains(what), "{refused:?}");
        };
        // Account 1: sessions of four streams each, up to the account's bound.
        let sessions: Vec<Vec<u8>> =
            (0..=SUBSCRIPTIONS_PER_ACCOUNT_MAX / SUBSCRIPTIONS_PER_SESSION_MAX).map(|n| vec![n as u8]).collect();
        let mut slots = Vec::new();
        for session in &sessions[..sessions.len() - 1] {
            for _ in 0..SUBSCRIPTIONS_PER_SESSION_MAX {
                slots.push(subscriptions.open(session, 1).unwrap());
            }
        }
        refused_for(subscriptions.open(&sessions[0], 1).err().unwrap(), "session");
        refused_for(subscriptions.open(sessions.last().unwrap(), 1).err().unwrap(), "account");
        // Another account is not held back by this one.
        let other = subscriptions.open(b"other", 2).unwrap();
        drop(slots);
        drop(other);
        let open = subscriptions.lock();
        assert!(open.total == 0 && open.by_session.is_empty() && open.by_account.is_empty());
        drop(open);
        let _again = subscriptions.open(sessions.last().unwrap(), 1).unwrap();
    }
}
