//! `chorus cluster status`: every member's view, as a table, marking the unreachable.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use chorus::client::ClusterClient;
use chorus::client::v1::{Role, StatusRequest, StatusResponse};
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{CellAlignment, Table};

/// How long one node may take to answer.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn print(client: &mut ClusterClient) -> Result<()> {
    // Ask the given servers first; their member lists name the rest of the cluster.
    let mut answers: BTreeMap<String, Option<StatusResponse>> = BTreeMap::new();
    let mut index = 0;
    while index < client.servers().len() {
        let server = client.servers()[index].clone();
        let mut cluster = client.cluster_of(index);
        let request = StatusRequest { include_state_digest: false };
        let answer = match tokio::time::timeout(STATUS_TIMEOUT, cluster.status(request)).await {
            Ok(Ok(response)) => Some(response.into_inner()),
            // Not a node that is down: the caller lacks the credential, and every node
            // will say so.
            Ok(Err(status)) if status.code() == tonic::Code::Unauthenticated => {
                anyhow::bail!("{}", status.message())
            }
            _ => None,
        };
        answers.insert(server, answer);
        index += 1;
    }
    let mut members: BTreeMap<u64, String> = BTreeMap::new();
    for answer in answers.values().flatten() {
        for member in &answer.members {
            members.insert(member.id, member.client_address.clone());
        }
    }
    let known: Vec<String> = client.servers().to_vec();
    let unknown: Vec<String> = members.values().filter(|a| !known.contains(a)).cloned().collect();
    for address in unknown {
        let mut single =
            ClusterClient::new(std::slice::from_ref(&address), client.policy(), client.security().clone())?;
        let answer = match tokio::time::timeout(
            STATUS_TIMEOUT,
            single.cluster_of(0).status(StatusRequest { include_state_digest: false }),
        )
        .await
        {
            Ok(Ok(response)) => Some(response.into_inner()),
            _ => None,
        };
        answers.insert(address, answer);
    }
    // The leader's view of each follower.
    let leader_view: BTreeMap<u64, (Option<u64>, Option<u64>)> = answers
        .values()
        .flatten()
        .find(|a| a.role() == Role::Leader)
        .map(|leader| leader.members.iter().map(|m| (m.id, (m.match_index, m.ms_since_contact))).collect())
        .unwrap_or_default();
    if let Some(cluster_id) = answers.values().flatten().map(|a| a.cluster_id.clone()).next() {
        println!("cluster {cluster_id}");
    }
    let mut rows: Vec<(u64, String, Option<&StatusResponse>)> = Vec::new();
    for (address, answer) in &answers {
        let id = answer
            .as_ref()
            .map(|a| a.node_id)
            .or_else(|| members.iter().find(|(_, a)| *a == address).map(|(id, _)| *id))
            .unwrap_or(0);
        rows.push((id, address.clone(), answer.as_ref()));
    }
    rows.sort_by_key(|(id, address, _)| (*id, address.clone()));
    let mut table = Table::new();
    table.load_style(UTF8_FULL_CONDENSED).set_header([
        "node", "role", "term", "leader", "commit", "applied", "last", "match", "contact", "address", "note",
    ]);
    for column in 2..=8 {
        if let Some(column) = table.column_mut(column) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    for (id, address, answer) in rows {
        let node = if id == 0 { "?".to_owned() } else { id.to_string() };
        let Some(a) = answer else {
            let dash = || "-".to_owned();
            table.add_row([
                node,
                dash(),
                dash(),
                dash(),
                dash(),
                dash(),
                dash(),
                dash(),
                dash(),
                address,
                "UNREACHABLE".to_owned(),
            ]);
            continue;
        };
        let role = match a.role() {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::PreCandidate => "pre-candidate",
            Role::Unspecified => "?",
        };
        let leader = if a.leader_id == 0 { "-".to_owned() } else { a.leader_id.to_string() };
        let (matched, contact) = leader_view.get(&a.node_id).copied().unwrap_or((None, None));
        let matched = matched.map_or("-".to_owned(), |m| m.to_string());
        let contact = contact.map_or("-".to_owned(), |ms| format!("{ms} ms"));
        let mut notes = Vec::new();
        if !a.fault.is_empty() {
            notes.push(format!("FAULT: {}", a.fault));
        }
        if !a.tls {
            notes.push("INSECURE (no TLS)".to_owned());
        }
        if a.peer_batches_refused > 0 || a.connections_refused > 0 || a.peer_messages_refused > 0 {
            notes.push(format!(
                "refused {} peer batch(es), {} peer message(s), {} connection(s)",
                a.peer_batches_refused, a.peer_messages_refused, a.connections_refused
            ));
        }
        let note = notes.join("; ");
        table.add_row([
            node,
            role.to_owned(),
            a.term.to_string(),
            leader,
            a.commit_index.to_string(),
            a.applied_index.to_string(),
            a.last_log_index.to_string(),
            matched,
            contact,
            address,
            note,
        ]);
    }
    println!("{table}");
    Ok(())
}
