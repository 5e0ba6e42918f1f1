//! A subscription that survives its node: when the stream breaks it is opened again on
//! another node, resuming after the last message delivered, so the caller sees every
//! message once, in order.

use chorus_proto::v1::{Message, SubscribeRequest};
use chorus_proto::wire;
use tonic::{Status, Streaming};
use tonic_types::StatusExt;

use super::{ClusterClient, ErrorVerdict, error_verdict};
use crate::backoff::Backoff;

pub struct Subscription<'a> {
    client: &'a mut ClusterClient,
    token: String,
    last_delivered: u64,
    stream: Option<Streaming<Message>>,
    /// How many streams were opened so far (the current one's number).
    streams_opened: u64,
    /// When the current stream was opened.
    opened_at: tokio::time::Instant,
    /// Since when no stream could be opened and kept (none yet: since the first attempt),
    /// and since when every stream kept was ended by a node that could not keep it current
    /// (it knew no leader). The subscription gives up once either is the client's call
    /// deadline ago.
    failing_since: Option<tokio::time::Instant>,
    behind_since: Option<tokio::time::Instant>,
    /// The pause before the next attempt, doubled at each failure.
    backoff: Backoff,
    /// What the nodes said since the last delivery, for the answer when it gives up.
    unserved: super::Unserved,
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
        let backoff = client.backoff();
        Self {
            client,
            token,
            last_delivered: after_id,
            stream: None,
            streams_opened: 0,
            opened_at: crate::seam::monotonic_now(),
            failing_since: None,
            behind_since: None,
            backoff,
            unserved: super::Unserved::default(),
        }
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
        loop {
            if self.stream.is_none() {
                let now = crate::seam::monotonic_now();
                let failing_since = *self.failing_since.get_or_insert(now);
                let too_long =
                    |since: tokio::time::Instant| now.saturating_duration_since(since) >= policy.call_deadline;
                if too_long(failing_since) || self.behind_since.is_some_and(too_long) {
                    // Subscribing changes nothing: nothing was applied either way.
                    return Err(self.unserved.cluster_unreachable(policy.call_deadline, false));
                }
                let server = self.client.preferred;
                let request = super::authorized(SubscribeRequest { after_id: self.last_delivered }, &self.token)?;
                let mut chat = self.client.chat_of(server);
                let mut hint = None;
                match tokio::time::timeout(policy.attempt_timeout, chat.subscribe(request)).await {
                    Ok(Ok(response)) => {
                        self.stream = Some(response.into_inner());
                        self.streams_opened += 1;
                        self.opened_at = crate::seam::monotonic_now();
                    }
                    Ok(Err(status)) => match error_verdict(&status) {
                        ErrorVerdict::Final => return Err(status),
                        ErrorVerdict::Retry { leader, .. } => {
                            hint = leader.and_then(|address| self.client.server_index(&address));
                            self.unserved.note(&self.client.servers[server], &status);
                        }
                    },
                    Err(_) => self.unserved.note_silence(&self.client.servers[server]),
                }
                if self.stream.is_none() {
                    match hint {
                        Some(leader) => self.client.preferred = leader,
                        None => self.client.next_server(),
                    }
                    self.pause().await;
                    continue;
                }
            }
            let stream = self.stream.as_mut().expect("opened above");
            let mut node_behind = false;
            match stream.message().await {
                Ok(Some(message)) => {
                    // Delivering is the proof of health: failures count afresh from here.
                    self.failing_since = None;
                    self.unserved = super::Unserved::default();
                    self.behind_since = None;
                    self.backoff.reset();
                    let fresh = message.id > self.last_delivered;
                    self.last_delivered = self.last_delivered.max(message.id);
                    return Ok(RawDelivery { message, stream: self.streams_opened, fresh });
                }
                Ok(None) => {}
                Err(status) if error_verdict(&status) == ErrorVerdict::Final => return Err(status),
                Err(status) => {
                    node_behind = status
                        .get_details_error_info()
                        .is_some_and(|info| info.domain == wire::ERROR_DOMAIN && info.reason == wire::NOT_APPLIED);
                    self.unserved.note(&self.client.servers[self.client.preferred], &status);
                    if node_behind {
                        // The node ended the stream because it has known no leader a while.
                        self.unserved.note_leaderless();
                    }
                }
            }
            // The stream ended or broke: resume elsewhere, after a pause. One that lived a
            // while was kept: attempts count afresh from its end. One that ended at once (a
            // node that takes the stream and ends it, as it shuts down) is a failed attempt,
            // so that nodes all doing so are not subscribed to in a hot loop. One its node
            // ended because it knew no leader starts (or continues) a time of being behind,
            // so that a cluster without a majority is given up on after the call deadline.
            self.stream = None;
            self.client.next_server();
            let now = crate::seam::monotonic_now();
            if now.saturating_duration_since(self.opened_at) >= policy.backoff_max {
                self.failing_since = Some(now);
                if node_behind {
                    self.behind_since.get_or_insert(now);
                } else {
                    self.behind_since = None;
                    self.backoff.reset();
                }
            } else {
                self.failing_since.get_or_insert(now);
            }
            self.pause().await;
        }
    }

    /// Waits before the next attempt, a little longer each time.
    async fn pause(&mut self) {
        tokio::time::sleep(self.backoff.next_pause()).await;
    }
}
