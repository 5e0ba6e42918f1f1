//! Every RPC of `chorus.v1.Chat` against a real `chorus node` process on a loopback port:
//! the happy paths and the errors a client can cause.

mod common;

use chorus::client::v1::{
    ChangePasswordRequest, CreateAccountRequest, DeleteAccountRequest, DeleteMessagesRequest, HistoryRequest,
    ListAccountsRequest, LoginRequest, LogoutRequest, Message, ReadMessagesRequest, SendMessageRequest,
    SubscribeRequest, chat_client::ChatClient,
};
use common::{TestNode, account, as_user, login};
use tonic::Code;
use tonic::transport::Channel;

/// The session's message number `sequence`, acknowledging nothing.
fn message(to: &str, body: &str, sequence: u64) -> SendMessageRequest {
    SendMessageRequest { to: to.to_owned(), body: body.to_owned(), sequence, acknowledged_through: 0 }
}

/// [`message`], sent as the session `token`.
fn send(token: &str, to: &str, body: &str, sequence: u64) -> tonic::Request<SendMessageRequest> {
    as_user(message(to, body, sequence), token)
}

async fn history(client: &mut ChatClient<Channel>, token: &str, peer: Option<&str>) -> Vec<Message> {
    let request = as_user(HistoryRequest { peer: peer.map(str::to_owned), before_id: 0, limit: 1000 }, token);
    client.history(request).await.unwrap().into_inner().messages
}

fn bodies(messages: &[Message]) -> Vec<&str> {
    messages.iter().map(|m| m.body.as_str()).collect()
}

#[tokio::test]
async fn create_account_validates_names_and_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path());
    let mut client = node.client().await;
    let create = |username: &str, password: &str| CreateAccountRequest {
        username: username.to_owned(),
        password: password.to_owned(),
    };

    let created = client.create_account(create("Alice.B-1_x", "password1")).await.unwrap().into_inner();
    assert_eq!(created.username, "alice.b-1_x", "names are folded to lower case");
    client.create_account(create(&"a".repeat(32), "password1")).await.unwrap();

    let cases = [
        (create("", "password1"), Code::InvalidArgument, "username is empty"),
        (create(&"a".repeat(33), "password1"), Code::InvalidArgument, "at most 32"),
        (create("bob smith", "password1"), Code::InvalidArgument, "only a-z"),
        (create("bøb", "password1"), Code::InvalidArgument, "only a-z"),
        (create("bob", "short"), Code::InvalidArgument, "at least 8"),
        (create("bob", &"p".repeat(1025)), Code::InvalidArgument, "at most 1024"),
        (create("ALICE.B-1_X", "password2"), Code::AlreadyExists, "is taken"),
    ];
    for (request, code, message) in cases {
        let status = client.create_account(request.clone()).await.unwrap_err();
        assert_eq!(status.code(), code, "{request:?}: {status:?}");
        assert!(status.message().contains(message), "{request:?}: {}", status.message());
    }
}

#[tokio::test]
async fn login_gives_the_same_error_for_unknown_user_and_wrong_password() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path());
    let mut client = node.client().await;
    let token = account(&mut client, "alice").await;
    assert_eq!(token.len(), 64);

    let wrong_password =
        client.login(LoginRequest { username: "alice".into(), password: "not-her-password".into() }).await.unwrap_err();
    let unknown_user =
        client.login(LoginRequest { username: "mallory".into(), password: "alice-password".into() }).await.unwrap_err();
    assert_eq!(wrong_password.code(), Code::Unauthenticated);
    assert_eq!(unknown_user.code(), Code::Unauthenticated);
    assert_eq!(wrong_password.message(), unknown_user.message());

    // Login is case-insensitive in the name, and each login is its own session.
    let second = client
        .login(LoginRequest { username: "ALICE".into(), password: "alice-password".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.username, "alice");
    assert_ne!(second.token, token);
}

