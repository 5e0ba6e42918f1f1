//! The hosts' network does what its faults say, seen from inside the hosts with plain
//! sockets: an airplane host is unreachable, a partition cuts both ways and nothing else,
//! a one-way cut lets packets out but none back, a delay holds packets, loss drops about
//! the share asked, and dropping the network leaves no namespace behind.

use crate::common;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use chorus_hosts::Network;
use chorus_hosts::netns::{NAME_PREFIX, run};

const PORT: u16 = 9000;

fn address(network: &Network, host: &str) -> Ipv4Addr {
    network.host(host).unwrap().address
}

/// A TCP listener on `host`'s address, accepting (and dropping) connections forever.
fn listen(network: &Network, host: &str) {
    let at = SocketAddr::from((address(network, host), PORT));
    let listener = network.host(host).unwrap().namespace.enter(move || TcpListener::bind(at)).unwrap().unwrap();
    std::thread::spawn(move || for _ in listener.incoming() {});
}

/// The quickest of three TCP connections from `from` to `to` (a busy machine can slow one
/// down, never speed one up); `None` if one does not open in 1 s.
fn connect(network: &Network, from: &str, to: &str) -> Option<Duration> {
    (0..3).map(|_| connect_once(network, from, to)).collect::<Option<Vec<_>>>()?.into_iter().min()
}

fn connect_once(network: &Network, from: &str, to: &str) -> Option<Duration> {
    let at = SocketAddr::from((address(network, to), PORT));
    network
        .host(from)
        .unwrap()
        .namespace
        .enter(move || {
            let started = Instant::now();
            TcpStream::connect_timeout(&at, Duration::from_secs(1)).ok().map(|_| started.elapsed())
        })
        .unwrap()
}

/// Of `count` datagrams `from` sends to `to`, how many arrive.
fn datagrams_through(network: &Network, from: &str, to: &str, count: usize) -> usize {
    let target = SocketAddr::from((address(network, to), PORT + 1));
    let receiver = network.host(to).unwrap().namespace.enter(move || UdpSocket::bind(target)).unwrap().unwrap();
    receiver.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Read while they are sent, so that the socket's buffer never overflows, and until a
    // second of silence after the last is sent (a busy machine may hold one back a while).
    let counting = {
        let sent = std::sync::Arc::clone(&sent);
        std::thread::spawn(move || {
            let mut arrived = 0;
            let mut buffer = [0u8; 16];
            let mut quiet_since = None;
            loop {
                if receiver.recv_from(&mut buffer).is_ok() {
                    arrived += 1;
                    quiet_since = None;
                    continue;
                }
                if sent.load(std::sync::atomic::Ordering::SeqCst) {
                    let since = *quiet_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= Duration::from_secs(1) {
                        return arrived;
                    }
                }
            }
        })
    };
    let sender =
        network.host(from).unwrap().namespace.enter(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))).unwrap().unwrap();
    for index in 0..count {
        sender.send_to(&(index as u32).to_be_bytes(), target).unwrap();
        if index % 20 == 19 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    sent.store(true, std::sync::atomic::Ordering::SeqCst);
    counting.join().unwrap()
}

/// Which of `names` are namespaces that exist, with any processes inside them.
fn still_there(names: &[String]) -> Vec<String> {
    let listed = run("ip", ["netns", "list"]).unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    let existing: Vec<&str> = listed.lines().filter_map(|line| line.split_whitespace().next()).collect();
    names.iter().filter(|name| existing.contains(&name.as_str())).cloned().collect()
}

