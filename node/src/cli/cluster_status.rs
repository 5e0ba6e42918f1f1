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

/// What each node answered (`None`: no answer in time), by the address it was asked at.
type Answers = BTreeMap<String, Option<StatusResponse>>;

/// Asks every given server, then every member their member lists name, for its status.
async fn gather(client: &mut ClusterClient) -> Result<Answers> {
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
    let members = members_named(&answers);
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
    Ok(answers)
}

/// Every member any answer names, with its client address.
fn members_named(answers: &Answers) -> BTreeMap<u64, String> {
    answers.values().flatten().flat_map(|a| a.members.iter().map(|m| (m.id, m.client_address.clone()))).collect()
}

pub async fn print(client: &mut ClusterClient) -> Result<()> {
    let answers = gather(client).await?;
    let members = members_named(&answers);
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

/// A follower that the leader has heard from within this long, and whose log matches the
/// leader's to within [`CAUGHT_UP_ENTRIES`] of the leader's commit index, is caught up.
const CONTACT_RECENT_MS: u64 = 1_000;
const CAUGHT_UP_ENTRIES: u64 = 100;

/// `chorus cluster health`: whether every member answers, follows one leader and is caught
/// up with it; with `wait`, asks again until it is or `wait` has passed. The check a rolling
/// upgrade makes before it takes the next node down: any problem it names would leave the
/// cluster one fault closer to losing its majority.
pub async fn health(client: &mut ClusterClient, wait: Duration) -> Result<()> {
    let started = chorus::seam::monotonic_now();
    loop {
        let answers = gather(client).await?;
        match judge(&answers) {
            Ok(healthy) => {
                println!("{healthy}");
                return Ok(());
            }
            Err(problems) if chorus::seam::monotonic_now().duration_since(started) >= wait => {
                anyhow::bail!("unhealthy: {}", problems.join("; "))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// How long a transfer may take, as the leader answers it (it waits at most two election
/// timeouts for each of its two steps).
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(30);

/// `chorus cluster transfer-leader ID`: finds the leader and asks it to hand over to `id`.
pub async fn transfer_leader(client: &mut ClusterClient, id: u64) -> Result<()> {
    let answers = gather(client).await?;
    let leader = answers
        .iter()
        .filter_map(|(address, a)| a.as_ref().map(|a| (address, a)))
        .filter(|(_, a)| a.role() == Role::Leader)
        .max_by_key(|(_, a)| a.term);
    let Some((address, leader)) = leader else {
        anyhow::bail!(
            "no member leads right now (an election may be under way): retry, or see `chorus cluster status`"
        );
    };
    if !members_named(&answers).contains_key(&id) {
        anyhow::bail!(
            "node {id} is not a member of the cluster (members: {:?})",
            members_named(&answers).keys().collect::<Vec<_>>()
        );
    }
    let mut single = ClusterClient::new(std::slice::from_ref(address), client.policy(), client.security().clone())?;
    let request = chorus::client::v1::TransferLeaderRequest { target_id: id };
    let answer =
        tokio::time::timeout(TRANSFER_TIMEOUT, single.cluster_of(0).transfer_leader(request)).await.map_err(|_| {
            anyhow::anyhow!("node {} did not answer within {} s", leader.node_id, TRANSFER_TIMEOUT.as_secs())
        })?;
    match answer {
        Ok(response) => {
            let now = response.into_inner().leader_id;
            if now == id {
                println!("leader: node {now} (was node {})", leader.node_id);
                Ok(())
            } else {
                anyhow::bail!("node {now} leads now, not node {id} (an election took over): ask again")
            }
        }
        Err(status) => anyhow::bail!("node {} refused: {}", leader.node_id, status.message()),
    }
}

/// "healthy: leader N, …" or every problem found.
fn judge(answers: &Answers) -> Result<String, Vec<String>> {
    let mut problems = Vec::new();
    let members = members_named(answers);
    if members.is_empty() {
        return Err(vec!["no node answered".to_owned()]);
    }
    let answer_of = |id: u64| answers.values().flatten().find(|a| a.node_id == id);
    for (id, address) in &members {
        match answer_of(*id) {
            None => problems.push(format!("member {id} ({address}) does not answer")),
            Some(a) if !a.fault.is_empty() => problems.push(format!("member {id} is faulty: {}", a.fault)),
            Some(_) => {}
        }
    }
    let leaders: Vec<&StatusResponse> = answers.values().flatten().filter(|a| a.role() == Role::Leader).collect();
    let Some(leader) = leaders.iter().max_by_key(|a| a.term).copied() else {
        problems.push("no member leads".to_owned());
        return Err(problems);
    };
    for a in answers.values().flatten().filter(|a| a.node_id != leader.node_id) {
        if a.term != leader.term || a.leader_id != leader.node_id {
            problems.push(format!(
                "member {} is a {:?} in term {} following {} (the leader is {} in term {})",
                a.node_id,
                a.role(),
                a.term,
                a.leader_id,
                leader.node_id,
                leader.term
            ));
        }
    }
    for member in leader.members.iter().filter(|m| m.id != leader.node_id) {
        let Some(matched) = member.match_index else {
            problems.push(format!("the leader does not know how much of its log member {} holds", member.id));
            continue;
        };
        if matched.saturating_add(CAUGHT_UP_ENTRIES) < leader.commit_index {
            problems.push(format!(
                "member {} is behind: the leader knows it holds entries to {matched} of {} committed",
                member.id, leader.commit_index
            ));
        }
        match member.ms_since_contact {
            Some(ms) if ms <= CONTACT_RECENT_MS => {}
            Some(ms) => problems.push(format!("the leader last heard member {} {ms} ms ago", member.id)),
            None => problems.push(format!("the leader has not heard member {}", member.id)),
        }
    }
    if problems.is_empty() {
        Ok(format!(
            "healthy: leader {}, {} of {} members caught up (term {}, commit {})",
            leader.node_id,
            members.len(),
            members.len(),
            leader.term,
            leader.commit_index
        ))
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use chorus::client::v1::MemberStatus;

    use super::*;

    /// Three members: 1 leads term 4 at commit 500 and has heard 2 and 3 lately, which
    /// hold everything.
    fn healthy_answers() -> Answers {
        let members = |leader: bool| {
            (1..=3)
                .map(|id| MemberStatus {
                    id,
                    client_address: format!("10.0.0.{id}:7001"),
                    peer_address: format!("10.0.0.{id}:7101"),
                    match_index: leader.then_some(500),
                    ms_since_contact: leader.then_some(40),
                })
                .collect::<Vec<_>>()
        };
        (1..=3)
            .map(|id| {
                let role = if id == 1 { Role::Leader } else { Role::Follower };
                let answer = StatusResponse {
                    cluster_id: "chat".to_owned(),
                    node_id: id,
                    role: role as i32,
                    term: 4,
                    leader_id: 1,
                    commit_index: 500,
                    applied_index: 500,
                    last_log_index: 500,
                    members: members(id == 1),
                    tls: true,
                    ..StatusResponse::default()
                };
                (format!("10.0.0.{id}:7001"), Some(answer))
            })
            .collect()
    }

    fn problems_of(answers: &Answers) -> String {
        judge(answers).expect_err("unhealthy").join("; ")
    }

    #[test]
    fn a_cluster_following_one_caught_up_leader_is_healthy() {
        let verdict = judge(&healthy_answers()).unwrap();
        assert_eq!(verdict, "healthy: leader 1, 3 of 3 members caught up (term 4, commit 500)");
    }

    #[test]
    fn each_way_of_being_unhealthy_is_named() {
        let mut silent = healthy_answers();
        silent.insert("10.0.0.3:7001".to_owned(), None);
        assert!(problems_of(&silent).contains("member 3 (10.0.0.3:7001) does not answer"), "{}", problems_of(&silent));

        let mut behind = healthy_answers();
        behind.get_mut("10.0.0.1:7001").unwrap().as_mut().unwrap().members[1].match_index = Some(399);
        assert!(problems_of(&behind).contains("member 2 is behind"), "{}", problems_of(&behind));
        let mut unknown = healthy_answers();
        unknown.get_mut("10.0.0.1:7001").unwrap().as_mut().unwrap().members[1].match_index = None;
        assert!(problems_of(&unknown).contains("how much of its log member 2 holds"), "{}", problems_of(&unknown));
        let mut nearly = healthy_answers();
        nearly.get_mut("10.0.0.1:7001").unwrap().as_mut().unwrap().members[1].match_index = Some(400);
        assert!(judge(&nearly).is_ok(), "within the allowed lag");

        let mut unheard = healthy_answers();
        unheard.get_mut("10.0.0.1:7001").unwrap().as_mut().unwrap().members[2].ms_since_contact = Some(1_500);
        assert!(problems_of(&unheard).contains("last heard member 3 1500 ms ago"), "{}", problems_of(&unheard));

        let mut split = healthy_answers();
        let follower = split.get_mut("10.0.0.2:7001").unwrap().as_mut().unwrap();
        (follower.term, follower.leader_id, follower.role) = (5, 0, Role::Candidate as i32);
        assert!(problems_of(&split).contains("member 2 is a Candidate in term 5"), "{}", problems_of(&split));

        let mut faulty = healthy_answers();
        faulty.get_mut("10.0.0.3:7001").unwrap().as_mut().unwrap().fault = "log corrupt".to_owned();
        assert!(problems_of(&faulty).contains("member 3 is faulty: log corrupt"), "{}", problems_of(&faulty));

        let mut leaderless = healthy_answers();
        leaderless.get_mut("10.0.0.1:7001").unwrap().as_mut().unwrap().role = Role::Follower as i32;
        assert!(problems_of(&leaderless).contains("no member leads"), "{}", problems_of(&leaderless));

        assert_eq!(problems_of(&Answers::new()), "no node answered");
    }
}
