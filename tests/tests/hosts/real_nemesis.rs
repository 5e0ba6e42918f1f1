//! A nemesis against real processes on hosts with their own network stacks, checked from
//! outside: clients on two hosts send, read and subscribe while the nemesis kills, pauses,
//! cuts off (airplane mode, partitions, one way) and slows the five node hosts, never more
//! than two at a time; then everything heals, and the simulation's checkers judge what the
//! clients recorded, and all five nodes must converge.
//!
//! CHORUS_NEMESIS_SECS sets how long the faults go on (default 45 s, what scripts/test.sh
//! runs); CHORUS_NEMESIS_SEED the seed of the nemesis's and the clients' choices (printed,
//! so that a failing schedule can be run again; real time makes it similar, not equal).

use crate::common;

use std::time::{Duration, Instant};

use crate::common::{say, wait_for_convergence};
use chorus_hosts::{Placement, Testbed, Traffic};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const NODE_HOSTS: [&str; 5] = ["n1", "n2", "n3", "n4", "n5"];
const CLIENT_HOSTS: [&str; 2] = ["c1", "c2"];
/// At most this many node hosts are faulty at once: a majority (3 of 5) always remains.
const FAULTY_MAX: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill,
    Pause,
    Airplane,
    Isolate,
    OneWay,
    Slow,
}

struct Active {
    hosts: Vec<usize>,
    fault: Fault,
    until: Instant,
}

fn host(index: usize) -> String {
    NODE_HOSTS[index].to_owned()
}

fn node(index: usize) -> u64 {
    index as u64 + 1
}

fn inflict(testbed: &mut Testbed, fault: Fault, hosts: &[usize]) {
    match fault {
        Fault::Kill => {
            testbed.kill(node(hosts[0])).unwrap();
        }
        Fault::Pause => {
            testbed.pause(node(hosts[0])).unwrap();
        }
        Fault::Airplane => testbed.network_mut().airplane(&host(hosts[0])).unwrap(),
        Fault::Isolate => {
            let inside: Vec<String> = hosts.iter().map(|h| host(*h)).collect();
            let outside: Vec<String> = (0..NODE_HOSTS.len()).filter(|h| !hosts.contains(h)).map(host).collect();
            testbed.network_mut().partition(&[inside, outside]).unwrap();
        }
        Fault::OneWay => {
            let others: Vec<String> = (0..NODE_HOSTS.len()).filter(|h| *h != hosts[0]).map(host).collect();
            testbed.network_mut().one_way(&host(hosts[0]), &others).unwrap();
        }
        Fault::Slow => testbed.network_mut().slow(&host(hosts[0]), Duration::from_millis(40), 5).unwrap(),
    }
}

