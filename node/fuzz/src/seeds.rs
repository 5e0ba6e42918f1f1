//! The seed inputs of each target: well-formed inputs that reach deep into the code, from
//! which the fuzzer mutates its way to the edges. They are made with the real encoders, so
//! they follow the code when it changes; `fuzz-seeds` writes them into `corpus/`.

use bytes::Bytes;
use chorus::replication::{AppendResult, Entry, LogPosition, Membership, Message, MessageBody, Payload};
use chorus::transport::encode_message;
use chorus_proto::v1::{self as pb, command::Kind};
use prost::Message as _;

use crate::raft_batch::{CLUSTER_ID, NODE_ID};

pub struct Seed {
    pub target: &'static str,
    pub name: &'static str,
    pub data: Vec<u8>,
}

impl Seed {
    pub fn file_name(&self) -> String {
        format!("seed-{}", self.name)
    }
}

/// The seed `name` of `target`, for the targets' tests.
pub fn named(target: &str, name: &str) -> Vec<u8> {
    all()
        .into_iter()
        .find(|seed| seed.target == target && seed.name == name)
        .unwrap_or_else(|| panic!("no seed {name} for {target}"))
        .data
}

pub fn all() -> Vec<Seed> {
    let mut seeds = Vec::new();
    seeds.extend(raft_batches());
    seeds.extend(raft_steps());
    seeds.extend(chat_commands());
    seeds.extend(log_edits());
    seeds.extend(api_inputs());
    seeds.extend(api_calls());
    seeds
}

fn batch(cluster_id: &str, from: u64, messages: Vec<Message>) -> Vec<u8> {
    pb::RaftBatch {
        cluster_id: cluster_id.to_owned(),
        from,
        to: NODE_ID,
        messages: messages.iter().map(encode_message).collect(),
    }
    .encode_to_vec()
}

/// A batch of every kind of message, from member 2 in term 3.
fn every_kind() -> Vec<Message> {
    let message = |term, body| Message { from: 2, to: NODE_ID, term, body };
    let position = |index, term| LogPosition { index, term };
    let entries = vec![
        Entry { term: 1, index: 1, payload: Payload::Noop },
        Entry { term: 2, index: 2, payload: Payload::Command(Bytes::from_static(b"a command")) },
        Entry {
            term: 3,
            index: 3,
            payload: Payload::Membership(Membership {
                learners: [4].into(),
                context: Bytes::from_static(b"addresses"),
                ..Membership::with_voters([1, 2, 3])
            }),
        },
    ];
    vec![
        message(3, MessageBody::PreVoteRequest { last_log: position(2, 2), leadership_transfer: false }),
        message(3, MessageBody::PreVoteResponse { granted: true }),
        message(3, MessageBody::VoteRequest { last_log: position(2, 2), leadership_transfer: true }),
        message(3, MessageBody::VoteResponse { granted: false }),
        message(
            3,
            MessageBody::AppendRequest {
                previous: position(0, 0),
                entries,
                leader_commit: 1,
                heartbeat_round: 7,
                transfer_target: Some(3),
            },
        ),
        message(
            3,
            MessageBody::AppendResponse { result: AppendResult::Accepted { match_index: 2 }, heartbeat_round: 7 },
        ),
        message(
            3,
            MessageBody::AppendResponse {
                result: AppendResult::Rejected { rejected_previous: 2, conflict_term: Some(1), first_index_of_term: 1 },
                heartbeat_round: 8,
            },
        ),
        message(3, MessageBody::TimeoutNow { last_log: position(2, 2) }),
    ]
}

/// For each role of `raft_step`'s replica, each kind of message alone.
fn raft_steps() -> Vec<Seed> {
    const NAMES: [&str; 4] = ["follower", "pre-candidate", "candidate", "leader"];
    let mut seeds = Vec::new();
    for (role, role_name) in (0u8..).zip(NAMES) {
        for message in every_kind() {
            let kind = message.body.kind();
            let mut data = vec![role];
            data.extend(batch(CLUSTER_ID, 2, vec![message]));
            let name: &'static str = format!("{role_name}-{}-{kind}", seeds.len() % 8).leak();
            seeds.push(Seed { target: "raft_step", name, data });
        }
    }
    seeds
}

fn raft_batches() -> Vec<Seed> {
    let message = |term, body| Message { from: 2, to: NODE_ID, term, body };
    let position = |index, term| LogPosition { index, term };
    let all_kinds = every_kind();
    let heartbeat = vec![message(
        4,
        MessageBody::AppendRequest {
            previous: position(5, 4),
            entries: Vec::new(),
            leader_commit: 5,
            heartbeat_round: 1,
            transfer_target: None,
        },
    )];
    vec![
        Seed { target: "raft_batch", name: "every-kind", data: batch(CLUSTER_ID, 2, all_kinds) },
        Seed { target: "raft_batch", name: "heartbeat", data: batch(CLUSTER_ID, 2, heartbeat.clone()) },
        Seed { target: "raft_batch", name: "other-cluster", data: batch("another", 2, heartbeat.clone()) },
        Seed { target: "raft_batch", name: "from-self", data: batch(CLUSTER_ID, NODE_ID, heartbeat) },
    ]
}

