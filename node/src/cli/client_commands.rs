//! The client verbs: each makes its call through the failover client and prints what a
//! person needs to see.

use std::io::Read as _;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chorus::client::v1::{
    ChangePasswordRequest, CreateAccountRequest, DeleteAccountRequest, DeleteMessagesRequest, HistoryRequest,
    ListAccountsRequest, LoginRequest, LogoutRequest, ReadMessagesRequest, SendMessageRequest,
};
use chorus::client::{ClusterClient, RetryPolicy, new_request_id};
use chorus::seam::unix_time_ms;
use tonic::Code;

use super::format::message_line;
use super::session_file::{self, SavedSession};
use super::{AccountVerb, ClientOptions, Verb, password, rpc_error};

pub fn run(options: &ClientOptions, verb: Verb) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run_verb(options, verb))
}

/// Calls one RPC through the failover client, with the error as a person should read it.
macro_rules! call {
    ($client:expr, $method:ident, $request:expr) => {
        chorus::cluster_call!($client, $method, $request).map_err(|status| rpc_error($client.current_server(), status))
    };
    ($client:expr, $method:ident, $request:expr, as $token:expr) => {
        chorus::cluster_call_as!($client, $method, $request, $token)
            .map_err(|status| rpc_error($client.current_server(), status))
    };
}

async fn run_verb(options: &ClientOptions, verb: Verb) -> Result<()> {
    let session_path = session_file::resolve(options.session_file.as_deref())?;
    let policy =
        RetryPolicy { call_deadline: Duration::from_secs(options.timeout_secs.max(1)), ..RetryPolicy::default() };
    let mut client = ClusterClient::new(&options.servers, policy, options.security()?)?;
    match verb {
        Verb::Account(AccountVerb::Create { username, password_stdin }) => {
            let password = password::obtain(password_stdin, "new password: ")?;
            let response = call!(client, create_account, CreateAccountRequest { username, password })?;
            println!("created account '{}'", response.username);
        }
        Verb::Account(AccountVerb::Password { password_stdin }) => {
            let session = session_file::load(&session_path)?;
            let old_password =
                password::obtain(password_stdin, &format!("current password of '{}': ", session.username))?;
            let new_password = password::obtain_new(password_stdin)?;
            let request = ChangePasswordRequest { old_password, new_password };
            let response = call!(client, change_password, request, as session.token)?;
            println!(
                "changed the password of '{}'; {} other session(s) ended",
                session.username, response.sessions_ended
            );
        }
        Verb::Account(AccountVerb::Delete { password_stdin }) => {
            let session = session_file::load(&session_path)?;
            let password = password::obtain(password_stdin, &format!("password of '{}': ", session.username))?;
            call!(client, delete_account, DeleteAccountRequest { password }, as session.token)?;
            session_file::remove_if_still(&session_path, &session.token)?;
            println!("deleted account '{}'", session.username);
        }
        Verb::Login { username, password_stdin } => {
            let password = password::obtain(password_stdin, &format!("password of '{username}': "))?;
            let response = call!(client, login, LoginRequest { username, password })?;
            let saved = SavedSession::new(response.username, response.token, client.current_server().to_owned());
            session_file::replace(&session_path, &saved)?;
            println!("logged in as '{}': {} unread message(s)", saved.username, response.unread_count);
        }
        Verb::Logout => {
            let session = session_file::load(&session_path)?;
            let result = call!(client, logout, LogoutRequest {}, as session.token);
            // The local copy goes whatever the server said: an expired session is over too.
            session_file::remove_if_still(&session_path, &session.token)?;
            match result {
                Ok(_) => println!("logged out '{}'", session.username),
                Err(_) => println!("logged out '{}' (the server did not confirm the session's end)", session.username),
            }
        }
        Verb::Send { to, body, sequence } => {
            let body = if body.is_empty() { read_stdin_body()? } else { body.join(" ") };
            let (request, token) = numbered_send(&session_path, to.clone(), body, sequence)?;
            let sequence = request.sequence;
            let result = chorus::cluster_call_as!(client, send_message, request, token);
            // Whether the answer is final: then the session acknowledges it with its next
            // send. An unknown outcome stays awaiting, so that a retry is still recognized.
            let answered = result.as_ref().err().is_none_or(|status| !chorus::client::outcome_unknown(status));
            let outcome = match result {
                Ok(response) if response.duplicate => {
                    Ok(format!("already sent as message {} (not stored again)", response.message_id))
                }
                Ok(response) => Ok(format!("sent message {} to {}", response.message_id, to.to_ascii_lowercase())),
                Err(status) if !answered && has_reason(&status, chorus_proto::wire::SESSION_INVALID) => {
                    let error = rpc_error(client.current_server(), status);
                    Err(error.context(
                        "the session ended before this message's outcome was known: it may have been sent; \
                         check `chorus history` (after logging in again) before sending it again",
                    ))
                }
                Err(status) if !answered => {
                    let error = rpc_error(client.current_server(), status);
                    Err(error.context(format!(
                        "to retry this message safely, run the same command with --sequence {sequence}"
                    )))
                }
                Err(status) => Err(rpc_error(client.current_server(), status)),
            };
            // The outcome is told first: what the session file does next (it may be gone,
            // or another session's, after a logout or login meanwhile) cannot hide it.
            if let Ok(line) = &outcome {
                println!("{line}");
            }
            if answered {
                let finished = session_file::update_if_still(&session_path, &token, |session| {
                    let mut sends = session.send_sequence(unix_time_ms());
                    sends.finish(sequence);
                    session.store_send_sequence(&sends, unix_time_ms(), None);
                });
                match finished {
                    Ok(true) => {}
                    Ok(false) => eprintln!("note: the session changed meanwhile; its file was left as it is"),
                    Err(error) => eprintln!("note: could not record the answer in the session file: {error:#}"),
                }
            }
            outcome?;
        }
        Verb::Read { limit } => {
            let session = session_file::load(&session_path)?;
            let request = ReadMessagesRequest { limit, request_id: new_request_id() };
            let response = call!(client, read_messages, request, as session.token)?;
            if response.messages.is_empty() {
                println!("no unread messages");
            }
            for message in &response.messages {
                println!("{}", message_line(message));
            }
            if response.unread_remaining > 0 {
                println!("{} more unread: run `chorus read` again", response.unread_remaining);
            }
        }
        Verb::History { peer, before, limit } => {
            let session = session_file::load(&session_path)?;
            let request = HistoryRequest { peer: peer.clone(), before_id: before, limit };
            let response = call!(client, history, request, as session.token)?;
            if response.messages.is_empty() {
                println!("no messages");
            }
            for message in &response.messages {
                println!("{}", message_line(message));
            }
            if response.next_before_id != 0 {
                let peer = peer.map(|p| format!(" --peer {p}")).unwrap_or_default();
                println!("older: chorus history{peer} --before {}", response.next_before_id);
            }
        }
        Verb::Users { pattern, page_size, page_token } => {
            let request = ListAccountsRequest { pattern: pattern.clone(), page_size, page_token };
            let response = call!(client, list_accounts, request)?;
            if response.usernames.is_empty() {
                println!("no accounts match '{pattern}'");
            }
            for username in &response.usernames {
                println!("{username}");
            }
            if !response.next_page_token.is_empty() {
                println!("more: chorus users '{pattern}' --page-token {}", response.next_page_token);
            }
        }
        Verb::Delete { ids } => {
            let session = session_file::load(&session_path)?;
            let response = call!(client, delete_messages, DeleteMessagesRequest { ids }, as session.token)?;
            println!("deleted {} message(s)", response.deleted);
        }
        Verb::Watch { after } => {
            let session = session_file::load(&session_path)?;
            eprintln!("watching messages for '{}' (Ctrl-C to stop)", session.username);
            let mut subscription = client.subscribe(session.token, after);
            loop {
                match subscription.next().await {
                    Ok(message) => println!("{}", message_line(&message)),
                    Err(status) if status.code() == Code::Unauthenticated => {
                        return Err(anyhow::anyhow!("{}", status.message()));
                    }
                    Err(status) => return Err(rpc_error("the cluster", status)),
                }
            }
        }
        Verb::Cluster(super::ClusterVerb::Status) => super::cluster_status::print(&mut client).await?,
        Verb::Node(_) | Verb::Demo(_) | Verb::Certs(_) => unreachable!("not a client verb"),
    }
    Ok(())
}