#[tokio::test]
async fn logout_ends_only_that_session() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path());
    let mut client = node.client().await;
    let first = account(&mut client, "alice").await;
    let second = login(&mut client, "alice").await;

    client.logout(as_user(LogoutRequest {}, &first)).await.unwrap();
    let status = client.send_message(send(&first, "alice", "hi", 1)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("log in again"), "{}", status.message());
    client.send_message(send(&second, "alice", "hi", 1)).await.unwrap();

    let again = client.logout(as_user(LogoutRequest {}, &first)).await.unwrap_err();
    assert_eq!(again.code(), Code::Unauthenticated);
    let empty = client.logout(as_user(LogoutRequest {}, "")).await.unwrap_err();
    assert_eq!(empty.code(), Code::Unauthenticated);
}

/// The token travels only in `authorization: Bearer` metadata: a call without it, with
/// another scheme, with two of them or with garbage is UNAUTHENTICATED with a message that
/// says what to send; the scheme's case does not matter.
#[tokio::test]
async fn sessions_are_presented_as_bearer_tokens_in_metadata() {
    use tonic::metadata::MetadataValue;
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path());
    let mut client = node.client().await;
    let alice = account(&mut client, "alice").await;
    let with_header = |values: &[String]| {
        let mut request = tonic::Request::new(message("alice", "hi", 1));
        for value in values {
            request.metadata_mut().append("authorization", MetadataValue::try_from(value.as_str()).unwrap());
        }
        request
    };
    let cases = [
        (vec![], "no session"),
        (vec![alice.clone()], "must be 'Bearer TOKEN'"),
        (vec![format!("Basic {alice}")], "must be 'Bearer TOKEN'"),
        (vec!["Bearer ".to_owned()], "holds no token"),
        (vec![format!("Bearer {alice}"), format!("Bearer {alice}")], "exactly one"),
        (vec!["Bearer 0000".to_owned()], "log in again"),
    ];
    for (values, text) in cases {
        let status = client.send_message(with_header(&values)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{values:?}: {status:?}");
        assert!(status.message().contains(text), "{values:?}: {}", status.message());
    }
    client.send_message(with_header(&[format!("bearer {alice}")])).await.unwrap();
    // A login says when its session expires: a week from now, by default.
    let login = client
        .login(LoginRequest { username: "alice".into(), password: "alice-password".into() })
        .await
        .unwrap()
        .into_inner();
    let week_from_now = chorus::seam::unix_time_ms() + 7 * 24 * 3600 * 1000;
    assert!(login.expires_at_ms.abs_diff(week_from_now) < 60_000, "{}", login.expires_at_ms);
}

/// Login attempts are limited per account and per client address, and sends per
/// account: over a limit the answer is RESOURCE_EXHAUSTED RATE_LIMITED with a RetryInfo
/// delay and a message that says which limit; the other accounts go on.
#[tokio::test]
async fn logins_and_sends_are_rate_limited() {
    use tonic_types::StatusExt;
    let dir = tempfile::tempdir().unwrap();
    let limits = chorus::cluster_config::Limits {
        logins_per_account_per_minute: 3,
        logins_per_address_per_minute: 8,
        sends_per_account_per_minute: 5,
        ..Default::default()
    };
    let node = TestNode::start_with_limits(dir.path(), limits);
    let mut client = node.client().await;
    for name in ["alice", "bob"] {
        let create = CreateAccountRequest { username: name.into(), password: format!("{name}-password") };
        client.create_account(create).await.unwrap();
    }
    let attempt = |name: &str, password: &str| LoginRequest { username: name.into(), password: password.into() };
    let limited = |status: &tonic::Status, what: &str| {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert_eq!(status.get_details_error_info().unwrap().reason, chorus_proto::wire::RATE_LIMITED);
        let delay = status.get_details_retry_info().and_then(|info| info.retry_delay).expect("a retry delay");
        assert!(delay > std::time::Duration::ZERO && delay <= std::time::Duration::from_secs(60), "{delay:?}");
        assert!(status.message().contains(what), "{}", status.message());
    };

    let bob = client.login(attempt("bob", "bob-password")).await.unwrap().into_inner().token;
    for _ in 0..3 {
        let failed = client.login(attempt("alice", "guess-guess")).await.unwrap_err();
        assert_eq!(failed.code(), Code::Unauthenticated);
    }
    // After three failures her next attempt is refused before any password is checked, the
    // right one too (and it costs the address nothing).
    limited(&client.login(attempt("alice", "alice-password")).await.unwrap_err(), "failed login attempts");
    // Successes do not count against an account: bob logs in again.
    client.login(attempt("bob", "bob-password")).await.unwrap();
    // Names that do not exist count like names that do: 8 attempts from this address.
    for name in ["nobody1", "nobody2", "nobody3"] {
        assert_eq!(client.login(attempt(name, "guess-guess")).await.unwrap_err().code(), Code::Unauthenticated);
    }
    limited(&client.login(attempt("nobody4", "guess-guess")).await.unwrap_err(), "from your address");

    for n in 1..=5 {
        client.send_message(send(&bob, "alice", "hi", n)).await.unwrap();
    }
    limited(&client.send_message(send(&bob, "alice", "one more", 6)).await.unwrap_err(), "messages sent");
}

