//! Live delivery: a stream of the messages a user receives.
//!
//! The database is the only source: the stream remembers the last id it delivered and,
//! whenever the applied index moves, asks for what came after it. Messages cannot be
//! missed between the backlog and the live part, nor delivered twice, because there is no
//! second source to reconcile.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use chorus_proto::v1::Message;
use tokio::sync::mpsc;
use tonic::Status;

use super::status;
use crate::chat::MessageView;
use crate::runtime::ChatState;
use crate::watch::Watch;

/// Messages fetched from the database per query.
const SUBSCRIPTION_BATCH_MAX: u32 = 256;
/// Messages buffered between the fetching task and a slow client; when full, fetching waits.
const SUBSCRIPTION_BUFFER_MAX: usize = 256;

/// Starts streaming to one subscriber; the task ends when the client goes away, its session
/// ends, or the node shuts down.
pub fn start(
    state: Arc<ChatState>,
    token_hash: Vec<u8>,
    user_id: u64,
    after_id: u64,
    stopping: Watch<bool>,
) -> ReceiverStream {
    let (sender, receiver) = mpsc::channel(SUBSCRIPTION_BUFFER_MAX);
    let applied = state.watch_applied();
    tokio::task::spawn(async move {
        let mut last_delivered = after_id;
        loop {
            // Note the applied index's version *before* querying: anything applied after
            // this point wakes the wait below, so nothing slips between the two.
            let seen = applied.version();
            let token_hash = token_hash.clone();
            let fetched = state
                .read(move |machine| -> Result<Option<Vec<MessageView>>, _> {
                    if machine.session_user(&token_hash)?.is_none_or(|session| session.user_id != user_id) {
                        return Ok(None);
                    }
                    machine
                        .received_after(user_id, last_delivered, SUBSCRIPTION_BATCH_MAX)
                        .map(|page| Some(page.messages))
                })
                .await;
            let batch = match fetched {
                Ok(Some(batch)) => batch,
                Ok(None) => {
                    let _ = sender.send(Err(status::session_invalid())).await;
                    return;
                }
                Err(error) => {
                    let _ = sender.send(Err(status::storage(error))).await;
                    return;
                }
            };
            let full_batch = batch.len() == SUBSCRIPTION_BATCH_MAX as usize;
            for message in batch {
                assert!(message.message_id > last_delivered, "subscription would go backwards");
                last_delivered = message.message_id;
                if sender.send(Ok(to_proto(message))).await.is_err() {
                    return;
                }
            }
            if full_batch {
                continue;
            }
            // `biased`: a fixed polling order keeps simulations replayable.
            let stopping = tokio::select! {
                biased;
                _ = applied.changed_since(seen) => false,
                _ = stopping.wait_for(|stopping| *stopping) => true,
                () = sender.closed() => return,
            };
            if stopping {
                let shutting_down = status::error(
                    tonic::Code::Unavailable,
                    chorus_proto::wire::SHUTTING_DOWN,
                    "this node is shutting down",
                );
                let _ = sender.send(Err(shutting_down)).await;
                return;
            }
        }
    });
    ReceiverStream(receiver)
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

/// The receiving end of a subscription as the stream tonic sends from.
pub struct ReceiverStream(mpsc::Receiver<Result<Message, Status>>);

impl futures_core::Stream for ReceiverStream {
    type Item = Result<Message, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}