/// One log entry of `chat_command`'s input: control byte, then the sized payload.
fn entry(control: u8, command: Kind, proposed_at_ms: u64) -> Vec<u8> {
    let payload = pb::Command { kind: Some(command), proposed_at_ms }.encode_to_vec();
    let mut out = vec![control];
    out.extend_from_slice(&u16::try_from(payload.len()).expect("a seed command is small").to_le_bytes());
    out.extend(payload);
    out
}

fn chat_commands() -> Vec<Seed> {
    const HASH: &str = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";
    const NEW_HASH: &str = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$bmV3aGFzaG5ld2hhc2huZXc";
    let (alice_token, bob_token) = (vec![0xa1; 32], vec![0xb0; 32]);
    let t = 1_800_000_000_000u64;
    let create = |name: &str| {
        Kind::CreateAccount(pb::CreateAccountCommand {
            username: name.to_owned(),
            password_hash: HASH.to_owned(),
            created_at_ms: t,
        })
    };
    let open = |user_id, token: &Vec<u8>| {
        Kind::OpenSession(pb::OpenSessionCommand {
            user_id,
            token_hash: token.clone(),
            opened_at_ms: t,
            expires_at_ms: t + 3_600_000,
            password_hash: HASH.to_owned(),
        })
    };
    let send = |token: &Vec<u8>, to: &str, sequence| {
        Kind::SendMessage(pb::SendMessageCommand {
            token_hash: token.clone(),
            to: to.to_owned(),
            body: format!("message {sequence}"),
            sent_at_ms: t,
            sequence,
            acknowledged_through: sequence - 1,
        })
    };
    let story = [
        entry(0, create("alice"), t),
        // A no-op of the log's own: a control byte alone.
        vec![1],
        entry(2, create("bob"), t + 1),
        entry(0, open(1, &alice_token), t + 2),
        entry(0, open(2, &bob_token), t + 3),
        entry(2, send(&alice_token, "bob", 1), t + 4),
        entry(0, send(&alice_token, "bob", 2), t + 5),
        entry(
            0,
            Kind::ReadMessages(pb::ReadMessagesCommand {
                token_hash: bob_token.clone(),
                limit: 10,
                read_at_ms: t + 6,
                request_id: "read-1".to_owned(),
            }),
            t + 6,
        ),
        entry(
            2,
            Kind::DeleteMessages(pb::DeleteMessagesCommand { token_hash: bob_token.clone(), ids: vec![1, 2] }),
            t + 7,
        ),
        entry(
            0,
            Kind::ChangePassword(pb::ChangePasswordCommand {
                token_hash: alice_token.clone(),
                old_password_hash: HASH.to_owned(),
                new_password_hash: NEW_HASH.to_owned(),
            }),
            t + 8,
        ),
        entry(0, Kind::CloseSession(pb::CloseSessionCommand { token_hash: alice_token.clone() }), t + 9),
        entry(
            0,
            Kind::DeleteAccount(pb::DeleteAccountCommand {
                token_hash: bob_token.clone(),
                password_hash: HASH.to_owned(),
                deleted_at_ms: t + 10,
            }),
            t + 10,
        ),
    ]
    .concat();
    // A session that outlives its login: the log's time passes its expiry.
    let expiry = [
        entry(0, create("carol"), t),
        entry(0, open(1, &alice_token), t),
        entry(2, send(&alice_token, "carol", 1), t + 4_000_000),
    ]
    .concat();
    let undecodable = [vec![0x00, 0x03, 0x00, 0xff, 0xff, 0xff], entry(0x30, create("dave"), t)].concat();
    vec![
        Seed { target: "chat_command", name: "story", data: story },
        Seed { target: "chat_command", name: "expiry", data: expiry },
        Seed { target: "chat_command", name: "undecodable", data: undecodable },
    ]
}

/// One edit of `log_record`'s input.
fn log_edit(opcode: u8, row: u8, value: u64, payload: Option<&[u8]>) -> Vec<u8> {
    let mut out = vec![opcode, row];
    out.extend_from_slice(&value.to_le_bytes());
    if let Some(payload) = payload {
        out.extend_from_slice(&u16::try_from(payload.len()).expect("small").to_le_bytes());
        out.extend_from_slice(payload);
    }
    out
}

