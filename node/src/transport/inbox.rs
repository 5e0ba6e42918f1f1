//! The queue of peer messages waiting for the replication runtime, bounded both in messages
//! and in bytes: whatever peers send (or whoever reaches the peer port), what waits in a
//! node's memory stays under [`PEER_INBOX_BYTES_MAX`]. A message that does not fit is
//! dropped, as a congested network would drop it; Raft retransmits what matters.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;

use crate::replication::{Message, MessageBody};

/// Peer messages waiting for the runtime.
pub const PEER_INBOX_MESSAGES_MAX: usize = 4096;
/// Bytes of peer messages waiting for the runtime: room for a full pipeline of appends
/// (16 of at most 1 MiB) from a leader several times over.
pub const PEER_INBOX_BYTES_MAX: usize = 64 * 1024 * 1024;

/// What one message costs the inbox: its entries' payloads and a fixed overhead.
pub fn message_cost(message: &Message) -> usize {
    const OVERHEAD_BYTES: usize = 64;
    OVERHEAD_BYTES
        + match &message.body {
            MessageBody::AppendRequest { entries, .. } => entries.iter().map(|e| e.size_bytes()).sum(),
            _ => 0,
        }
}

/// The sending half, held by the peer service.
#[derive(Clone)]
pub struct InboxSender {
    messages: mpsc::Sender<(Message, usize)>,
    bytes: Arc<AtomicUsize>,
}

/// The receiving half, held by the runtime.
pub struct InboxReceiver {
    messages: mpsc::Receiver<(Message, usize)>,
    bytes: Arc<AtomicUsize>,
}

pub fn peer_inbox() -> (InboxSender, InboxReceiver) {
    let (sender, receiver) = mpsc::channel(PEER_INBOX_MESSAGES_MAX);
    let bytes = Arc::new(AtomicUsize::new(0));
    (InboxSender { messages: sender, bytes: Arc::clone(&bytes) }, InboxReceiver { messages: receiver, bytes })
}

impl InboxSender {
    /// Queues `message` if it fits; returns whether it did.
    pub fn try_send(&self, message: Message) -> bool {
        let cost = message_cost(&message);
        // Reserve the bytes first, so that concurrent senders cannot overshoot together.
        let reserved = self.bytes.fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
            queued.checked_add(cost).filter(|&total| total <= PEER_INBOX_BYTES_MAX)
        });
        if reserved.is_err() {
            return false;
        }
        if self.messages.try_send((message, cost)).is_err() {
            self.bytes.fetch_sub(cost, Ordering::AcqRel);
            return false;
        }
        true
    }
}

impl InboxReceiver {
    fn taken(&self, (message, cost): (Message, usize)) -> Message {
        let before = self.bytes.fetch_sub(cost, Ordering::AcqRel);
        assert!(before >= cost, "the inbox released more bytes than it held");
        message
    }

    pub async fn recv(&mut self) -> Option<Message> {
        let queued = self.messages.recv().await?;
        Some(self.taken(queued))
    }

    pub fn try_recv(&mut self) -> Option<Message> {
        let queued = self.messages.try_recv().ok()?;
        Some(self.taken(queued))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::replication::{Entry, LogPosition, Payload};

    fn append(bytes: usize) -> Message {
        let entry = Entry { term: 1, index: 1, payload: Payload::Command(Bytes::from(vec![0u8; bytes])) };
        Message {
            from: 2,
            to: 1,
            term: 1,
            body: MessageBody::AppendRequest {
                previous: LogPosition::ZERO,
                entries: vec![entry],
                leader_commit: 0,
                heartbeat_round: 0,
                transfer_target: None,
            },
        }
    }

    #[test]
    fn the_inbox_refuses_what_exceeds_its_bytes_and_frees_them_when_taken() {
        let (sender, mut receiver) = peer_inbox();
        let big = PEER_INBOX_BYTES_MAX / 4;
        for _ in 0..3 {
            assert!(sender.try_send(append(big)));
        }
        assert!(!sender.try_send(append(big)), "a fourth quarter (plus overheads) does not fit");
        assert!(sender.try_send(append(1)), "a small message still does");
        assert!(receiver.try_recv().is_some());
        assert!(sender.try_send(append(big)), "taking a message frees its bytes");
        let mut taken = 0;
        while receiver.try_recv().is_some() {
            taken += 1;
        }
        assert_eq!(taken, 4);
        assert_eq!(receiver.bytes.load(Ordering::Acquire), 0);
    }
}