/// ChangePassword checks the old password, replaces it, and ends every other session of
/// the account; the caller's session and other accounts' go on.
#[tokio::test]
async fn changing_the_password_ends_the_other_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path());
    let mut client = node.client().await;
    let here = account(&mut client, "alice").await;
    let elsewhere = login(&mut client, "alice").await;
    let bob = account(&mut client, "bob").await;
    let change = |old: &str, new: &str| ChangePasswordRequest { old_password: old.into(), new_password: new.into() };

    let wrong = client.change_password(as_user(change("not-hers-at-all", "new-password"), &here)).await.unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    assert!(wrong.message().contains("wrong password"), "{wrong:?}");
    let short = client.change_password(as_user(change("alice-password", "short"), &here)).await.unwrap_err();
    assert_eq!(short.code(), Code::InvalidArgument);
    client.send_message(send(&elsewhere, "bob", "still in", 1)).await.expect("nothing changed yet");

    let changed = client.change_password(as_user(change("alice-password", "new-password"), &here)).await.unwrap();
    assert_eq!(changed.into_inner().sessions_ended, 1);
    let ended = client.send_message(send(&elsewhere, "bob", "after", 2)).await.unwrap_err();
    assert_eq!(ended.code(), Code::Unauthenticated, "the other session ended");
    client.send_message(send(&here, "bob", "mine goes on", 1)).await.unwrap();
    client.send_message(send(&bob, "alice", "bob's too", 1)).await.unwrap();
    let old = client.login(LoginRequest { username: "alice".into(), password: "alice-password".into() }).await;
    assert_eq!(old.unwrap_err().code(), Code::Unauthenticated);
    client.login(LoginRequest { username: "alice".into(), password: "new-password".into() }).await.unwrap();
}

#[tokio::test]
async fn list_accounts_matches_wildcards_and_pages() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path());
    let mut client = node.client().await;
    for name in ["bob", "alice", "bobby", "carol", "rob", "b0b", "dave"] {
        client
            .create_account(CreateAccountRequest { username: name.into(), password: "password1".into() })
            .await
            .unwrap();
    }
    let list = |pattern: &str, page_size: u32, page_token: &str| ListAccountsRequest {
        pattern: pattern.into(),
        page_size,
        page_token: page_token.into(),
    };
    let all = client.list_accounts(list("", 0, "")).await.unwrap().into_inner();
    assert_eq!(all.usernames, ["alice", "b0b", "bob", "bobby", "carol", "dave", "rob"]);
    assert!(all.next_page_token.is_empty());

    let b = client.list_accounts(list("B*", 0, "")).await.unwrap().into_inner();
    assert_eq!(b.usernames, ["b0b", "bob", "bobby"], "case-insensitive prefix");
    let q = client.list_accounts(list("?o?", 0, "")).await.unwrap().into_inner();
    assert_eq!(q.usernames, ["bob", "rob"]);
    let inner = client.list_accounts(list("*o*", 0, "")).await.unwrap().into_inner();
    assert_eq!(inner.usernames, ["bob", "bobby", "carol", "rob"]);

    // Pages of two, following tokens, cover everything exactly once.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client.list_accounts(list("*", 2, &token)).await.unwrap().into_inner();
        assert!(page.usernames.len() <= 2);
        seen.extend(page.usernames);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, all.usernames);

    let bad_token = client.list_accounts(list("*", 2, "garbage")).await.unwrap_err();
    assert_eq!(bad_token.code(), Code::InvalidArgument);
    let bad_pattern = client.list_accounts(list("a[bc]", 0, "")).await.unwrap_err();
    assert_eq!(bad_pattern.code(), Code::InvalidArgument);
    let huge_page = client.list_accounts(list("*", u32::MAX, "")).await.unwrap().into_inner();
    assert_eq!(huge_page.usernames.len(), 7, "page sizes above the maximum are served the maximum");
}

