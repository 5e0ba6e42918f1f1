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

use super::format::{message_line, utc_timestamp};
use super::outbox::{self, NewQueued, Outbox, Queued};
use super::session_file::{self, SavedSession};
use super::{AccountVerb, ClientOptions, OutboxVerb, Verb, password, rpc_error};

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

pub(super) async fn run_verb(options: &ClientOptions, verb: Verb) -> Result<()> {
    let session_path = session_file::resolve(options.session_file.as_deref())?;
    let policy =
        RetryPolicy { call_deadline: Duration::from_secs(options.timeout_secs.max(1)), ..RetryPolicy::default() };
    let mut client = ClusterClient::new(&options.servers, policy, options.security()?)?;
    // Messages queued while the cluster was unreachable go first, in order, with every
    // command of a session that reaches the cluster. If it is still unreachable, a send
    // joins the queue, and any other command of the session gives up at once (it would
    // wait out a second timeout only to be told the same).
    let delivery = match &verb {
        Verb::Send { .. }
        | Verb::Read { .. }
        | Verb::History { .. }
        | Verb::Delete { .. }
        | Verb::Watch { .. }
        | Verb::Login { .. }
        | Verb::Logout
        | Verb::Outbox { action: Some(OutboxVerb::Send) } => deliver_outbox(&mut client, &session_path).await?,
        _ => Delivery::Done,
    };
    if let Delivery::Stopped { error, unreachable } = delivery {
        match verb {
            // Behind the messages that wait, in order, and without an attempt of its own.
            Verb::Send { to, body, sequence: None } => {
                let body = if body.is_empty() { read_stdin_body()? } else { body.join(" ") };
                let session = session_file::load(&session_path)?;
                let sender = Sender { username: session.username, token: session.token };
                queue(&session_path, &sender, None, &to, &body, &error)?;
                return Ok(());
            }
            Verb::Outbox { .. } => return Err(error),
            // The command at hand would be told the same after another whole timeout.
            _ if unreachable && !matches!(verb, Verb::Login { .. } | Verb::Logout) => return Err(error),
            _ => eprintln!("note: {error:#}; the messages in the outbox stay there (`chorus outbox`)"),
        }
    }
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
            let retry = sequence.is_some();
            let (request, sender) = numbered_send(&session_path, to.clone(), body.clone(), sequence, None)?;
            let token = sender.token.clone();
            let sequence = request.sequence;
            let result = chorus::cluster_call_as!(client, send_message, request, token);
            // Whether the answer is final: then the session acknowledges it with its next
            // send. An unknown outcome stays awaiting, so that a retry is still recognized.
            let answered = result.as_ref().err().is_none_or(|status| !chorus::client::outcome_unknown(status));
            if let Err(status) = &result
                && has_reason(status, chorus_proto::wire::CLUSTER_UNREACHABLE)
            {
                // No node could take it: into the outbox, with its number if it may have
                // been stored, now or by the earlier attempt a retry repeats (a later
                // delivery repeats that very send).
                let numbered = (!answered || retry).then_some(sequence);
                let error = rpc_error(client.current_server(), status.clone());
                queue(&session_path, &sender, numbered, &to, &body, &error)?;
                // Only once it is queued: killed before, the number still awaits.
                if numbered.is_none() {
                    finish_send(&session_path, &token, sequence);
                }
                return Ok(());
            }
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
                finish_send(&session_path, &token, sequence);
            }
            outcome?;
        }
        Verb::Outbox { action: None | Some(OutboxVerb::List) } => list_outbox(&session_path)?,
        // Delivered above, before the verb ran.
        Verb::Outbox { action: Some(OutboxVerb::Send) } => {}
        Verb::Outbox { action: Some(OutboxVerb::Drop { ids }) } => {
            let path = outbox::path_for(&session_path);
            let Some(outbox) = Outbox::open_existing(&path)? else { bail!("the outbox is empty") };
            let _lock = outbox::delivery_lock(&path)?;
            for id in ids {
                if outbox.remove(id)? {
                    println!("dropped message {id} from the outbox");
                } else {
                    bail!("no message {id} in the outbox (`chorus outbox` lists them)");
                }
            }
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
        Verb::Cluster(super::ClusterVerb::Health { wait }) => {
            super::cluster_status::health(&mut client, std::time::Duration::from_secs(wait)).await?
        }
        Verb::Cluster(super::ClusterVerb::TransferLeader { id }) => {
            super::cluster_status::transfer_leader(&mut client, id).await?
        }
        Verb::Node(_) | Verb::Demo(_) | Verb::Certs(_) => unreachable!("not a client verb"),
    }
    Ok(())
}

