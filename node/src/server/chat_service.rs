//! The `chorus.v1.Chat` gRPC service.
//!
//! Each mutation is validated, turned into a `Command` (with its timestamp, token hash or
//! password hash decided here, before proposing) and proposed through the runtime's
//! [`Proposer`]; its outcome becomes the reply. Reads pass the proposer's read fence and
//! then query the applied state.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chorus_proto::v1::chat_server::Chat;
use chorus_proto::v1::{
    ChangePasswordCommand, ChangePasswordRequest, ChangePasswordResponse, CloseSessionCommand, Command,
    CreateAccountCommand, CreateAccountRequest, CreateAccountResponse, DeleteAccountCommand, DeleteAccountRequest,
    DeleteAccountResponse, DeleteMessagesCommand, DeleteMessagesRequest, DeleteMessagesResponse, HistoryRequest,
    HistoryResponse, ListAccountsRequest, ListAccountsResponse, LoginRequest, LoginResponse, LogoutRequest,
    LogoutResponse, OpenSessionCommand, ReadMessagesCommand, ReadMessagesRequest, ReadMessagesResponse,
    SendMessageCommand, SendMessageRequest, SendMessageResponse, SubscribeRequest, command,
};
use rand::rngs::StdRng;
use tonic::{Request, Response, Status};

use super::password_pool::PasswordPool;
use super::rate_limit::{ChatLimits, client_ip};
use super::status::{self, LeaderHints};
use super::subscription::{self, StreamEnds, SubscriptionStream, Subscriptions};
use crate::chat::credentials::{self, PasswordHasher};
use crate::chat::limits::{REPLY_BYTES_MAX, TOKEN_BYTES_MAX};
use crate::chat::{Outcome, SessionUser, validate};
use crate::cluster_config::Limits;
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
    /// Stamps what people see (message times) and the proposal time of each command,
    /// which the log's time (session expiry) follows.
    clock: NodeClock,
    /// How long a session opened here lasts.
    session_lifetime: Duration,
    /// Login attempts per account and per address, sends per account.
    limits: ChatLimits,
}