#[tokio::test]
async fn send_message_rejects_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path());
    let mut client = node.client().await;
    let alice = account(&mut client, "alice").await;
    account(&mut client, "bob").await;

    // Longer than any token, but within what HTTP/2 carries in headers (16 KiB).
    let long_token = "t".repeat(1_000);
    let cases = [
        (alice.as_str(), message("nobody", "hi", 1), Code::NotFound, "user 'nobody' does not exist"),
        (&alice, message("bob", "", 1), Code::InvalidArgument, "body is empty"),
        (&alice, message("bob", &"x".repeat(64 * 1024 + 1), 1), Code::InvalidArgument, "64 KiB"),
        (&alice, message("bob", "hi", 0), Code::InvalidArgument, "sequence is 0"),
        (
            &alice,
            SendMessageRequest { acknowledged_through: 1, ..message("bob", "hi", 1) },
            Code::InvalidArgument,
            "must be below the message's sequence",
        ),
        (&alice, message("bad name", "hi", 1), Code::InvalidArgument, "only a-z"),
        ("not-a-token", message("bob", "hi", 1), Code::Unauthenticated, "log in again"),
        (&long_token, message("bob", "hi", 1), Code::Unauthenticated, "log in again"),
        ("", message("bob", "hi", 1), Code::Unauthenticated, "log in first"),
    ];
    for (token, request, code, text) in cases {
        let status = client.send_message(as_user(request.clone(), token)).await.unwrap_err();
        assert_eq!(status.code(), code, "to {:?}: {status:?}", request.to);
        assert!(status.message().contains(text), "{}", status.message());
    }
    // Exactly 64 KiB is fine.
    client.send_message(send(&alice, "bob", &"x".repeat(64 * 1024), 1)).await.unwrap();
    // A request far beyond any valid one is refused before the node decodes it.
    let huge = client.send_message(send(&alice, "bob", &"x".repeat(1024 * 1024), 2)).await.unwrap_err();
    assert!(matches!(huge.code(), Code::OutOfRange | Code::ResourceExhausted), "{huge:?}");
}