/// The request for one `chorus send`: a new sequence from the session file, or the one
/// given (a retry of a send still awaiting its answer, of the same message), with the
/// acknowledgement of every answer this session has.
fn numbered_send(
    session_path: &std::path::Path,
    to: String,
    body: String,
    sequence: Option<u64>,
) -> Result<(SendMessageRequest, String)> {
    session_file::update(session_path, |session| {
        let now = unix_time_ms();
        let mut sends = session.send_sequence(now);
        let digest = session_file::message_digest(&to, &body);
        let (request, begun) = match sequence {
            None => {
                let request = sends.request(to, body);
                let begun = Some((request.sequence, digest));
                (request, begun)
            }
            Some(sequence) => {
                let Some(awaiting) = session.awaiting_send(sequence, now) else {
                    bail!(
                        "--sequence {sequence} is not a send of this session still awaiting its answer (it was \
                         answered, given up on after a day or 512 newer sends, or belongs to an earlier login): \
                         check `chorus history` before sending the message again without --sequence"
                    )
                };
                if !awaiting.message_digest.is_empty() && awaiting.message_digest != digest {
                    bail!(
                        "--sequence {sequence} was given to a different message (another recipient or body): \
                         a retry must repeat the first command exactly"
                    );
                }
                let request = SendMessageRequest {
                    to,
                    body,
                    sequence,
                    // A retry acknowledges nothing new: its own answer is still awaited.
                    acknowledged_through: sends.acknowledged_through().min(sequence - 1),
                };
                (request, None)
            }
        };
        session.store_send_sequence(&sends, now, begun);
        Ok((request, session.token.clone()))
    })?
}

/// Whether an error answer carries Chorus's `reason`.
fn has_reason(status: &tonic::Status, reason: &str) -> bool {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()
        .is_some_and(|info| info.domain == chorus_proto::wire::ERROR_DOMAIN && info.reason == reason)
}

fn read_stdin_body() -> Result<String> {
    let mut body = String::new();
    std::io::stdin().read_to_string(&mut body).context("cannot read the message body from stdin")?;
    Ok(body.strip_suffix('\n').unwrap_or(&body).to_owned())
}