fn log_edits() -> Vec<Seed> {
    vec![
        Seed { target: "log_record", name: "untouched", data: Vec::new() },
        // Entry 5's term raised to 9 with a checksum that passes: after the stored term.
        Seed { target: "log_record", name: "term-past-stored", data: log_edit(4, 4, 9, None) },
        // Entry 3's term lowered to 0 with a checksum that passes: terms go backwards.
        Seed { target: "log_record", name: "term-backwards", data: log_edit(4, 2, 0, None) },
        Seed { target: "log_record", name: "payload-changed", data: log_edit(8, 1, 0, Some(b"forged command")) },
        Seed { target: "log_record", name: "payload-kind-unknown", data: log_edit(6, 1, 7, None) },
        Seed { target: "log_record", name: "row-missing", data: log_edit(10, 3, 0, None) },
        Seed { target: "log_record", name: "negative-checksum", data: log_edit(3, 0, u64::MAX, None) },
        Seed { target: "log_record", name: "text-term", data: log_edit(11, 0, 0, Some(b"three")) },
        Seed { target: "log_record", name: "vote-rewritten", data: log_edit(12, 0, (5 << 8) | 0x80 | 3, None) },
        Seed { target: "log_record", name: "file-byte-flipped", data: log_edit(15, 0, (4200 << 8) | 0x10, None) },
    ]
}

fn api_inputs() -> Vec<Seed> {
    let numbers = |values: [u64; 6]| values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    let with_text = |values, text: &str| [numbers(values), text.as_bytes().to_vec()].concat();
    vec![
        Seed { target: "api_input", name: "name", data: with_text([2, 1, 50, 3, 7, 9], "Alice_01") },
        Seed { target: "api_input", name: "pattern", data: with_text([1, 0, 0, 1, 0, 0], "a*b?") },
        Seed { target: "api_input", name: "page-token", data: with_text([5, 5, 2000, 1500, 0, 1], "p1.626f62") },
        Seed { target: "api_input", name: "unicode", data: with_text([0, 0, 0, 0, 0, 0], "ünïcödé name 🙂") },
    ]
}

/// One call of `api_handlers`' input: method, credentials, then the sized request.
fn call(method: u8, auth: u8, request: impl prost::Message) -> Vec<u8> {
    let body = request.encode_to_vec();
    let mut out = vec![method, auth];
    out.extend_from_slice(&u16::try_from(body.len()).expect("a seed request is small").to_le_bytes());
    out.extend(body);
    out
}

fn api_calls() -> Vec<Seed> {
    // Credentials: 0 none, 1 + 4k the k-th token this run's logins returned, 2 a made-up
    // token, 3 a token without its scheme.
    let (none, alice, bob, forged) = (0, 1, 1 + 4, 2);
    let account = |username: &str, password: &str| pb::CreateAccountRequest {
        username: username.to_owned(),
        password: password.to_owned(),
    };
    let login = |username: &str, password: &str| pb::LoginRequest {
        username: username.to_owned(),
        password: password.to_owned(),
    };
    let send = |sequence| pb::SendMessageRequest {
        to: "bob".to_owned(),
        body: format!("hello {sequence}"),
        sequence,
        acknowledged_through: sequence - 1,
    };
    let story = [
        call(0, none, account("alice", "alice-password")),
        call(0, none, account("bob", "bob-password")),
        call(1, none, login("alice", "alice-password")),
        call(1, none, login("bob", "bob-password")),
        call(4, alice, send(1)),
        call(4, alice, send(2)),
        call(4, alice, send(2)),
        call(10, bob, pb::SubscribeRequest { after_id: 0 }),
        call(5, bob, pb::ReadMessagesRequest { limit: 1, request_id: "r1".to_owned() }),
        call(6, bob, pb::HistoryRequest { peer: Some("alice".to_owned()), before_id: 0, limit: 10 }),
        call(7, bob, pb::DeleteMessagesRequest { ids: vec![1, 99] }),
        call(3, alice, pb::ListAccountsRequest { pattern: "*".to_owned(), page_size: 1, page_token: String::new() }),
        call(
            8,
            alice,
            pb::ChangePasswordRequest {
                old_password: "alice-password".to_owned(),
                new_password: "new-password".to_owned(),
            },
        ),
        call(2, bob, pb::LogoutRequest {}),
        call(9, alice, pb::DeleteAccountRequest { password: "new-password".to_owned() }),
    ]
    .concat();
    let refused = [
        call(0, none, account("Not A Name!", "short")),
        call(1, none, login("nobody", "whatever-password")),
        call(4, forged, send(1)),
        call(4, 3, send(1)),
        call(
            3,
            none,
            pb::ListAccountsRequest { pattern: "[a-z]".to_owned(), page_size: 5, page_token: "x".to_owned() },
        ),
        call(10, none, pb::SubscribeRequest { after_id: 0 }),
    ]
    .concat();
    let wrong_passwords = [
        call(0, none, account("carol", "carol-password")),
        call(1, none, login("carol", "carol-password")),
        call(
            8,
            alice,
            pb::ChangePasswordRequest { old_password: "wrong".to_owned(), new_password: "whatever-1".to_owned() },
        ),
        call(9, alice, pb::DeleteAccountRequest { password: "wrong".to_owned() }),
        call(1, none, login("carol", "wrong")),
    ]
    .concat();
    vec![
        Seed { target: "api_handlers", name: "story", data: story },
        Seed { target: "api_handlers", name: "refused", data: refused },
        Seed { target: "api_handlers", name: "wrong-passwords", data: wrong_passwords },
    ]
}