/// A retry (same session, same sequence) gets the first message's id and stores nothing; a
/// sequence reused for something else is refused; once acknowledged, a late retry is
/// refused rather than stored again. Each error carries its documented reason.
#[tokio::test]
async fn resending_with_the_same_sequence_stores_one_copy() {
    use tonic_types::StatusExt;
    let reason = |status: &tonic::Status| status.get_details_error_info().map(|info| info.reason).unwrap_or_default();
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path());
    let mut client = node.client().await;
    let alice = account(&mut client, "alice").await;
    let bob = account(&mut client, "bob").await;

    let first = client.send_message(send(&alice, "bob", "once", 1)).await.unwrap().into_inner();
    let retry = client.send_message(send(&alice, "Bob", "once", 1)).await.unwrap().into_inner();
    assert!(!first.duplicate);
    assert!(retry.duplicate);
    assert_eq!(first.message_id, retry.message_id);

    let reused = client.send_message(send(&alice, "bob", "something else", 1)).await.unwrap_err();
    assert_eq!(reused.code(), Code::AlreadyExists);
    assert!(reused.message().contains("already used for a different message"), "{}", reused.message());
    assert_eq!(reason(&reused), chorus_proto::wire::SEQUENCE_REUSED);

    // The same sequence in another session is another message.
    client.send_message(send(&bob, "alice", "once", 1)).await.unwrap();

    // Alice acknowledges the answer to 1 with her next send; a late retry of 1 is refused.
    let next = SendMessageRequest { acknowledged_through: 1, ..message("bob", "twice", 2) };
    client.send_message(as_user(next, &alice)).await.unwrap();
    let late = client.send_message(send(&alice, "bob", "once", 1)).await.unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition, "{late:?}");
    assert_eq!(reason(&late), chorus_proto::wire::SEQUENCE_ACKNOWLEDGED);

    let read = client
        .read_messages(as_user(ReadMessagesRequest { limit: 0, request_id: String::new() }, &bob))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bodies(&read.messages), ["once", "twice"], "one copy of each");
}

#[tokio::test]
async fn read_messages_returns_oldest_unread_and_marks_them_read() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path());
    let mut client = node.client().await;
    let alice = account(&mut client, "alice").await;
    let bob = account(&mut client, "bob").await;
    for n in 1..=5 {
        client.send_message(send(&alice, "bob", &format!("m{n}"), n)).await.unwrap();
    }
    let read = |limit| as_user(ReadMessagesRequest { limit, request_id: String::new() }, &bob);
    let first = client.read_messages(read(2)).await.unwrap().into_inner();
    assert_eq!(bodies(&first.messages), ["m1", "m2"]);
    assert!(first.messages.iter().all(|m| m.read && m.from == "alice" && m.to == "bob" && m.sent_at_ms > 0));
    assert_eq!(first.unread_remaining, 3);
    let relogin = client
        .login(LoginRequest { username: "bob".into(), password: "bob-password".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(relogin.unread_count, 3);
    let rest = client.read_messages(read(0)).await.unwrap().into_inner();
    assert_eq!(bodies(&rest.messages), ["m3", "m4", "m5"]);
    assert_eq!(rest.unread_remaining, 0);
    let none = client.read_messages(read(0)).await.unwrap().into_inner();
    assert!(none.messages.is_empty());
}

#[tokio::test]
async fn history_is_newest_first_filtered_and_paged() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path());
    let mut client = node.client().await;
    let alice = account(&mut client, "alice").await;
    let bob = account(&mut client, "bob").await;
    account(&mut client, "carol").await;
    client.send_message(send(&alice, "bob", "a->b 1", 1)).await.unwrap();
    client.send_message(send(&bob, "alice", "b->a", 1)).await.unwrap();
    client.send_message(send(&alice, "carol", "a->c", 2)).await.unwrap();
    client.send_message(send(&alice, "bob", "a->b 2", 3)).await.unwrap();

    assert_eq!(bodies(&history(&mut client, &alice, None).await), ["a->b 2", "a->c", "b->a", "a->b 1"]);
    assert_eq!(bodies(&history(&mut client, &alice, Some("BOB")).await), ["a->b 2", "b->a", "a->b 1"]);
    assert_eq!(bodies(&history(&mut client, &bob, None).await), ["a->b 2", "b->a", "a->b 1"]);

    let mut pages = Vec::new();
    let mut before_id = 0;
    loop {
        let request = as_user(HistoryRequest { peer: None, before_id, limit: 3 }, &alice);
        let page = client.history(request).await.unwrap().into_inner();
        pages.push(bodies(&page.messages).join("|"));
        if page.next_before_id == 0 {
            break;
        }
        before_id = page.next_before_id;
    }
    assert_eq!(pages, ["a->b 2|a->c|b->a", "a->b 1"]);

    let unknown = client
        .history(as_user(HistoryRequest { peer: Some("zed".into()), before_id: 0, limit: 0 }, &alice))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let unauthenticated =
        client.history(as_user(HistoryRequest { peer: None, before_id: 0, limit: 0 }, "nope")).await.unwrap_err();
    assert_eq!(unauthenticated.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn delete_messages_follows_the_ownership_rules() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path());
    let mut client = node.client().await;
    let alice = account(&mut client, "alice").await;
    let bob = account(&mut client, "bob").await;
    let carol = account(&mut client, "carol").await;
    let id = |response: tonic::Response<chorus::client::v1::SendMessageResponse>| response.into_inner().message_id;
    let read_later = id(client.send_message(send(&alice, "bob", "read later", 1)).await.unwrap());
    let unsent = id(client.send_message(send(&alice, "bob", "oops", 2)).await.unwrap());
    let deleted_by_bob = id(client.send_message(send(&alice, "bob", "delete me", 3)).await.unwrap());
    let delete = |token: &str, ids: Vec<u64>| as_user(DeleteMessagesRequest { ids }, token);

    // Another user's message, or one that does not exist, is NOT_FOUND, and nothing is deleted.
    for (token, ids) in [(&carol, vec![unsent]), (&bob, vec![deleted_by_bob, 999]), (&alice, vec![0])] {
        let status = client.delete_messages(delete(token, ids.clone())).await.unwrap_err();
        let expected = if ids == [0] { Code::InvalidArgument } else { Code::NotFound };
        assert_eq!(status.code(), expected, "{ids:?}: {status:?}");
    }
    assert_eq!(history(&mut client, &bob, None).await.len(), 3);

    // The sender unsends an unread message: gone for both.
    assert_eq!(client.delete_messages(delete(&alice, vec![unsent])).await.unwrap().into_inner().deleted, 1);
    // The recipient deletes from its mailbox.
    assert_eq!(client.delete_messages(delete(&bob, vec![deleted_by_bob])).await.unwrap().into_inner().deleted, 1);
    assert_eq!(bodies(&history(&mut client, &alice, None).await), ["read later"]);
    assert_eq!(bodies(&history(&mut client, &bob, None).await), ["read later"]);

    // Once read, only the recipient may delete it.
    client.read_messages(as_user(ReadMessagesRequest { limit: 0, request_id: String::new() }, &bob)).await.unwrap();
    let status = client.delete_messages(delete(&alice, vec![read_later])).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("already read"), "{}", status.message());
    client.delete_messages(delete(&bob, vec![read_later, read_later])).await.unwrap();
    assert!(history(&mut client, &alice, None).await.is_empty());
}