fn heal(testbed: &mut Testbed, fault: Fault, hosts: &[usize]) {
    match fault {
        Fault::Kill => testbed.start_node(node(hosts[0])).unwrap(),
        Fault::Pause => {
            testbed.resume(node(hosts[0])).unwrap();
        }
        Fault::Airplane => testbed.network_mut().land(&host(hosts[0])).unwrap(),
        Fault::Isolate | Fault::OneWay => {
            for index in hosts {
                testbed.network_mut().reconnect(&host(*index)).unwrap();
            }
        }
        Fault::Slow => testbed.network_mut().slow(&host(hosts[0]), Duration::ZERO, 0).unwrap(),
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

#[test]
fn a_nemesis_of_kills_pauses_partitions_and_slow_links_loses_and_duplicates_nothing() {
    if !common::hosts_available("a_nemesis_of_kills_pauses_partitions_and_slow_links_loses_and_duplicates_nothing") {
        return;
    }
    let seconds = env_u64("CHORUS_NEMESIS_SECS", 45);
    let seed = env_u64("CHORUS_NEMESIS_SEED", 0x6e6d_7369);
    say(&format!("nemesis for {seconds} s, seed {seed} (CHORUS_NEMESIS_SECS, CHORUS_NEMESIS_SEED)"));
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut placements: Vec<Placement> =
        NODE_HOSTS.iter().enumerate().map(|(index, host)| Placement::new(host, &[node(index)])).collect();
    placements.extend(CLIENT_HOSTS.iter().map(|host| Placement::new(host, &[])));
    let mut testbed = common::start(dir.path(), &placements);
    testbed.wait_for_leader(Duration::from_secs(20)).unwrap();
    let traffic = Traffic::start(&testbed, &CLIENT_HOSTS, 2, seed).unwrap();

    let end = Instant::now() + Duration::from_secs(seconds);
    let mut active: Vec<Active> = Vec::new();
    let mut inflicted = 0;
    while Instant::now() < end {
        let now = Instant::now();
        let (expired, still): (Vec<Active>, Vec<Active>) = active.into_iter().partition(|a| a.until <= now);
        active = still;
        for fault in expired {
            heal(&mut testbed, fault.fault, &fault.hosts);
            say(&format!("healed {:?} of {:?}", fault.fault, fault.hosts.iter().map(|h| host(*h)).collect::<Vec<_>>()));
        }
        let faulty: Vec<usize> = active.iter().flat_map(|a| a.hosts.clone()).collect();
        if faulty.len() < FAULTY_MAX && rng.random_bool(0.6) {
            let healthy: Vec<usize> = (0..NODE_HOSTS.len()).filter(|h| !faulty.contains(h)).collect();
            let fault = [Fault::Kill, Fault::Pause, Fault::Airplane, Fault::Isolate, Fault::OneWay, Fault::Slow]
                [rng.random_range(0..6)];
            let first = healthy[rng.random_range(0..healthy.len())];
            let mut hosts = vec![first];
            // Two hosts cut off together, from the other three, when none is faulty yet.
            if fault == Fault::Isolate && faulty.is_empty() && rng.random_bool(0.5) {
                let second: Vec<usize> = healthy.iter().copied().filter(|h| *h != first).collect();
                hosts.push(second[rng.random_range(0..second.len())]);
            }
            inflict(&mut testbed, fault, &hosts);
            inflicted += 1;
            let until = now + Duration::from_millis(rng.random_range(1500..6000));
            say(&format!("{fault:?} on {:?}", hosts.iter().map(|h| host(*h)).collect::<Vec<_>>()));
            active.push(Active { hosts, fault, until });
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(250..750)));
    }
    for fault in active {
        heal(&mut testbed, fault.fault, &fault.hosts);
    }
    say(&format!("{inflicted} faults inflicted; all healed"));
    let healed_at = traffic.now();
    // A paused node resumed or a killed one restarted may lead a moment more, and an
    // attempt on it waits up to 12 s: the first send after the heal may take a while.
    let resumed_by = Instant::now() + Duration::from_secs(30);
    while traffic.sends_acknowledged_between(healed_at, traffic.now()) == 0 {
        assert!(Instant::now() < resumed_by, "writes resume within 30 s once the faults heal");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (history, violations) = traffic.finish(&testbed).unwrap();
    let acknowledged = traffic_acknowledged(&history);
    say(&format!(
        "{} operations, {acknowledged} sends acknowledged; the checkers found {} problem(s)",
        history.operations.len(),
        violations.len()
    ));
    assert!(
        violations.is_empty(),
        "seed {seed}: the checkers found:\n{}",
        violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
    );
    assert!(acknowledged > 20, "the clients got work done: {acknowledged} sends acknowledged");
    wait_for_convergence(&testbed, Duration::from_secs(30));
    say("all five nodes converged");
}

fn traffic_acknowledged(history: &chorus_sim::history::History) -> usize {
    history
        .operations
        .iter()
        .filter(|op| matches!(op.completed, Some((_, chorus_sim::history::Outcome::Sent { .. }))))
        .count()
}