#[test]
fn faults_cut_what_they_say_and_only_that() {
    if !common::hosts_available("faults_cut_what_they_say_and_only_that") {
        return;
    }
    let mut network = Network::create(&["A", "B", "C"], common::delay_program()).unwrap();
    for host in ["A", "B", "C"] {
        listen(&network, host);
    }
    for (from, to) in [("A", "B"), ("B", "C"), ("C", "A")] {
        assert!(connect(&network, from, to).is_some(), "{from} reaches {to} on a healthy network");
    }

    network.airplane("C").unwrap();
    assert!(connect(&network, "A", "C").is_none(), "an airplane host is unreachable");
    assert!(connect(&network, "C", "B").is_none(), "an airplane host reaches no one");
    assert!(connect(&network, "A", "B").is_some(), "the others still reach each other");
    network.land("C").unwrap();
    assert!(connect(&network, "A", "C").is_some(), "a landed host is reachable again");

    network.partition(&[vec!["A".into()], vec!["B".into(), "C".into()]]).unwrap();
    assert!(connect(&network, "A", "B").is_none() && connect(&network, "C", "A").is_none(), "cut both ways");
    assert!(connect(&network, "B", "C").is_some(), "a side still holds together");
    network.heal().unwrap();
    assert!(connect(&network, "A", "B").is_some(), "healed");

    network.one_way("A", &["B".into()]).unwrap();
    assert_eq!(datagrams_through(&network, "A", "B", 20), 20, "A still sends to B");
    assert_eq!(datagrams_through(&network, "B", "A", 20), 0, "A hears nothing from B");
    assert_eq!(datagrams_through(&network, "C", "A", 20), 20, "A still hears C");
    network.heal().unwrap();

    let fast = connect(&network, "A", "B").unwrap();
    network.slow("B", Duration::from_millis(60), 0).unwrap();
    // A connection's SYN goes into B and its SYN-ACK out of B: held 60 ms each way.
    let slow = connect(&network, "A", "B").unwrap();
    assert!(slow >= Duration::from_millis(110), "a 60 ms delay each way: connected in {slow:?}");
    assert!(connect(&network, "A", "C").unwrap() < Duration::from_millis(100), "only B is slow");
    network.slow("B", Duration::ZERO, 0).unwrap();
    let again = connect(&network, "A", "B").unwrap();
    assert!(again < Duration::from_millis(100), "fast again: {again:?} (it was {fast:?} before the delay)");

    // A delay whose reader died is reported, not silently lost.
    network.slow("B", Duration::from_millis(30), 0).unwrap();
    let reader = network.host("B").unwrap().delay_reader().expect("a delay has a reader");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(reader as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let error = network.slow("B", Duration::ZERO, 0).unwrap_err().to_string();
    assert!(error.contains("the delay on host B was lost"), "{error}");
    network.slow("B", Duration::ZERO, 0).unwrap();

    // 30 % dropped as the packets enter B: of 600, about 420 arrive; 330 to 510 is more
    // than six standard deviations either way.
    assert_eq!(datagrams_through(&network, "A", "B", 600), 600, "every datagram arrives without loss");
    network.slow("B", Duration::ZERO, 30).unwrap();
    let arrived = datagrams_through(&network, "A", "B", 600);
    assert!((330..=510).contains(&arrived), "30 % loss: {arrived} of 600 arrived");
    network.slow("B", Duration::ZERO, 0).unwrap();
    assert_eq!(datagrams_through(&network, "A", "B", 100), 100, "no loss once fast again");

    // Other tests of this binary run beside this one: only this network's hosts count.
    let hosts: Vec<String> = network.hosts().map(|host| host.namespace.name().to_owned()).collect();
    assert!(hosts.iter().all(|name| name.starts_with(NAME_PREFIX)) && still_there(&hosts) == hosts);
    drop(network);
    assert_eq!(still_there(&hosts), Vec::<String>::new(), "dropping the network removes its namespaces");
}

#[test]
fn bad_requests_are_refused_with_a_reason() {
    if !common::hosts_available("bad_requests_are_refused_with_a_reason") {
        return;
    }
    for (names, says) in [
        (vec![], "1 to 200 hosts"),
        (vec!["A", "A"], "each name once"),
        (vec!["has space"], "letters and digits"),
        (vec!["waytoolongname"], "at most 8"),
    ] {
        let error = Network::create(&names, None).unwrap_err().to_string();
        assert!(error.contains(says), "{names:?}: {error}");
    }
    let mut network = Network::create(&["A", "B"], None).unwrap();
    assert!(network.airplane("Z").unwrap_err().to_string().contains("no host is named"));
    assert!(network.partition(&[vec!["A".into()]]).is_err(), "one side is no partition");
    assert!(network.partition(&[vec!["A".into()], vec!["A".into()]]).is_err(), "a host on two sides");
    assert!(network.slow("A", Duration::ZERO, 101).is_err());
    let error = network.slow("A", Duration::from_millis(5), 0).unwrap_err().to_string();
    assert!(error.contains("no delay program"), "{error}");
    assert!(network.host("A").unwrap().faults().is_healthy(), "a change that failed is not recorded");
    network.airplane("A").unwrap();
    assert!(network.host("A").unwrap().faults().airplane, "and the host still takes other faults");
}
