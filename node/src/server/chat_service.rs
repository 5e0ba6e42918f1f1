//! The `chorus.v1.Chat` gRPC service.
//!
//! Each mutation is validated, turned into a `Command` (with its timestamp, token hash or
//! password hash decided here, before proposing) and proposed through the runtime's
//! [`Proposer`]; its outcome becomes the reply. Reads pass the proposer's read fence and
//! then query the applied state.

use std::sync::{Arc, Mutex};

use chorus_proto::v1::chat_server::Chat;
use chorus_proto::v1::{
    CloseSessionCommand, Command, CreateAccountCommand, CreateAccountRequest, CreateAccountResponse,
    DeleteAccountCommand, DeleteAccountRequest, DeleteAccountResponse, DeleteMessagesCommand, DeleteMessagesRequest,
    DeleteMessagesResponse, HistoryRequest, HistoryResponse, ListAccountsRequest, ListAccountsResponse, LoginRequest,
    LoginResponse, LogoutRequest, LogoutResponse, OpenSessionCommand, ReadMessagesCommand, ReadMessagesRequest,
    ReadMessagesResponse, SendMessageCommand, SendMessageRequest, SendMessageResponse, SubscribeRequest, command,
};
use rand::rngs::StdRng;
use tonic::{Request, Response, Status};

use super::password_pool::PasswordPool;
use super::status::{self, LeaderHints};
use super::subscription::{self, StreamEnds, SubscriptionStream, Subscriptions};
use crate::chat::credentials::{self, PasswordHasher};
use crate::chat::limits::{REPLY_BYTES_MAX, TOKEN_BYTES_MAX};
use crate::chat::{Outcome, SessionUser, validate};
use crate::runtime::{ChatState, Proposer};
use crate::seam::NodeClock;

pub struct ChatService<P> {
    state: Arc<ChatState>,
    proposer: Arc<P>,
    passwords: PasswordPool,
    /// Draws session tokens and password salts; seeded once through the seam.
    rng: Arc<Mutex<StdRng>>,
    /// End live subscriptions: the node stops, or its log was found corrupt.
    stream_ends: StreamEnds,
    hints: LeaderHints,
    subscriptions: Arc<Subscriptions>,
    /// Stamps what people see (message and session times); decides nothing.
    clock: NodeClock,
}

impl<P: Proposer> ChatService<P> {
    pub fn new(
        state: Arc<ChatState>,
        proposer: Arc<P>,
        hasher: PasswordHasher,
        rng: StdRng,
        stream_ends: StreamEnds,
        hints: LeaderHints,
        clock: NodeClock,
    ) -> Self {
        Self {
            state,
            proposer,
            // Half the cores: a burst of logins must leave the replication loop (and the
            // other members, on a small shared machine) room to heartbeat.
            passwords: PasswordPool::new(hasher, (crate::seam::cpu_count() / 2).max(1)),
            rng: Arc::new(Mutex::new(rng)),
            stream_ends,
            hints,
            subscriptions: Arc::default(),
            clock,
        }
    }

    async fn propose(&self, kind: command::Kind) -> Result<Outcome, Status> {
        self.proposer.propose(Command { kind: Some(kind) }).await.map_err(|e| self.hints.propose_error(e))
    }

    async fn read_fence(&self) -> Result<(), Status> {
        self.proposer.read_fence().await.map_err(|e| self.hints.propose_error(e))
    }

