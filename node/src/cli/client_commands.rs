//! The client verbs: each connects, makes its call, and prints what a person needs to see.

use std::io::Read as _;

use anyhow::{Context, Result, bail};
use chorus::client::v1::{
    CreateAccountRequest, DeleteAccountRequest, DeleteMessagesRequest, HistoryRequest, ListAccountsRequest,
    LoginRequest, LogoutRequest, ReadMessagesRequest, SendMessageRequest, SubscribeRequest,
};
use chorus::client::{ChatClient, new_client_msg_id};
use tonic::Code;

use super::format::message_line;
use super::session_file::{self, SavedSession};
use super::{AccountVerb, ClientOptions, Verb, password, rpc_error};

pub fn run(options: &ClientOptions, verb: Verb) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run_verb(options, verb))
}

async fn run_verb(options: &ClientOptions, verb: Verb) -> Result<()> {
    let session_path = session_file::resolve(options.session_file.as_deref())?;
    match verb {
        Verb::Account(AccountVerb::Create { username, password_stdin }) => {
            let password = password::obtain(password_stdin, "new password: ")?;
            let mut client = connect(options).await?;
            let response = client
                .grpc()
                .create_account(CreateAccountRequest { username, password })
                .await
                .map_err(|s| rpc_error(client.server(), s))?
                .into_inner();
            println!("created account '{}'", response.username);
        }
        Verb::Account(AccountVerb::Delete { password_stdin }) => {
            let session = session_file::load(&session_path)?;
            let password = password::obtain(password_stdin, &format!("password of '{}': ", session.username))?;
            let mut client = connect(options).await?;
            client
                .grpc()
                .delete_account(DeleteAccountRequest { token: session.token, password })
                .await
                .map_err(|s| rpc_error(client.server(), s))?;
            session_file::remove(&session_path)?;
            println!("deleted account '{}'", session.username);
        }
        Verb::Login { username, password_stdin } => {
            let password = password::obtain(password_stdin, &format!("password of '{username}': "))?;
            let mut client = connect(options).await?;
            let response = client
                .grpc()
                .login(LoginRequest { username, password })
                .await
                .map_err(|s| rpc_error(client.server(), s))?
                .into_inner();
            let saved =
                SavedSession { username: response.username, token: response.token, server: client.server().to_owned() };
            session_file::save(&session_path, &saved)?;
            println!("logged in as '{}': {} unread message(s)", saved.username, response.unread_count);
        }
        Verb::Logout => {
            let session = session_file::load(&session_path)?;
            let mut client = connect(options).await?;
            let result = client.grpc().logout(LogoutRequest { token: session.token }).await;
            // The local copy goes whatever the server said: an expired session is over too.
            session_file::remove(&session_path)?;
            match result {
                Ok(_) => println!("logged out '{}'", session.username),
                Err(status) if status.code() == Code::Unauthenticated => {
                    println!("logged out '{}' (the session had already ended)", session.username)
                }
                Err(status) => return Err(rpc_error(client.server(), status)),
            }
        }
        Verb::Send { to, body, client_msg_id } => {
            let session = session_file::load(&session_path)?;
            let body = if body.is_empty() { read_stdin_body()? } else { body.join(" ") };
            let client_msg_id = client_msg_id.unwrap_or_else(new_client_msg_id);
            let mut client = connect(options).await?;
            let response = client
                .grpc()
                .send_message(SendMessageRequest { token: session.token, to: to.clone(), body, client_msg_id })
                .await
                .map_err(|s| rpc_error(client.server(), s))?
                .into_inner();
            if response.duplicate {
                println!("already sent as message {} (not stored again)", response.message_id);
            } else {
                println!("sent message {} to {}", response.message_id, to.to_ascii_lowercase());
            }
        }
        Verb::Read { limit } => {
            let session = session_file::load(&session_path)?;
            let mut client = connect(options).await?;
            let response = client
                .grpc()
                .read_messages(ReadMessagesRequest { token: session.token, limit })
                .await
                .map_err(|s| rpc_error(client.server(), s))?
                .into_inner();
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
            let mut client = connect(options).await?;
            let response = client
                .grpc()
                .history(HistoryRequest { token: session.token, peer: peer.clone(), before_id: before, limit })
                .await
                .map_err(|s| rpc_error(client.server(), s))?
                .into_inner();
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
            let mut client = connect(options).await?;
            let response = client
                .grpc()
                .list_accounts(ListAccountsRequest { pattern: pattern.clone(), page_size, page_token })
                .await
                .map_err(|s| rpc_error(client.server(), s))?
                .into_inner();
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
            let mut client = connect(options).await?;
            let response = client
                .grpc()
                .delete_messages(DeleteMessagesRequest { token: session.token, ids })
                .await
                .map_err(|s| rpc_error(client.server(), s))?
                .into_inner();
            println!("deleted {} message(s)", response.deleted);
        }
        Verb::Watch { after } => {
            let session = session_file::load(&session_path)?;
            let mut client = connect(options).await?;
            let mut stream = client
                .grpc()
                .subscribe(SubscribeRequest { token: session.token, after_id: after })
                .await
                .map_err(|s| rpc_error(client.server(), s))?
                .into_inner();
            eprintln!("watching messages for '{}' (Ctrl-C to stop)", session.username);
            loop {
                match stream.message().await {
                    Ok(Some(message)) => println!("{}", message_line(&message)),
                    Ok(None) => bail!("the server ended the stream"),
                    Err(status) => return Err(rpc_error(client.server(), status)),
                }
            }
        }
        Verb::Node(_) | Verb::Demo(_) => unreachable!("not a client verb"),
    }
    Ok(())
}

async fn connect(options: &ClientOptions) -> Result<ChatClient> {
    Ok(ChatClient::connect(&options.servers).await?)
}

fn read_stdin_body() -> Result<String> {
    let mut body = String::new();
    std::io::stdin().read_to_string(&mut body).context("cannot read the message body from stdin")?;
    Ok(body.strip_suffix('\n').unwrap_or(&body).to_owned())
}