/// Records in the session file that send `sequence` of the session `token` was answered,
/// so that its next send acknowledges it.
fn finish_send(session_path: &std::path::Path, token: &str, sequence: u64) {
    let finished = session_file::update_if_still(session_path, token, |session| {
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

/// Who sent (or will send) a message: the session that numbered it.
struct Sender {
    username: String,
    token: String,
}

/// Puts a message no node could take into the outbox and says so; `sequence` is the
/// number of an attempt that may have been stored, which the session then keeps
/// awaiting for as long as the outbox holds it.
fn queue(
    session_path: &std::path::Path,
    sender: &Sender,
    sequence: Option<u64>,
    to: &str,
    body: &str,
    error: &anyhow::Error,
) -> Result<()> {
    // What a node would refuse is refused now, not days later when it is delivered.
    let recipient = chorus::chat::validate::canonical_username(to).map_err(|e| anyhow::anyhow!("{e}"))?;
    chorus::chat::validate::message_body(body).map_err(|e| anyhow::anyhow!("{e}"))?;
    let path = outbox::path_for(session_path);
    let message = NewQueued {
        username: &sender.username,
        token: &sender.token,
        sequence,
        recipient: &recipient,
        body,
        queued_unix_ms: unix_time_ms(),
    };
    let id = Outbox::open(&path)
        .and_then(|outbox| outbox.push(&message))
        .with_context(|| format!("the message to {recipient} was neither sent nor queued ({error:#})"))?;
    if let Some(sequence) = sequence {
        let pinned = session_file::update_if_still(session_path, &sender.token, |session| {
            session.pin(sequence, unix_time_ms());
        });
        if !matches!(pinned, Ok(true)) {
            eprintln!("note: the session changed meanwhile: only the session that sent it can deliver #{id}");
        }
    }
    // Said only now that it is on disk.
    println!("queued: {error:#}");
    println!(
        "the message to {recipient} waits in the outbox as #{id}: the next chorus command that reaches the \
         cluster delivers it (or `chorus outbox send`); `chorus outbox` lists what waits"
    );
    Ok(())
}

/// What delivering the outbox came to.
enum Delivery {
    /// Nothing of this session waits any more (perhaps nothing ever did).
    Done,
    /// Delivery stopped at a message that must wait (the rest waits behind it, in order):
    /// `unreachable` when no node could take it.
    Stopped { error: anyhow::Error, unreachable: bool },
}

/// Delivers the messages of the outbox that the session in `session_path` may send,
/// oldest first, each told to the person; stops at the first of its user's that cannot go
/// now, so that none overtakes another.
async fn deliver_outbox(client: &mut ClusterClient, session_path: &std::path::Path) -> Result<Delivery> {
    let path = outbox::path_for(session_path);
    let Some(outbox) = Outbox::open_existing(&path)? else { return Ok(Delivery::Done) };
    if outbox.is_empty()? {
        return Ok(Delivery::Done);
    }
    let _lock = outbox::delivery_lock(&path)?;
    let Ok(session) = session_file::load(session_path) else {
        let waiting = outbox.list()?.len();
        eprintln!("note: {waiting} message(s) wait in the outbox until their sender logs in (`chorus outbox`)");
        return Ok(Delivery::Done);
    };
    let digest = outbox::session_digest(&session.token);
    let stuck = |queued: &Queued, why: String| {
        let error = anyhow::anyhow!(
            "outbox message #{} to {} cannot be delivered by this session: {why}; the messages after it wait \
             behind it (check `chorus history`, then `chorus outbox drop {}` to let them go)",
            queued.id,
            queued.recipient,
            queued.id
        );
        Delivery::Stopped { error, unreachable: false }
    };
    let mut others = 0;
    for queued in outbox.list()? {
        if queued.username != session.username {
            others += 1;
            continue;
        }
        // A message that may already be stored can only be repeated by the session that
        // numbered it: any other session's send would be a second copy.
        if queued.sequence.is_some() && queued.session_digest != digest {
            return Ok(stuck(&queued, "an earlier session sent it, and it may already be stored".to_owned()));
        }
        let numbered = numbered_send(
            session_path,
            queued.recipient.clone(),
            queued.body.clone(),
            queued.sequence,
            Some(&session.token),
        );
        let (request, sender) = match numbered {
            Ok(numbered) => numbered,
            Err(error) => return Ok(stuck(&queued, format!("{error:#}"))),
        };
        let sequence = request.sequence;
        if queued.sequence.is_none() {
            // Recorded before the call: a delivery killed after this send was stored
            // leaves the number with the message, and the next delivery repeats it.
            outbox.set_sequence(queued.id, sequence, &sender.token)?;
        }
        let result = chorus::cluster_call_as!(client, send_message, request, sender.token.clone());
        let answered = result.as_ref().err().is_none_or(|status| !chorus::client::outcome_unknown(status));
        let unreachable = result.as_ref().err().is_some_and(|s| has_reason(s, chorus_proto::wire::CLUSTER_UNREACHABLE));
        // What became of it, and whether its number is done with. A number is given
        // back (recorded answered) only once the message has left the outbox or dropped
        // the number: killed before, the number still awaits and a repeat is recognized.
        let fresh = queued.sequence.is_none();
        let (stop, settled) = match result {
            Ok(response) => {
                let what = if response.duplicate {
                    format!("it was already stored as message {} (not stored again)", response.message_id)
                } else {
                    format!("sent message {} to {}", response.message_id, queued.recipient)
                };
                println!("delivered outbox message #{} (queued {}): {what}", queued.id, queued_at(&queued));
                outbox.remove(queued.id)?;
                (None, true)
            }
            // May have been stored: it waits, under this number.
            Err(status) if !answered => {
                (Some(Delivery::Stopped { error: rpc_error(client.current_server(), status), unreachable }), false)
            }
            // Refusals of the message itself: it can never be delivered.
            Err(status)
                if has_reason(&status, chorus_proto::wire::INVALID_INPUT)
                    || has_reason(&status, chorus_proto::wire::NOT_FOUND) =>
            {
                let error = rpc_error(client.current_server(), status);
                eprintln!(
                    "outbox message #{} to {} was refused, and leaves the outbox: {error:#}",
                    queued.id, queued.recipient
                );
                outbox.remove(queued.id)?;
                (None, true)
            }
            // Certainly not stored now (no node could take it, the session ended, a
            // limit): it waits in its place. A number drawn for this attempt is given back;
            // one it came with stays, for the attempt that drew it may have been stored.
            Err(status) => {
                if fresh {
                    outbox.clear_sequence(queued.id)?;
                }
                (Some(Delivery::Stopped { error: rpc_error(client.current_server(), status), unreachable }), fresh)
            }
        };
        if settled {
            finish_send(session_path, &sender.token, sequence);
        }
        if let Some(stop) = stop {
            return Ok(stop);
        }
    }
    if others > 0 {
        eprintln!("note: {others} message(s) in the outbox wait for another user's login (`chorus outbox`)");
    }
    Ok(Delivery::Done)
}

fn queued_at(queued: &Queued) -> String {
    utc_timestamp(queued.queued_unix_ms)
}

/// `chorus outbox`: what waits, oldest first.
fn list_outbox(session_path: &std::path::Path) -> Result<()> {
    let path = outbox::path_for(session_path);
    let queued = match Outbox::open_existing(&path)? {
        Some(outbox) => outbox.list()?,
        None => Vec::new(),
    };
    if queued.is_empty() {
        println!("the outbox is empty");
        return Ok(());
    }
    let digest =
        session_file::load(session_path).ok().map(|session| (session.username, outbox::session_digest(&session.token)));
    for message in &queued {
        let note = match (&digest, message.sequence) {
            (Some((user, _)), _) if *user != message.username => {
                format!(" (waits for a login as {})", message.username)
            }
            (Some((_, session)), Some(_)) if *session != message.session_digest => {
                " (from an earlier session, and it may already be stored: check `chorus history`, then drop it or \
                 send it again by hand)"
                    .to_owned()
            }
            (None, _) => format!(" (waits for a login as {})", message.username),
            _ => String::new(),
        };
        println!(
            "#{} {} {} -> {}: {}{note}",
            message.id,
            queued_at(message),
            message.username,
            message.recipient,
            message.body
        );
    }
    Ok(())
}

/// The request for one `chorus send`: a new sequence from the session file, or the one
/// given (a retry of a send still awaiting its answer, of the same message), with the
/// acknowledgement of every answer this session has, and who sends it. With
/// `outbox_session`, the send is the outbox's (its number is kept however long it waits,
/// see `AwaitingSend::pinned`), and only that session may make it.
fn numbered_send(
    session_path: &std::path::Path,
    to: String,
    body: String,
    sequence: Option<u64>,
    outbox_session: Option<&str>,
) -> Result<(SendMessageRequest, Sender)> {
    session_file::update(session_path, |session| {
        if outbox_session.is_some_and(|token| token != session.token) {
            bail!("the session changed while the outbox was being delivered");
        }
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
        if outbox_session.is_some() {
            session.pin(request.sequence, now);
        }
        let sender = Sender { username: session.username.clone(), token: session.token.clone() };
        Ok((request, sender))
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