    fn with_rng<R>(&self, draw: impl FnOnce(&mut StdRng) -> R) -> R {
        draw(&mut self.rng.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// The live account behind a token, after the read fence.
    async fn session(&self, token: &str) -> Result<(SessionUser, Vec<u8>), Status> {
        let token_hash = token_hash(token)?;
        self.read_fence().await?;
        let lookup = token_hash.clone();
        let user = self.state.read(move |reader| reader.session_user(&lookup)).await.map_err(status::read)?;
        Ok((user.ok_or_else(status::session_invalid)?, token_hash))
    }
}

/// Hashes a presented token; an implausible one cannot name a session.
fn token_hash(token: &str) -> Result<Vec<u8>, Status> {
    if token.is_empty() {
        return Err(status::error(
            tonic::Code::Unauthenticated,
            chorus_proto::wire::SESSION_INVALID,
            "no session token given: log in first",
        ));
    }
    if token.len() > TOKEN_BYTES_MAX {
        return Err(status::session_invalid());
    }
    Ok(credentials::token_hash(token))
}

/// A page reply, checked against the size every client accepts. Pages are cut by bytes
/// when they are made (in apply, for reads), so this never fails: if it does, that is a
/// bug, loud in debug builds and the simulation, an INTERNAL error otherwise.
fn fits_in_reply<T: prost::Message>(reply: T) -> Result<Response<T>, Status> {
    let bytes = reply.encoded_len();
    if bytes > REPLY_BYTES_MAX {
        debug_assert!(false, "a page reply of {bytes} bytes exceeds REPLY_BYTES_MAX");
        tracing::error!(bytes, "a page reply exceeds REPLY_BYTES_MAX");
        return Err(status::internal(format!("internal error: a reply of {bytes} bytes is too large to send")));
    }
    Ok(Response::new(reply))
}

fn unexpected(outcome: Outcome) -> Status {
    // The state machine answered a command with the outcome of another kind: a bug.
    tracing::error!(?outcome, "unexpected outcome for command");
    status::internal("internal error: unexpected outcome")
}

#[tonic::async_trait]
impl<P: Proposer> Chat for ChatService<P> {
    async fn create_account(
        &self,
        request: Request<CreateAccountRequest>,
    ) -> Result<Response<CreateAccountResponse>, Status> {
        let request = request.into_inner();
        let username = validate::canonical_username(&request.username).map_err(status::invalid)?;
        validate::new_password(&request.password).map_err(status::invalid)?;
        let mut salt_rng: StdRng = self.with_rng(rand::SeedableRng::from_rng);
        let password_hash = self
            .passwords
            .run(move |hasher, memory| hasher.hash(&request.password, &mut salt_rng, memory))
            .await?
            .map_err(|e| status::internal(e.to_string()))?;
        let outcome = self
            .propose(command::Kind::CreateAccount(CreateAccountCommand {
                username,
                password_hash,
                created_at_ms: self.clock.unix_time_ms(),
            }))
            .await?;
        match outcome {
            Outcome::AccountCreated { username, .. } => {
                tracing::info!(%username, "account created");
                Ok(Response::new(CreateAccountResponse { username }))
            }
            Outcome::Rejected(rejection) => Err(status::rejection(rejection)),
            other => Err(unexpected(other)),
        }
    }

    async fn login(&self, request: Request<LoginRequest>) -> Result<Response<LoginResponse>, Status> {
        let request = request.into_inner();
        let username = validate::canonical_username(&request.username).map_err(status::invalid)?;
        validate::offered_password(&request.password).map_err(status::invalid)?;
        self.read_fence().await?;
        let lookup = username.clone();
        let credentials = self.state.read(move |reader| reader.credentials(&lookup)).await.map_err(status::read)?;
        let verified = self
            .passwords
            .run(move |hasher: &PasswordHasher, memory| match credentials {
                Some(credentials) => {
                    hasher.verify(&request.password, &credentials.password_hash, memory).then_some(credentials)
                }
                None => {
                    hasher.verify_decoy(&request.password, memory);
                    None
                }
            })
            .await?;
        let Some(credentials) = verified else {
            return Err(status::login_failed());
        };
        let token = self.with_rng(credentials::new_session_token);
        let outcome = self
            .propose(command::Kind::OpenSession(OpenSessionCommand {
                user_id: credentials.user_id,
                token_hash: credentials::token_hash(&token),
                opened_at_ms: self.clock.unix_time_ms(),
            }))
            .await?;
        match outcome {
            Outcome::SessionOpened { username, unread_count } => {
                Ok(Response::new(LoginResponse { token, unread_count, username }))
            }
            Outcome::Rejected(rejection) => Err(status::rejection(rejection)),
            other => Err(unexpected(other)),
        }
    }

    async fn logout(&self, request: Request<LogoutRequest>) -> Result<Response<LogoutResponse>, Status> {
        let token_hash = token_hash(&request.into_inner().token)?;
        match self.propose(command::Kind::CloseSession(CloseSessionCommand { token_hash })).await? {
            Outcome::SessionClosed => Ok(Response::new(LogoutResponse {})),
            Outcome::Rejected(rejection) => Err(status::rejection(rejection)),
            other => Err(unexpected(other)),
        }
    }

    async fn list_accounts(
        &self,
        request: Request<ListAccountsRequest>,
    ) -> Result<Response<ListAccountsResponse>, Status> {
        let request = request.into_inner();
        let pattern = validate::account_pattern(&request.pattern).map_err(status::invalid)?;
        let after = validate::decode_page_token(&request.page_token).map_err(status::invalid)?;
        let page_size = validate::page_size(request.page_size);
        self.read_fence().await?;
        // One name more than the page shows whether another page follows.
        let mut usernames = self
            .state
            .read(move |reader| reader.list_accounts(&pattern, after.as_deref(), page_size + 1))
            .await
            .map_err(status::read)?;
        let next_page_token = if usernames.len() > page_size as usize {
            usernames.truncate(page_size as usize);
            usernames.last().map(|last| validate::encode_page_token(last)).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListAccountsResponse { usernames, next_page_token }))
    }

    async fn send_message(
        &self,
        request: Request<SendMessageRequest>,
    ) -> Result<Response<SendMessageResponse>, Status> {
        let request = request.into_inner();
        let token_hash = token_hash(&request.token)?;
        let to = validate::canonical_username(&request.to).map_err(status::invalid)?;
        validate::message_body(&request.body).map_err(status::invalid)?;
        validate::send_sequence(request.sequence, request.acknowledged_through).map_err(status::invalid)?;
        let outcome = self
            .propose(command::Kind::SendMessage(SendMessageCommand {
                token_hash,
                to,
                body: request.body,
                // For display only: no decision depends on this clock.
                sent_at_ms: self.clock.unix_time_ms(),
                sequence: request.sequence,
                acknowledged_through: request.acknowledged_through,
            }))
            .await?;
        match outcome {
            Outcome::MessageSent { message_id, duplicate } => {
                Ok(Response::new(SendMessageResponse { message_id, duplicate }))
            }
            Outcome::Rejected(rejection) => Err(status::rejection(rejection)),
            other => Err(unexpected(other)),
        }
    }

    async fn read_messages(
        &self,
        request: Request<ReadMessagesRequest>,
    ) -> Result<Response<ReadMessagesResponse>, Status> {
        let request = request.into_inner();
        let token_hash = token_hash(&request.token)?;
        validate::request_id(&request.request_id).map_err(status::invalid)?;
        let outcome = self
            .propose(command::Kind::ReadMessages(ReadMessagesCommand {
                token_hash,
                limit: validate::page_size(request.limit),
                read_at_ms: self.clock.unix_time_ms(),
                request_id: request.request_id,
            }))
            .await?;
        match outcome {
            Outcome::MessagesRead { messages, unread_remaining } => fits_in_reply(ReadMessagesResponse {
                messages: messages.into_iter().map(subscription::to_proto).collect(),
                unread_remaining,
            }),
            Outcome::Rejected(rejection) => Err(status::rejection(rejection)),
            other => Err(unexpected(other)),
        }
    }

    async fn history(&self, request: Request<HistoryRequest>) -> Result<Response<HistoryResponse>, Status> {
        let request = request.into_inner();
        let peer = request.peer.as_deref().map(validate::canonical_username).transpose().map_err(status::invalid)?;
        let limit = validate::page_size(request.limit);
        let before_id = if request.before_id == 0 { u64::MAX } else { request.before_id };
        let (user, _) = self.session(&request.token).await?;
        let page = self
            .state
            .read(move |reader| {
                let peer_id = match &peer {
                    Some(peer) => match reader.user_id(peer)? {
                        Some(peer_id) => Some(peer_id),
                        None => return Ok(Err(peer.clone())),
                    },
                    None => None,
                };
                reader.history(user.user_id, peer_id, before_id, limit).map(Ok)
            })
            .await
            .map_err(status::read)?
            .map_err(|peer| {
                status::error(
                    tonic::Code::NotFound,
                    chorus_proto::wire::NOT_FOUND,
                    format!("user '{peer}' does not exist"),
                )
            })?;
        let next_before_id = if page.more { page.messages.last().map_or(0, |m| m.message_id) } else { 0 };
        fits_in_reply(HistoryResponse {
            messages: page.messages.into_iter().map(subscription::to_proto).collect(),
            next_before_id,
        })
    }

    async fn delete_messages(
        &self,
        request: Request<DeleteMessagesRequest>,
    ) -> Result<Response<DeleteMessagesResponse>, Status> {
        let request = request.into_inner();
        let token_hash = token_hash(&request.token)?;
        let ids = validate::message_ids(&request.ids).map_err(status::invalid)?;
        match self.propose(command::Kind::DeleteMessages(DeleteMessagesCommand { token_hash, ids })).await? {
            Outcome::MessagesDeleted { count } => Ok(Response::new(DeleteMessagesResponse { deleted: count })),
            Outcome::Rejected(rejection) => Err(status::rejection(rejection)),
            other => Err(unexpected(other)),
        }
    }

    async fn delete_account(
        &self,
        request: Request<DeleteAccountRequest>,
    ) -> Result<Response<DeleteAccountResponse>, Status> {
        let request = request.into_inner();
        validate::offered_password(&request.password).map_err(status::invalid)?;
        let (user, token_hash) = self.session(&request.token).await?;
        let lookup = user.username.clone();
        let credentials = self
            .state
            .read(move |reader| reader.credentials(&lookup))
            .await
            .map_err(status::read)?
            .ok_or_else(status::session_invalid)?;
        let stored_hash = credentials.password_hash.clone();
        let verified =
            self.passwords.run(move |hasher, memory| hasher.verify(&request.password, &stored_hash, memory)).await?;
        if !verified {
            return Err(status::error(
                tonic::Code::Unauthenticated,
                chorus_proto::wire::WRONG_PASSWORD,
                "wrong password: the account was not deleted",
            ));
        }
        let outcome = self
            .propose(command::Kind::DeleteAccount(DeleteAccountCommand {
                token_hash,
                password_hash: credentials.password_hash,
                deleted_at_ms: self.clock.unix_time_ms(),
            }))
            .await?;
        match outcome {
            Outcome::AccountDeleted => {
                tracing::info!(username = %user.username, "account deleted");
                Ok(Response::new(DeleteAccountResponse {}))
            }
            Outcome::Rejected(rejection) => Err(status::rejection(rejection)),
            other => Err(unexpected(other)),
        }
    }

    type SubscribeStream = SubscriptionStream;

    async fn subscribe(&self, request: Request<SubscribeRequest>) -> Result<Response<Self::SubscribeStream>, Status> {
        let request = request.into_inner();
        let token_hash = token_hash(&request.token)?;
        if let Some(fault) = self.stream_ends.fault.get() {
            // A node that takes no part will never deliver anything new.
            return Err(status::not_applied(fault));
        }
        // No read fence as a rule: a subscription is served from whatever this node has
        // applied and catches up as it applies more; resuming by after_id makes that safe
        // on any node. But a session this node does not know yet may be one it has not
        // applied: only the leader, after a fence, may say it does not exist.
        let lookup = token_hash.clone();
        let mut user = self.state.read(move |reader| reader.session_user(&lookup)).await.map_err(status::read)?;
        if user.is_none() {
            self.read_fence().await?;
            let lookup = token_hash.clone();
            user = self.state.read(move |reader| reader.session_user(&lookup)).await.map_err(status::read)?;
        }
        let user = user.ok_or_else(status::session_invalid)?;
        let slot = self.subscriptions.open(&token_hash, user.user_id)?;
        let stream = subscription::start(
            Arc::clone(&self.state),
            token_hash,
            user.user_id,
            request.after_id,
            self.stream_ends.clone(),
            slot,
        );
        Ok(Response::new(stream))
    }
}
