//! The authorization matrix, over TLS against a real node: every method of every service
//! the client port serves, called without credentials and as the wrong user. No user can
//! read, delete or stream another user's messages; every method that acts as a user
//! answers UNAUTHENTICATED without a valid token; the cluster methods need a cluster
//! credential (a client certificate from the cluster's CA). The test reads the method
//! names from the protos, so a new method without a row here fails it.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use chorus::client::v1::chat_client::ChatClient;
use chorus::client::v1::cluster_client::ClusterClient as GrpcClusterClient;
use chorus::client::v1::raft_client::RaftClient;
use chorus::client::v1::{
    ChangePasswordRequest, CreateAccountRequest, DeleteAccountRequest, DeleteMessagesRequest, HistoryRequest,
    ListAccountsRequest, LoginRequest, LogoutRequest, RaftBatch, ReadMessagesRequest, SendMessageRequest,
    SnapshotChunk, StatusRequest, SubscribeRequest,
};
use chorus::client::{ClientSecurity, authorized};
use common::cluster::{TestCluster, connect};
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

/// The `rpc` names a proto file declares.
fn methods_of(proto: &str) -> BTreeSet<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/proto/chorus/v1").join(proto);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("rpc "))
        .map(|rest| rest.split('(').next().unwrap().trim().to_owned())
        .collect()
}

fn reason(status: &tonic::Status) -> String {
    status.get_details_error_info().map(|info| info.reason).unwrap_or_default()
}

/// A request with no authorization, or with `token`'s.
fn request<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    match token {
        Some(token) => authorized(message, token).unwrap(),
        None => tonic::Request::new(message),
    }
}

