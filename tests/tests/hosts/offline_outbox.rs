//! The offline outbox in the assignment's airplane scenario: a person on C, cut off with C
//! alone, keeps writing; the messages are queued on C's disk and, when the cluster is
//! back, delivered in order, each once, though the client process delivering them is
//! killed part-way.

use crate::common;

use std::time::Duration;

use crate::common::{count_bodies, say, start, three_hosts};

#[test]
fn messages_written_while_cut_off_are_queued_and_delivered_once_in_order_when_the_cluster_is_back() {
    if !common::hosts_available(
        "messages_written_while_cut_off_are_queued_and_delivered_once_in_order_when_the_cluster_is_back",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut testbed = start(dir.path(), &three_hosts());
    testbed.wait_for_leader(Duration::from_secs(20)).unwrap();
    let (alice, bob) = common::alice_on_b_and_bob_on_c(&testbed);

    testbed.network_mut().airplane("A").unwrap();
    testbed.network_mut().airplane("B").unwrap();
    say("hosts A and B are in airplane mode: C holds 1 of 5 nodes");
    let bodies: Vec<String> = (1..=3).map(|n| format!("written offline {n}")).collect();
    for body in &bodies {
        let run = bob.try_run(&testbed, 8, &["send", "alice", body]);
        assert!(run.ok(), "a queued send succeeds: {run}");
        assert!(run.stdout.contains("queued: cluster unreachable"), "{run}");
    }
    say("bob's 3 sends on C were queued in the outbox");
    let listed = bob.run(&testbed, &["outbox"]);
    assert_eq!(listed.lines().filter(|line| line.contains("bob -> alice: written offline")).count(), 3, "{listed}");

    testbed.network_mut().land("B").unwrap();
    testbed.network_mut().land("A").unwrap();
    testbed.wait_for_leader(Duration::from_secs(20)).unwrap();
    say("hosts A and B landed");
    // A delivery killed wherever it happens to be (before, during or after a send, between
    // a send and its removal from the outbox): the next one must still deliver each
    // message once, in order.
    // Killed ever later, so that the kills land at different points of the delivery.
    let mut before_kill = 0;
    for millis in (20..=400).step_by(10) {
        let interrupted = bob.run_killed_after(&testbed, Duration::from_millis(millis), &["outbox", "send"]);
        before_kill += interrupted.stdout.matches("delivered outbox message").count();
        if interrupted.timed_out {
            say(&format!("a delivery was killed after {millis} ms, having told of {before_kill} so far"));
        }
        if !interrupted.timed_out {
            break;
        }
    }
    say(&format!("deliveries of the outbox were killed (SIGKILL) ever later; they told of {before_kill} delivered"));
    let delivered = bob.run(&testbed, &["outbox", "send"]);
    let after_kill = delivered.matches("delivered outbox message").count();
    assert!(before_kill + after_kill >= 3, "every message was delivered ({before_kill} before):\n{delivered}");
    assert!(bob.run(&testbed, &["outbox"]).contains("the outbox is empty"));
    say(&format!("the next delivery delivered the other {after_kill}; the outbox is empty"));

    let read = alice.run(&testbed, &["read"]);
    assert_eq!(count_bodies(&read, &bodies), vec![1; 3], "each once:\n{read}");
    let positions: Vec<usize> = bodies.iter().map(|body| read.find(body.as_str()).unwrap()).collect();
    assert!(positions.windows(2).all(|pair| pair[0] < pair[1]), "in the order written:\n{read}");
    say("alice read the 3 messages on B, each once, in the order bob wrote them");
}