#[tokio::test]
async fn delete_account_retires_the_name_and_withdraws_unread_mail() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path());
    let mut client = node.client().await;
    let alice = account(&mut client, "alice").await;
    let bob = account(&mut client, "bob").await;
    client.send_message(send(&alice, "bob", "read before", 1)).await.unwrap();
    client.read_messages(as_user(ReadMessagesRequest { limit: 0, request_id: String::new() }, &bob)).await.unwrap();
    client.send_message(send(&alice, "bob", "unread when alice left", 2)).await.unwrap();
    client.send_message(send(&bob, "alice", "to alice", 3)).await.unwrap();

    let wrong = client
        .delete_account(as_user(DeleteAccountRequest { password: "wrong-password".into() }, &alice))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    client.delete_account(as_user(DeleteAccountRequest { password: "alice-password".into() }, &alice)).await.unwrap();

    // Her sessions are gone, she cannot log in, and her name is not free.
    let status = client.send_message(send(&alice, "bob", "ghost", 4)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status =
        client.login(LoginRequest { username: "alice".into(), password: "alice-password".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = client
        .create_account(CreateAccountRequest { username: "alice".into(), password: "password1".into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    let status = client.send_message(send(&bob, "alice", "still there?", 5)).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let users = client
        .list_accounts(ListAccountsRequest { pattern: "*".into(), page_size: 0, page_token: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(users.usernames, ["bob"]);

    // Bob keeps what he had read; the unread one was withdrawn; his message to her went with her mailbox.
    assert_eq!(bodies(&history(&mut client, &bob, None).await), ["read before"]);
    let relogin = client
        .login(LoginRequest { username: "bob".into(), password: "bob-password".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(relogin.unread_count, 0);
}

#[tokio::test]
async fn subscribe_streams_backlog_then_live_without_gaps_or_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path());
    let mut client = node.client().await;
    let alice = account(&mut client, "alice").await;
    let bob = account(&mut client, "bob").await;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(client.send_message(send(&alice, "bob", &format!("old {n}"), n + 1)).await.unwrap());
    }
    let mut stream = client.subscribe(as_user(SubscribeRequest { after_id: 0 }, &bob)).await.unwrap().into_inner();
    // Live messages sent while the backlog may still be streaming.
    let mut sender = node.client().await;
    let live = tokio::spawn({
        let alice = alice.clone();
        async move {
            for n in 0..20 {
                sender.send_message(send(&alice, "bob", &format!("new {n}"), n + 10)).await.unwrap();
            }
        }
    });
    let mut received = Vec::new();
    while received.len() < 23 {
        let message = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
            .await
            .expect("message in time")
            .unwrap()
            .unwrap();
        received.push(message);
    }
    live.await.unwrap();
    let expected: Vec<String> = (0..3).map(|n| format!("old {n}")).chain((0..20).map(|n| format!("new {n}"))).collect();
    assert_eq!(bodies(&received), expected);
    assert!(received.windows(2).all(|w| w[0].id < w[1].id));
    // Streaming does not mark anything read.
    let relogin = login(&mut client, "bob").await;
    let read = client
        .read_messages(as_user(ReadMessagesRequest { limit: 1000, request_id: String::new() }, &relogin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.messages.len(), 23);

    // Resuming after an id continues from there.
    let resume_after = received[10].id;
    let mut resumed =
        client.subscribe(as_user(SubscribeRequest { after_id: resume_after }, &bob)).await.unwrap().into_inner();
    let next = resumed.message().await.unwrap().unwrap();
    assert_eq!(next.id, received[11].id);

    // Logging out ends the stream with UNAUTHENTICATED.
    client.logout(as_user(LogoutRequest {}, &bob)).await.unwrap();
    client.send_message(send(&alice, "bob", "wake the stream", 99)).await.unwrap();
    let ended = loop {
        match tokio::time::timeout(std::time::Duration::from_secs(10), resumed.message()).await.expect("stream ends") {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    assert_eq!(ended.unwrap_err().code(), Code::Unauthenticated);

    let status = client.subscribe(as_user(SubscribeRequest { after_id: 0 }, "bogus")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn a_retried_read_returns_the_same_batch_instead_of_marking_more() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path());
    let mut client = node.client().await;
    let alice = account(&mut client, "alice").await;
    let bob = account(&mut client, "bob").await;
    for n in 1..=4 {
        client.send_message(send(&alice, "bob", &format!("m{n}"), n)).await.unwrap();
    }
    let read = |request_id: &str| as_user(ReadMessagesRequest { limit: 2, request_id: request_id.to_owned() }, &bob);
    let first = client.read_messages(read("read-1")).await.unwrap().into_inner();
    // The answer was "lost"; the client retries with the same id.
    let retry = client.read_messages(read("read-1")).await.unwrap().into_inner();
    assert_eq!(bodies(&first.messages), ["m1", "m2"]);
    assert_eq!(bodies(&retry.messages), ["m1", "m2"], "the same batch, nothing more marked read");
    assert_eq!(retry.unread_remaining, 2);
    let next = client.read_messages(read("read-2")).await.unwrap().into_inner();
    assert_eq!(bodies(&next.messages), ["m3", "m4"]);
    let bad = client.read_messages(read("has space")).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
}

/// Pages of large messages stop at the byte bound, so a stock client (tonic's default
/// 4 MiB receive limit) gets every reply, and no batch is marked read that cannot be
/// delivered: 100 messages of 60 KiB come out of `ReadMessages(limit = 100)` in several
/// reads, each exactly once, and out of History in several pages. (Before the bound, the
/// first read's 6 MB reply was refused by the client after the batch had been marked read.)
#[tokio::test]
async fn pages_of_large_messages_fit_a_stock_client_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path());
    let mut client = node.client().await;
    let alice = account(&mut client, "alice").await;
    let bob = account(&mut client, "bob").await;
    const COUNT: u64 = 100;
    for n in 1..=COUNT {
        let body = format!("{n:03}{}", "x".repeat(60 * 1024));
        client.send_message(send(&alice, "bob", &body, n)).await.unwrap();
    }
    let mut read_ids = Vec::new();
    let mut reads = 0;
    loop {
        let request_id = format!("read-{reads}");
        let request = ReadMessagesRequest { limit: 100, request_id: request_id.clone() };
        let page = client.read_messages(as_user(request.clone(), &bob)).await.expect("the reply fits").into_inner();
        reads += 1;
        let retry = client.read_messages(as_user(request, &bob)).await.unwrap().into_inner();
        assert_eq!(retry.messages, page.messages, "a retry returns the same batch");
        assert!(page.messages.len() < COUNT as usize || reads > 1, "the first page stops at the byte bound");
        read_ids.extend(page.messages.iter().map(|m| m.id));
        if page.unread_remaining == 0 {
            break;
        }
        assert!(!page.messages.is_empty());
    }
    assert!(reads > 1, "100 x 60 KiB did not fit in one read, so it took several");
    assert_eq!(read_ids, (1..=COUNT).collect::<Vec<_>>(), "every message read once, in order");

    let mut history_ids = Vec::new();
    let mut before_id = 0;
    loop {
        let request = as_user(HistoryRequest { peer: None, before_id, limit: 1000 }, &bob);
        let page = client.history(request).await.expect("the reply fits").into_inner();
        history_ids.extend(page.messages.iter().map(|m| m.id));
        if page.next_before_id == 0 {
            break;
        }
        before_id = page.next_before_id;
    }
    history_ids.reverse();
    assert_eq!(history_ids, (1..=COUNT).collect::<Vec<_>>(), "History pages through everything");
}

/// One connection holds at most `CLIENT_STREAMS_PER_CONNECTION_MAX` calls at once: with
/// that many live subscriptions open on it (8 accounts, 4 sessions each, 4 streams per
/// session: within every other bound), a further call on it waits until one of them ends,
/// while another connection is served at once.
#[tokio::test]
async fn one_connection_holds_a_bounded_number_of_calls() {
    const MOST: usize = chorus::node::CLIENT_STREAMS_PER_CONNECTION_MAX as usize;
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path());
    let mut client = node.client().await;
    let mut tokens = Vec::new();
    for n in 0..MOST / 16 {
        let user = format!("many{n}");
        tokens.push(account(&mut client, &user).await);
        for _ in 1..4 {
            tokens.push(login(&mut client, &user).await);
        }
    }
    let mut streams = Vec::new();
    for token in &tokens {
        for _ in 0..4 {
            streams
                .push(client.subscribe(as_user(SubscribeRequest { after_id: 0 }, token)).await.unwrap().into_inner());
        }
    }
    assert_eq!(streams.len(), MOST);
    let list = || ListAccountsRequest { pattern: String::new(), page_size: 1, page_token: String::new() };
    let mut waiting = client.clone();
    let mut queued = tokio::spawn(async move { waiting.list_accounts(list()).await.map(|r| r.into_inner()) });
    let wait = std::time::Duration::from_secs(2);
    assert!(
        tokio::time::timeout(wait, &mut queued).await.is_err(),
        "a call beyond {MOST} open ones on one connection was served at once"
    );
    // Another connection is not held up.
    node.client().await.list_accounts(list()).await.unwrap();
    drop(streams.pop());
    let served = tokio::time::timeout(std::time::Duration::from_secs(10), queued).await;
    assert!(served.expect("served once a stream ended").unwrap().is_ok());
}
