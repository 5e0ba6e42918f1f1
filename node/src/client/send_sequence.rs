//! Numbering a session's sends: what makes a retried send exactly-once without a clock.
//!
//! Each new message of a session gets the next sequence number, and every send tells the
//! server which answers the client already holds (`acknowledged_through`: the lowest
//! sequence still awaiting an answer, minus one), so that the server can forget those and
//! keep its memory of the session bounded. A retry reuses the whole request unchanged.

use std::collections::BTreeSet;

use chorus_proto::v1::SendMessageRequest;

/// The sends of one session: the next number, and which are still awaiting an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendSequence {
    next: u64,
    awaiting: BTreeSet<u64>,
}

impl Default for SendSequence {
    fn default() -> Self {
        Self::new()
    }
}

impl SendSequence {
    /// A new session's numbering: the first message is 1.
    pub fn new() -> Self {
        Self { next: 1, awaiting: BTreeSet::new() }
    }

    /// Resumes a numbering kept elsewhere (the CLI's session file).
    pub fn resume(next: u64, awaiting: impl IntoIterator<Item = u64>) -> Self {
        // 0 is no send's number (a damaged file could hold it): kept, it would make the
        // acknowledgement underflow.
        let awaiting: BTreeSet<u64> =
            awaiting.into_iter().filter(|&sequence| sequence >= 1 && sequence < next).collect();
        Self { next: next.max(1), awaiting }
    }

    /// The next number to hand out.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// The numbers still awaiting an answer.
    pub fn awaiting(&self) -> impl Iterator<Item = u64> + '_ {
        self.awaiting.iter().copied()
    }

    /// Everything at or below this has been answered (or given up on for good).
    pub fn acknowledged_through(&self) -> u64 {
        self.awaiting.first().map_or(self.next - 1, |lowest| lowest - 1)
    }

    /// Numbers a new message; returns its sequence and the acknowledgement to send with it.
    pub fn begin(&mut self) -> (u64, u64) {
        let sequence = self.next;
        self.next = self.next.checked_add(1).expect("2^64 messages in one session");
        let fresh = self.awaiting.insert(sequence);
        let acknowledged_through = self.acknowledged_through();
        // The acknowledgement tells the server it may forget sends: it must never cover
        // this one, or its retry would be refused as acknowledged and the message lost.
        assert!(fresh && acknowledged_through < sequence, "send {sequence} numbered twice or acknowledged early");
        (sequence, acknowledged_through)
    }

    /// The request for a new message, numbered (send it as the session these numbers are
    /// of, with `cluster_call_as!`).
    pub fn request(&mut self, to: String, body: String) -> SendMessageRequest {
        let (sequence, acknowledged_through) = self.begin();
        SendMessageRequest { to, body, sequence, acknowledged_through }
    }

    /// The answer to `sequence` arrived (a message id or a definite error), or the caller
    /// will never retry it: the next send lets the server forget it.
    pub fn finish(&mut self, sequence: u64) {
        self.awaiting.remove(&sequence);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledgements_stop_below_the_oldest_send_still_awaiting_its_answer() {
        let mut sends = SendSequence::new();
        assert_eq!(sends.begin(), (1, 0));
        assert_eq!(sends.begin(), (2, 0));
        sends.finish(2);
        assert_eq!(sends.begin(), (3, 0), "1 is still awaiting its answer");
        sends.finish(1);
        assert_eq!(sends.acknowledged_through(), 2);
        sends.finish(3);
        assert_eq!(sends.begin(), (4, 3));
        let resumed = SendSequence::resume(sends.next(), sends.awaiting());
        assert_eq!(resumed, sends);
        let damaged = SendSequence::resume(5, [0, 3, 9]);
        assert_eq!((damaged.awaiting().collect::<Vec<_>>(), damaged.acknowledged_through()), (vec![3], 2));
    }
}