/// Calls Chat method `method` as `token` (or anonymously) with a harmless request; returns
/// the error, if any.
async fn call(chat: &mut ChatClient<Channel>, method: &str, token: Option<&str>) -> Option<tonic::Status> {
    let result = match method {
        "CreateAccount" => {
            let create = CreateAccountRequest { username: "zed".into(), password: "zed-password".into() };
            chat.create_account(request(create, token)).await.map(drop)
        }
        "Login" => {
            let login = LoginRequest { username: "nobody".into(), password: "wrong-password".into() };
            chat.login(request(login, token)).await.map(drop)
        }
        "Logout" => chat.logout(request(LogoutRequest {}, token)).await.map(drop),
        "ListAccounts" => chat.list_accounts(request(ListAccountsRequest::default(), token)).await.map(drop),
        "SendMessage" => {
            let send =
                SendMessageRequest { to: "alice".into(), body: "x".into(), sequence: 1000, acknowledged_through: 0 };
            chat.send_message(request(send, token)).await.map(drop)
        }
        "ReadMessages" => chat.read_messages(request(ReadMessagesRequest::default(), token)).await.map(drop),
        "History" => chat.history(request(HistoryRequest::default(), token)).await.map(drop),
        "DeleteMessages" => {
            chat.delete_messages(request(DeleteMessagesRequest { ids: vec![1] }, token)).await.map(drop)
        }
        "ChangePassword" => {
            let change =
                ChangePasswordRequest { old_password: "wrong-password".into(), new_password: "new-password".into() };
            chat.change_password(request(change, token)).await.map(drop)
        }
        "DeleteAccount" => {
            let delete = DeleteAccountRequest { password: "wrong-password".into() };
            chat.delete_account(request(delete, token)).await.map(drop)
        }
        "Subscribe" => chat.subscribe(request(SubscribeRequest { after_id: 0 }, token)).await.map(drop),
        other => panic!("no row of the matrix for Chat/{other}: add one"),
    };
    result.err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_method_serves_a_caller_it_should_not() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = TestCluster::start(dir.path(), 1);
    let address = cluster.client_address(1);
    let ClientSecurity::Tls { ca_pem, .. } = cluster.security() else { panic!("the test cluster runs TLS") };
    // A person's client: TLS, no client certificate.
    let person = ClientSecurity::Tls { ca_pem, identity: None };
    let mut chat = ChatClient::new(connect(&address, &person).await);
    let mut tokens = Vec::new();
    for name in ["alice", "bob", "carol"] {
        let password = format!("{name}-password");
        chat.create_account(CreateAccountRequest { username: name.into(), password: password.clone() }).await.unwrap();
        let login = chat.login(LoginRequest { username: name.into(), password }).await.unwrap();
        tokens.push(login.into_inner().token);
    }
    let (alice, bob, carol) = (&tokens[0], &tokens[1], &tokens[2]);

    // Without a token (and with one that names no session), every method that acts as a
    // user is UNAUTHENTICATED; the three public ones are not.
    let public: BTreeSet<&str> = ["CreateAccount", "Login", "ListAccounts"].into();
    let chat_methods = methods_of("chat.proto");
    assert!(chat_methods.len() >= 11, "{chat_methods:?}");
    for method in &chat_methods {
        for token in [None, Some("0000")] {
            let error = call(&mut chat, method, token).await;
            if public.contains(method.as_str()) {
                // Served: a listing, the refusal of a wrong password, or of a taken name.
                let expected = match method.as_str() {
                    "Login" => Some(chorus_proto::wire::LOGIN_FAILED),
                    "CreateAccount" if error.is_some() => Some(chorus_proto::wire::USERNAME_TAKEN),
                    _ => None,
                };
                assert_eq!(error.as_ref().map(reason).as_deref(), expected, "Chat/{method}: {error:?}");
            } else {
                let error = error.unwrap_or_else(|| panic!("Chat/{method} served an anonymous caller"));
                assert_eq!(error.code(), Code::Unauthenticated, "Chat/{method}: {error:?}");
                assert_eq!(reason(&error), chorus_proto::wire::SESSION_INVALID, "Chat/{method}");
            }
        }
    }

    // Alice writes to Carol; Bob, with his own valid session, can see none of it.
    let send = |to: &str, body: &str, sequence| SendMessageRequest {
        to: to.into(),
        body: body.into(),
        sequence,
        acknowledged_through: 0,
    };
    let private = chat.send_message(request(send("carol", "for carol only", 1), Some(alice))).await.unwrap();
    let private_id = private.into_inner().message_id;
    chat.send_message(request(send("bob", "for bob", 2), Some(alice))).await.unwrap();
    let history = chat.history(request(HistoryRequest::default(), Some(bob))).await.unwrap().into_inner();
    assert!(history.messages.iter().all(|m| m.from == "bob" || m.to == "bob"), "{:?}", history.messages);
    let peer = HistoryRequest { peer: Some("carol".into()), ..HistoryRequest::default() };
    let with_carol = chat.history(request(peer, Some(bob))).await.unwrap().into_inner();
    assert!(with_carol.messages.is_empty(), "bob sees no conversation of alice and carol");
    let read = chat.read_messages(request(ReadMessagesRequest::default(), Some(bob))).await.unwrap().into_inner();
    assert_eq!(read.messages.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(), ["for bob"]);
    let delete = DeleteMessagesRequest { ids: vec![private_id] };
    let refused = chat.delete_messages(request(delete, Some(bob))).await.unwrap_err();
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    let mut stream = chat.subscribe(request(SubscribeRequest { after_id: 0 }, Some(bob))).await.unwrap().into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.body, "for bob", "bob's stream starts with his message, not carol's");
    // Carol still has hers: nothing Bob did touched it.
    let hers = chat.read_messages(request(ReadMessagesRequest::default(), Some(carol))).await.unwrap().into_inner();
    assert_eq!(hers.messages.iter().map(|m| m.id).collect::<Vec<_>>(), [private_id]);

    // The cluster methods need a client certificate from the cluster's CA.
    let cluster_methods = methods_of("cluster.proto");
    assert_eq!(
        cluster_methods,
        ["Status".to_owned(), "TransferLeader".to_owned()].into(),
        "add a row for each new Cluster method"
    );
    let mut anonymous = GrpcClusterClient::new(connect(&address, &person).await);
    let refused = anonymous.status(StatusRequest::default()).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert_eq!(reason(&refused), chorus_proto::wire::CREDENTIAL_REQUIRED);
    let as_user = anonymous.status(request(StatusRequest::default(), Some(alice))).await.unwrap_err();
    assert_eq!(as_user.code(), Code::Unauthenticated, "a user's token is no cluster credential");
    // Moving the leader: refused before anything is looked at (even a target of 0).
    for token in [None, Some(alice.as_str())] {
        let transfer = request(chorus_proto::v1::TransferLeaderRequest { target_id: 0 }, token);
        let refused = anonymous.transfer_leader(transfer).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
        assert_eq!(reason(&refused), chorus_proto::wire::CREDENTIAL_REQUIRED);
    }
    let mut operator = GrpcClusterClient::new(connect(&address, &cluster.security()).await);
    operator.status(StatusRequest::default()).await.expect("the operator's certificate is a cluster credential");
    let transfer = chorus_proto::v1::TransferLeaderRequest { target_id: 0 };
    let refused = operator.transfer_leader(transfer).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "the operator's call is served: {refused:?}");

    // The peer service is not served on the client port at all.
    let raft_methods = methods_of("raft.proto");
    assert_eq!(
        raft_methods,
        ["Deliver".to_owned(), "InstallSnapshot".to_owned()].into(),
        "add a row for each new Raft method"
    );
    let mut raft = RaftClient::new(connect(&address, &cluster.security()).await);
    let batch = RaftBatch { cluster_id: "e2e".into(), from: 1, to: 1, messages: vec![] };
    assert_eq!(raft.deliver(batch).await.unwrap_err().code(), Code::Unimplemented);
    let chunk = SnapshotChunk { cluster_id: "e2e".into(), from: 1, to: 1, ..SnapshotChunk::default() };
    assert_eq!(raft.install_snapshot(chunk).await.unwrap_err().code(), Code::Unimplemented);
}
