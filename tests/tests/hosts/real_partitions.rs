//! Partitions that loopback cannot show, with five hosts of one node each and clients on
//! two more: a leader cut off one way (it sends, hears nothing), a flapping link, and 5 %
//! loss with 50 ms delay on a majority. Writes still commit in each, the simulation's
//! checkers find nothing wrong in what the clients saw, and once healed all five nodes
//! converge.

use crate::common;

use std::time::Duration;

use crate::common::{say, wait_for_convergence};
use chorus_hosts::{Placement, Traffic};

const NODE_HOSTS: [&str; 5] = ["n1", "n2", "n3", "n4", "n5"];
const CLIENT_HOSTS: [&str; 2] = ["c1", "c2"];

fn others(host: &str) -> Vec<String> {
    NODE_HOSTS.iter().filter(|other| **other != host).map(|other| (*other).to_owned()).collect()
}

#[test]
fn writes_commit_through_a_one_way_cut_leader_a_flapping_link_and_a_slow_lossy_majority() {
    if !common::hosts_available("writes_commit_through_a_one_way_cut_leader_a_flapping_link_and_a_slow_lossy_majority")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut placements: Vec<Placement> =
        NODE_HOSTS.iter().enumerate().map(|(index, host)| Placement::new(host, &[index as u64 + 1])).collect();
    placements.extend(CLIENT_HOSTS.iter().map(|host| Placement::new(host, &[])));
    let mut testbed = common::start(dir.path(), &placements);
    let leader = testbed.wait_for_leader(Duration::from_secs(20)).unwrap();
    let traffic = Traffic::start(&testbed, &CLIENT_HOSTS, 2, 0x5eed).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let mut phases = Vec::new();
    // Sends invoked in a fault's first seconds may have started on a leader about to be
    // cut off and finish after an election: counted are those invoked after this, and
    // acknowledged while the fault is still in force.
    const SETTLE: Duration = Duration::from_secs(2);

    let cut = testbed.host_of(leader).unwrap().name.clone();
    testbed.network_mut().one_way(&cut, &others(&cut)).unwrap();
    let started = traffic.now();
    say(&format!("leader {leader}'s host {cut} cut off one way: it sends to the other nodes and hears none"));
    std::thread::sleep(Duration::from_secs(8));
    let new_leader = testbed.wait_for_leader(Duration::from_secs(10)).unwrap();
    testbed.network_mut().reconnect(&cut).unwrap();
    phases.push(("one-way cut leader", started, traffic.now()));
    say(&format!("healed; node {new_leader} led by the end"));

    let flapping = testbed.host_of(testbed.wait_for_leader(Duration::from_secs(20)).unwrap()).unwrap().name.clone();
    let started = traffic.now();
    for flap in 0..20 {
        if flap % 2 == 0 {
            testbed.network_mut().airplane(&flapping).unwrap();
        } else {
            testbed.network_mut().land(&flapping).unwrap();
        }
        std::thread::sleep(Duration::from_millis(if flap % 4 < 2 { 300 } else { 700 }));
    }
    testbed.network_mut().land(&flapping).unwrap();
    phases.push(("flapping link", started, traffic.now()));
    say(&format!("the leader's host {flapping} flapped its link 10 times in 10 s"));

    for host in &NODE_HOSTS[..3] {
        testbed.network_mut().slow(host, Duration::from_millis(50), 5).unwrap();
    }
    let started = traffic.now();
    say("hosts n1, n2, n3 (a majority) slow: 50 ms each way, 5 % loss");
    std::thread::sleep(Duration::from_secs(8));
    for host in &NODE_HOSTS[..3] {
        testbed.network_mut().slow(host, Duration::ZERO, 0).unwrap();
    }
    phases.push(("slow lossy majority", started, traffic.now()));

    for (phase, from, to) in &phases {
        let acknowledged = traffic.sends_acknowledged_between(*from + SETTLE, *to);
        say(&format!("{phase}: {acknowledged} sends acknowledged during it"));
        assert!(acknowledged > 0, "writes must still commit during the {phase} ({from:?} to {to:?})");
    }
    let (history, violations) = traffic.finish(&testbed).unwrap();
    say(&format!("{} operations recorded; checkers found {} problem(s)", history.operations.len(), violations.len()));
    assert!(
        violations.is_empty(),
        "the checkers found:\n{}",
        violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
    );
    wait_for_convergence(&testbed, Duration::from_secs(30));
    say("all five nodes converged: same applied index, same state digest");
}
