//! Target `api_handlers`: a run of calls to the chat service's handlers, each with a
//! request decoded from the input as tonic would decode it off the wire, and credentials
//! chosen by the input: none, a token a login of this run returned, a made-up token, or a
//! token without its scheme. The service runs over a fresh chat database of one node
//! whose proposals apply at once (a [`DirectProposer`]): no replication, so every run is
//! the handlers' and the state machine's alone. The node is stopping from the start, so a
//! live stream yields its backlog and ends, and the harness drains every stream it opens.
//!
//! Properties: nothing panics; every refusal is a status a client can act on: not
//! `INTERNAL` or `UNKNOWN` (which bad input must never cause: a handler that forms a
//! command apply cannot take is a defect), with a message, and with a Chorus `ErrorInfo`
//! whose reason is one the wire documents.
//!
//! Input: calls, each a method byte, a credentials byte and the request as a `u16`-sized
//! byte string (protobuf).

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use chorus::chat::credentials::{PasswordHashCost, PasswordHasher};
use chorus::chat::{ChatStateMachine, Outcome};
use chorus::cluster_config::Limits;
use chorus::runtime::{ChatState, ProposeError, Proposer};
use chorus::seam::NodeClock;
use chorus::server::{ChatService, LeaderHints, StreamEnds};
use chorus::watch::Watch;
use chorus_proto::v1::chat_server::Chat;
use chorus_proto::v1::{self as pb, Command};
use chorus_proto::wire;
use futures_core::Stream;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

use crate::input::Input;
use crate::scratch::{self, Template};

/// Calls per run.
const CALLS_MAX: usize = 16;
/// More items than a run can put in a stream (16 calls send at most 16 messages).
const STREAM_ITEMS_MAX: usize = 64;

/// Proposals applied on the spot, in the order they are made: a cluster of one whose log
/// commits at once.
pub struct DirectProposer {
    state: Arc<ChatState>,
    last_index: AtomicU64,
}

impl Proposer for DirectProposer {
    fn propose(&self, command: Command) -> impl Future<Output = Result<Outcome, ProposeError>> + Send {
        let index = self.last_index.fetch_add(1, Ordering::SeqCst) + 1;
        let mut outcomes =
            self.state.apply_blocking(&[(index, Some(command))]).unwrap_or_else(|e| panic!("apply failed: {e}"));
        let outcome = outcomes.pop().flatten().expect("one command, one outcome");
        std::future::ready(Ok(outcome))
    }

    fn read_fence(&self) -> impl Future<Output = Result<(), ProposeError>> + Send {
        std::future::ready(Ok(()))
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime for the handlers")
    })
}

fn service(path: &std::path::Path) -> ChatService<DirectProposer> {
    let machine = ChatStateMachine::open(path).expect("a fresh chat database opens");
    let state = ChatState::new(machine).expect("the chat state opens");
    let proposer = Arc::new(DirectProposer { state: Arc::clone(&state), last_index: AtomicU64::new(0) });
    // Seeded, so that a run's tokens and salts are the same every time it is replayed.
    let mut rng = StdRng::seed_from_u64(7);
    let hasher = PasswordHasher::new(PasswordHashCost::MINIMUM, &mut rng).expect("the least cost is valid");
    let ends = StreamEnds {
        // Stopping from the start: a live stream yields its backlog and then ends (with
        // SHUTTING_DOWN) instead of waiting for messages that will never come, so that the
        // harness can drain every stream it opens, and check all of it, in one run.
        stopping: Watch::new(true),
        fault: Watch::new(None),
        leader_known: Watch::new(true),
        leaderless_max: std::time::Duration::from_secs(1),
        clock: NodeClock::system(),
    };
    ChatService::new(state, proposer, hasher, rng, ends, LeaderHints::default(), &Limits::default())
}

/// A request carrying the credentials the input chose.
fn with_credentials<T>(message: T, choice: u8, tokens: &[String]) -> Request<T> {
    let mut request = Request::new(message);
    let value = match choice % 4 {
        0 => return request,
        1 if !tokens.is_empty() => {
            format!("{}{}", wire::BEARER_PREFIX, tokens[usize::from(choice >> 2) % tokens.len()])
        }
        // A token of the right form that no login issued.
        1 | 2 => format!("{}{:064x}", wire::BEARER_PREFIX, choice),
        _ => tokens.first().cloned().unwrap_or_default(),
    };
    if let Ok(value) = value.parse() {
        request.metadata_mut().insert(wire::AUTHORIZATION, value);
    }
    request
}

