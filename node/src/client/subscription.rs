//! A subscription that survives its node: when the stream breaks it is opened again on
//! another node, resuming after the last message delivered, so the caller sees every
//! message once, in order.

use chorus_proto::v1::{Message, SubscribeRequest};
use tonic::{Status, Streaming};

use super::{ClusterClient, ErrorVerdict, error_verdict};

pub struct Subscription<'a> {
    client: &'a mut ClusterClient,
    token: String,
    last_delivered: u64,
    stream: Option<Streaming<Message>>,
    /// How many streams were opened so far (the current one's number).
    streams_opened: u64,
}

/// A message exactly as a node's stream sent it, before the subscription drops repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDelivery {
    pub message: Message,
    /// Which stream (1, 2, ...: one per node subscribed to) it came on.
    pub stream: u64,
    /// Whether it is news: its id is above everything delivered before. A server keeps its
    /// streams in id order after `after_id`, so anything else is a server's fault.
    pub fresh: bool,
}

impl<'a> Subscription<'a> {
    pub(super) fn new(client: &'a mut ClusterClient, token: String, after_id: u64) -> Self {
        Self { client, token, last_delivered: after_id, stream: None, streams_opened: 0 }
    }

    /// The id of the last message delivered.
    pub fn last_delivered(&self) -> u64 {
        self.last_delivered
    }

    /// The next message. Waits as long as it takes for one to arrive; gives up with
    /// UNAVAILABLE only when no node could be subscribed to for the client's call deadline,
    /// and with the node's answer when it refuses (an ended session, say).
    pub async fn next(&mut self) -> Result<Message, Status> {
        loop {
            let raw = self.next_raw().await?;
            // The server sends ids above `after_id` in order; a resumed stream starts after
            // the last one delivered. Check it anyway: a repeat here would be a duplicate
            // shown to a person.
            if raw.fresh {
                return Ok(raw.message);
            }
        }
    }

    /// The next message as the node sent it, repeats included (for checkers that judge the
    /// server's streams, not the library's).
    pub async fn next_raw(&mut self) -> Result<RawDelivery, Status> {
        let policy = self.client.policy();
        let mut backoff = policy.backoff_min;
        let mut give_up_at = crate::seam::monotonic_now() + policy.call_deadline;
        let mut last_failure = String::new();
        let mut opened_at = crate::seam::monotonic_now();
        loop {
            if self.stream.is_none() {
                if crate::seam::monotonic_now() >= give_up_at {
                    // Subscribing changes nothing: nothing was applied either way.
                    return Err(super::cluster_unreachable(policy.call_deadline, &last_failure, false));
                }
                let server = self.client.preferred;
                let request = SubscribeRequest { token: self.token.clone(), after_id: self.last_delivered };
                let mut chat = self.client.chat_of(server);
                let mut hint = None;
                match tokio::time::timeout(policy.attempt_timeout, chat.subscribe(request)).await {
                    Ok(Ok(response)) => {
                        self.stream = Some(response.into_inner());
                        self.streams_opened += 1;
                        opened_at = crate::seam::monotonic_now();
                    }
                    Ok(Err(status)) => match error_verdict(&status) {
                        ErrorVerdict::Final => return Err(status),
                        ErrorVerdict::Retry { leader, .. } => {
                            hint = leader.and_then(|address| self.client.server_index(&address));
                            last_failure = format!("{}: {}", self.client.servers[server], status.message());
                        }
                    },
                    Err(_) => last_failure = format!("{}: no answer", self.client.servers[server]),
                }
                if self.stream.is_none() {
                    match hint {
                        Some(leader) => self.client.preferred = leader,
                        None => self.client.next_server(),
                    }
                    let pause = self.client.jittered(backoff);
                    tokio::time::sleep(pause).await;
                    backoff = (backoff * 2).min(policy.backoff_max);
                    continue;
                }
            }
            let stream = self.stream.as_mut().expect("opened above");
            match stream.message().await {
                Ok(Some(message)) => {
                    let fresh = message.id > self.last_delivered;
                    self.last_delivered = self.last_delivered.max(message.id);
                    return Ok(RawDelivery { message, stream: self.streams_opened, fresh });
                }
                Ok(None) => {}
                Err(status) if error_verdict(&status) == ErrorVerdict::Final => return Err(status),
                Err(status) => last_failure = status.message().to_owned(),
            }
            // The stream ended or broke: resume elsewhere, after a pause. One that lived a
            // while was healthy, and the next starts afresh; one that ended at once (a node
            // that takes the stream and ends it, as it shuts down) counts as a failed
            // attempt, so that nodes all doing so are not subscribed to in a hot loop.
            self.stream = None;
            self.client.next_server();
            let now = crate::seam::monotonic_now();
            if now.saturating_duration_since(opened_at) >= policy.backoff_max {
                backoff = policy.backoff_min;
                give_up_at = now + policy.call_deadline;
            }
            let pause = self.client.jittered(backoff);
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(policy.backoff_max);
        }
    }
}