impl<P: Proposer> ChatService<P> {
    pub fn new(
        state: Arc<ChatState>,
        proposer: Arc<P>,
        hasher: PasswordHasher,
        rng: StdRng,
        stream_ends: StreamEnds,
        hints: LeaderHints,
        limits: &Limits,
    ) -> Self {
        // The node's clock, the one its streams end by.
        let clock = stream_ends.clock.clone();
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
            limits: ChatLimits::new(limits, &clock),
            clock,
            session_lifetime: limits.session_lifetime(),
        }
    }

    async fn propose(&self, kind: command::Kind) -> Result<Outcome, Status> {
        let command = Command { kind: Some(kind), proposed_at_ms: self.clock.unix_time_ms() };
        self.proposer.propose(command).await.map_err(|e| self.hints.propose_error(e))
    }

    async fn read_fence(&self) -> Result<(), Status> {
        self.proposer.read_fence().await.map_err(|e| self.hints.propose_error(e))
    }

    /// The live account behind a token and its stored password hash, for a request that
    /// checks the password (after making sure the password pool has room for it).
    /// Password checks here count against the same limits as logins: a stolen token is no
    /// licence to guess the password.
    async fn session_credentials(
        &self,
        token_hash: Vec<u8>,
        address: Option<std::net::IpAddr>,
    ) -> Result<(SessionUser, Vec<u8>, crate::chat::Credentials), Status> {
        self.passwords.refuse_if_full()?;
        let (user, token_hash) = self.session(token_hash).await?;
        self.limits.password_check(&user.username, address)?;
        let lookup = user.username.clone();
        let credentials = self
            .state
            .read(move |reader| reader.credentials(&lookup))
            .await
            .map_err(status::read)?
            .ok_or_else(status::session_invalid)?;
        Ok((user, token_hash, credentials))
    }

    /// The answer to a wrong password from a signed-in caller (`consequence`: what did not
    /// happen), which counts against the account's failed attempts.
    fn wrong_password(&self, username: &str, consequence: &str) -> Status {
        self.limits.password_failed(username);
        status::error(
            tonic::Code::Unauthenticated,
            chorus_proto::wire::WRONG_PASSWORD,
            format!("wrong password: {consequence}"),
        )
    }

    fn with_rng<R>(&self, draw: impl FnOnce(&mut StdRng) -> R) -> R {
        draw(&mut self.rng.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// The live account behind a token, after the read fence.
    async fn session(&self, token_hash: Vec<u8>) -> Result<(SessionUser, Vec<u8>), Status> {
        self.read_fence().await?;
        let (lookup, now_ms) = (token_hash.clone(), self.clock.unix_time_ms());
        let user = self.state.read(move |reader| reader.session_user(&lookup, now_ms)).await.map_err(status::read)?;
        Ok((user.ok_or_else(status::session_invalid)?, token_hash))
    }
}

/// The hash of the session token a request presents in its metadata
/// (`authorization: Bearer <token>`, see chat.proto): the one place a token is read. Only
/// its hash goes further (into commands and lookups); an implausible token cannot name a
/// session.
fn bearer_token_hash<T>(request: &Request<T>) -> Result<Vec<u8>, Status> {
    let refuse = |message: &str| {
        status::error(tonic::Code::Unauthenticated, chorus_proto::wire::SESSION_INVALID, message.to_owned())
    };
    let mut values = request.metadata().get_all(chorus_proto::wire::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(refuse(
            "no session: send 'authorization: Bearer TOKEN' (exactly one) with the token Login returned",
        ));
    };
    let value = value.to_str().map_err(|_| refuse("the authorization metadata is not printable ASCII"))?;
    let prefix = chorus_proto::wire::BEARER_PREFIX;
    let token = match value.get(..prefix.len()) {
        Some(scheme) if scheme.eq_ignore_ascii_case(prefix) => &value[prefix.len()..],
        _ => return Err(refuse("the authorization metadata must be 'Bearer TOKEN'")),
    };
    if token.is_empty() {
        return Err(refuse("the authorization metadata holds no token: log in first"));
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
        let address = client_ip(&request);
        let request = request.into_inner();
        let username = validate::canonical_username(&request.username).map_err(status::invalid)?;
        validate::offered_password(&request.password).map_err(status::invalid)?;
        // Before anything that costs: a flood of attempts is turned away here.
        self.limits.password_check(&username, address)?;
        self.passwords.refuse_if_full()?;
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
            self.limits.password_failed(&username);
            return Err(status::login_failed());
        };
        let token = self.with_rng(credentials::new_session_token);
        let opened_at_ms = self.clock.unix_time_ms();
        let lifetime_ms = u64::try_from(self.session_lifetime.as_millis()).unwrap_or(u64::MAX);
        let outcome = self
            .propose(command::Kind::OpenSession(OpenSessionCommand {
                user_id: credentials.user_id,
                token_hash: credentials::token_hash(&token),
                opened_at_ms,
                // Within SQLite's integers: a session that outlives them lasts "forever".
                expires_at_ms: opened_at_ms.saturating_add(lifetime_ms).min(validate::SQL_INTEGER_MAX),
                password_hash: credentials.password_hash,
            }))
            .await?;
        match outcome {
            Outcome::SessionOpened { username, unread_count, expires_at_ms } => {
                Ok(Response::new(LoginResponse { token, unread_count, username, expires_at_ms }))
            }
            Outcome::Rejected(rejection) => Err(status::rejection(rejection)),
            other => Err(unexpected(other)),
        }
    }

    async fn logout(&self, request: Request<LogoutRequest>) -> Result<Response<LogoutResponse>, Status> {
        let token_hash = bearer_token_hash(&request)?;
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
        let token_hash = bearer_token_hash(&request)?;
        let request = request.into_inner();
        let to = validate::canonical_username(&request.to).map_err(status::invalid)?;
        validate::message_body(&request.body).map_err(status::invalid)?;
        validate::send_sequence(request.sequence, request.acknowledged_through).map_err(status::invalid)?;
        // The account is limited, not the session (an account may hold 64). No lookup: the
        // limiter knows a session's account from its earlier sends' outcomes.
        self.limits.send(&token_hash)?;
        let outcome = self
            .propose(command::Kind::SendMessage(SendMessageCommand {
                token_hash: token_hash.clone(),
                to,
                body: request.body,
                // For display only: no decision depends on this clock.
                sent_at_ms: self.clock.unix_time_ms(),
                sequence: request.sequence,
                acknowledged_through: request.acknowledged_through,
            }))
            .await?;
        match outcome {
            Outcome::MessageSent { message_id, duplicate, sender_id } => {
                if !duplicate {
                    self.limits.sent(&token_hash, sender_id);
                }
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
        let token_hash = bearer_token_hash(&request)?;
        let request = request.into_inner();
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
        let token_hash = bearer_token_hash(&request)?;
        let request = request.into_inner();
        let peer = request.peer.as_deref().map(validate::canonical_username).transpose().map_err(status::invalid)?;
        let limit = validate::page_size(request.limit);
        let before_id = if request.before_id == 0 { u64::MAX } else { request.before_id };
        let (user, _) = self.session(token_hash).await?;
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
        let token_hash = bearer_token_hash(&request)?;
        let request = request.into_inner();
        let ids = validate::message_ids(&request.ids).map_err(status::invalid)?;
        match self.propose(command::Kind::DeleteMessages(DeleteMessagesCommand { token_hash, ids })).await? {
            Outcome::MessagesDeleted { count } => Ok(Response::new(DeleteMessagesResponse { deleted: count })),
            Outcome::Rejected(rejection) => Err(status::rejection(rejection)),
            other => Err(unexpected(other)),
        }
    }

    async fn change_password(
        &self,
        request: Request<ChangePasswordRequest>,
    ) -> Result<Response<ChangePasswordResponse>, Status> {
        let token_hash = bearer_token_hash(&request)?;
        let address = client_ip(&request);
        let request = request.into_inner();
        validate::offered_password(&request.old_password).map_err(status::invalid)?;
        validate::new_password(&request.new_password).map_err(status::invalid)?;
        let (user, token_hash, credentials) = self.session_credentials(token_hash, address).await?;
        let stored_hash = credentials.password_hash.clone();
        let mut salt_rng: StdRng = self.with_rng(rand::SeedableRng::from_rng);
        let new_password_hash = self
            .passwords
            .run(move |hasher, memory| {
                if !hasher.verify(&request.old_password, &stored_hash, memory) {
                    return Ok(None);
                }
                hasher.hash(&request.new_password, &mut salt_rng, memory).map(Some)
            })
            .await?
            .map_err(|e| status::internal(e.to_string()))?;
        let Some(new_password_hash) = new_password_hash else {
            return Err(self.wrong_password(&user.username, "the password was not changed"));
        };
        let outcome = self
            .propose(command::Kind::ChangePassword(ChangePasswordCommand {
                token_hash,
                old_password_hash: credentials.password_hash,
                new_password_hash,
            }))
            .await?;
        match outcome {
            Outcome::PasswordChanged { sessions_ended } => {
                tracing::info!(username = %user.username, sessions_ended, "password changed");
                Ok(Response::new(ChangePasswordResponse { sessions_ended }))
            }
            Outcome::Rejected(rejection) => Err(status::rejection(rejection)),
            other => Err(unexpected(other)),
        }
    }

    async fn delete_account(
        &self,
        request: Request<DeleteAccountRequest>,
    ) -> Result<Response<DeleteAccountResponse>, Status> {
        let token_hash = bearer_token_hash(&request)?;
        let address = client_ip(&request);
        let request = request.into_inner();
        validate::offered_password(&request.password).map_err(status::invalid)?;
        let (user, token_hash, credentials) = self.session_credentials(token_hash, address).await?;
        let stored_hash = credentials.password_hash.clone();
        let verified =
            self.passwords.run(move |hasher, memory| hasher.verify(&request.password, &stored_hash, memory)).await?;
        if !verified {
            return Err(self.wrong_password(&user.username, "the account was not deleted"));
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
        let token_hash = bearer_token_hash(&request)?;
        let request = request.into_inner();
        if let Some(fault) = self.stream_ends.fault.get() {
            // A node that takes no part will never deliver anything new.
            return Err(status::not_applied(fault));
        }
        // No read fence as a rule: a subscription is served from whatever this node has
        // applied and catches up as it applies more; resuming by after_id makes that safe
        // on any node. But a session this node does not know yet may be one it has not
        // applied: only the leader, after a fence, may say it does not exist.
        let (lookup, now_ms) = (token_hash.clone(), self.clock.unix_time_ms());
        let mut user =
            self.state.read(move |reader| reader.session_user(&lookup, now_ms)).await.map_err(status::read)?;
        if user.is_none() {
            self.read_fence().await?;
            let lookup = token_hash.clone();
            user = self.state.read(move |reader| reader.session_user(&lookup, now_ms)).await.map_err(status::read)?;
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