/// Checks a refusal against the properties above.
fn check_refusal(method: &str, status: &Status) {
    assert!(
        !matches!(status.code(), Code::Internal | Code::Unknown | Code::DataLoss | Code::Ok),
        "{method} answered bad input with {status:?}"
    );
    assert!(!status.message().is_empty(), "{method} refused without a message: {status:?}");
    let info = status.get_details_error_info().unwrap_or_else(|| panic!("{method}: no ErrorInfo in {status:?}"));
    assert_eq!(info.domain, wire::ERROR_DOMAIN, "{method}: {status:?}");
    assert!(wire::ALL_REASONS.contains(&info.reason.as_str()), "{method}: undocumented reason in {status:?}");
}

/// Decodes `bytes` as `T`, as tonic does; `None` is what tonic would refuse itself.
fn decoded<T: prost::Message + Default>(bytes: &[u8]) -> Option<T> {
    T::decode(bytes).ok()
}

/// Makes one call; true if the service accepted it.
async fn call(
    service: &ChatService<DirectProposer>,
    method: u8,
    auth: u8,
    body: &[u8],
    tokens: &mut Vec<String>,
) -> bool {
    macro_rules! unary {
        ($name:literal, $handler:ident, $request:ty) => {{
            let Some(message) = decoded::<$request>(body) else { return false };
            match service.$handler(with_credentials(message, auth, tokens)).await {
                Ok(response) => Ok(response.into_inner()),
                Err(status) => {
                    check_refusal($name, &status);
                    Err(())
                }
            }
        }};
    }
    match method % 11 {
        0 => unary!("CreateAccount", create_account, pb::CreateAccountRequest).is_ok(),
        1 => {
            let Ok(response) = unary!("Login", login, pb::LoginRequest) else { return false };
            assert!(!response.token.is_empty(), "a login without a token");
            tokens.push(response.token);
            true
        }
        2 => unary!("Logout", logout, pb::LogoutRequest).is_ok(),
        3 => unary!("ListAccounts", list_accounts, pb::ListAccountsRequest).is_ok(),
        4 => unary!("SendMessage", send_message, pb::SendMessageRequest).is_ok(),
        5 => unary!("ReadMessages", read_messages, pb::ReadMessagesRequest).is_ok(),
        6 => unary!("History", history, pb::HistoryRequest).is_ok(),
        7 => unary!("DeleteMessages", delete_messages, pb::DeleteMessagesRequest).is_ok(),
        8 => unary!("ChangePassword", change_password, pb::ChangePasswordRequest).is_ok(),
        9 => unary!("DeleteAccount", delete_account, pb::DeleteAccountRequest).is_ok(),
        _ => {
            let Some(message) = decoded::<pb::SubscribeRequest>(body) else { return false };
            match service.subscribe(with_credentials(message, auth, tokens)).await {
                Ok(response) => {
                    // The whole stream: its backlog, then the status it ends with.
                    let mut stream = pin!(response.into_inner());
                    let mut ended = false;
                    for _ in 0..STREAM_ITEMS_MAX {
                        match std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)).await {
                            Some(Ok(message)) => assert!(message.id > 0, "streamed {message:?}"),
                            Some(Err(status)) => check_refusal("Subscribe (stream)", &status),
                            None => {
                                ended = true;
                                break;
                            }
                        }
                    }
                    assert!(ended, "a stream of a stopping node did not end");
                    true
                }
                Err(status) => {
                    check_refusal("Subscribe", &status);
                    false
                }
            }
        }
    }
}

pub fn run(data: &[u8]) {
    accepted_calls(data);
}

/// Runs the calls `data` holds and counts those the service accepted.
pub fn accepted_calls(data: &[u8]) -> usize {
    static EMPTY: OnceLock<Template> = OnceLock::new();
    let empty = Template::get(&EMPTY, |path| {
        ChatStateMachine::open(path).expect("a new chat database opens");
    });
    let scratch = scratch::directory();
    let path = scratch.path().join("chat.db");
    empty.copy_to(&path);
    let service = service(&path);
    let mut input = Input::new(data);
    let mut tokens = Vec::new();
    runtime().block_on(async {
        let mut accepted = 0;
        for _ in 0..CALLS_MAX {
            if input.is_empty() {
                break;
            }
            let (method, auth) = (input.u8(), input.u8());
            let body = input.sized_bytes();
            accepted += usize::from(call(&service, method, auth, body, &mut tokens).await);
        }
        accepted
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seeds;

    fn seed(name: &str) -> Vec<u8> {
        seeds::named("api_handlers", name)
    }

    /// The harness reaches the handlers' inner paths: a story of fifteen calls is accepted
    /// throughout (its repeated send answered as a duplicate) but for the delete that names
    /// a message that does not exist; a run of bad calls is refused throughout.
    #[test]
    fn the_story_is_served_and_bad_calls_are_refused() {
        assert_eq!(accepted_calls(&seed("story")), 14);
        assert_eq!(accepted_calls(&seed("refused")), 0);
    }
}
