//! The simulation's workload run for real: clients on test hosts (threads inside their
//! namespaces, each with a runtime of its own) using the client library over TLS, each
//! recording what it did and saw, then an auditor's final read and the simulation's
//! history checkers (durability, no phantoms, exactly-once delivery, linearizable
//! mailboxes and accounts) on what was recorded.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chorus_sim::check::{Violation, check_history};
use chorus_sim::history::{History, Outcome};
use chorus_sim::workload::{Recorder, read_final_mailboxes, run_client};

use crate::netns::NetError;
use crate::testbed::{OBSERVER, Testbed, TestbedError};

/// How long subscriptions get, after the final read, to deliver every message of it.
const CATCH_UP: Duration = Duration::from_secs(30);

/// Clients running against a testbed. Dropped without [`Traffic::finish`] (a failed
/// test), its clients stop and their threads end on their own.
pub struct Traffic {
    recorder: Recorder,
    clients: usize,
    threads: Vec<JoinHandle<Result<(), NetError>>>,
    /// How many clients have stopped operating (their subscriptions still run).
    stopped: Arc<AtomicUsize>,
    /// Set once the history is complete: the clients' runtimes end.
    release: Arc<AtomicBool>,
}

impl Traffic {
    /// Starts `per_host` clients on each of `hosts`, their random choices drawn from
    /// `seed`. They create their accounts, log in, subscribe, and operate until
    /// [`Traffic::finish`].
    pub fn start(testbed: &Testbed, hosts: &[&str], per_host: usize, seed: u64) -> Result<Self, TestbedError> {
        let recorder = Recorder::new();
        let clients = hosts.len() * per_host;
        let servers = testbed.cluster().client_addresses();
        let security = testbed.cluster().client_security().clone();
        let stopped = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (index, host) in hosts.iter().flat_map(|host| std::iter::repeat_n(*host, per_host)).enumerate() {
            let (servers, security, recorder) = (servers.clone(), security.clone(), recorder.clone());
            let (stopped, release) = (Arc::clone(&stopped), Arc::clone(&release));
            let namespace = &testbed.network().host(host)?.namespace;
            threads.push(namespace.spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
                runtime.block_on(async move {
                    run_client(index, clients, servers, security, seed, recorder).await;
                    stopped.fetch_add(1, Ordering::SeqCst);
                    // The subscription goes on delivering until the history is complete.
                    while !release.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                });
            })?);
        }
        Ok(Self { recorder, clients, threads, stopped, release })
    }

    /// How many sends were both invoked and acknowledged (completed with a message id)
    /// within `from..to` of the start: sends that began under a fault and were committed
    /// under it, not sends that began before it.
    pub fn sends_acknowledged_between(&self, from: Duration, to: Duration) -> usize {
        let history = self.recorder.history();
        history
            .operations
            .iter()
            .filter(|op| op.invoked >= from)
            .filter(|op| matches!(&op.completed, Some((at, Outcome::Sent { .. })) if *at < to))
            .count()
    }

    /// Time since the traffic started, on the history's clock.
    pub fn now(&self) -> Duration {
        self.recorder.now()
    }

    /// Stops the clients (each finishes its operation in flight), reads every mailbox
    /// from the observer once the faults are over, lets the subscriptions catch up with
    /// it, and returns the history and what the checkers found in it.
    pub fn finish(mut self, testbed: &Testbed) -> Result<(History, Vec<Violation>), TestbedError> {
        self.recorder.stop();
        // An operation in flight ends within the workload's call deadline (20 s).
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.stopped.load(Ordering::SeqCst) < self.threads.len() {
            if Instant::now() >= deadline {
                // The final read must come after every operation, or a send acknowledged
                // after it would look lost.
                return Err(TestbedError::Io(
                    "traffic".into(),
                    std::io::Error::other("a client was still operating a minute after it was told to stop"),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let servers = testbed.cluster().client_addresses();
        let security = testbed.cluster().client_security().clone();
        let clients = self.clients;
        let observer = &testbed.network().host(OBSERVER)?.namespace;
        let mailboxes = observer.enter(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            runtime.block_on(read_final_mailboxes(servers, security, clients))
        })?;
        let mut problems = Vec::new();
        match mailboxes {
            Ok(mailboxes) => self.recorder.set_final_mailboxes(mailboxes),
            Err(status) => problems.push(Violation {
                checker: "final read",
                detail: format!("the auditor could not read the mailboxes: {status:?}"),
            }),
        }
        let caught_up_by = Instant::now() + CATCH_UP;
        loop {
            let history = self.recorder.history();
            let caught_up = history.final_mailboxes.iter().all(|(user, mailbox)| {
                let delivered = self.recorder.delivered(user);
                mailbox.iter().all(|message| delivered.contains(&message.id))
            });
            if caught_up || Instant::now() >= caught_up_by {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.release.store(true, Ordering::SeqCst);
        for thread in std::mem::take(&mut self.threads) {
            match thread.join() {
                Ok(result) => result?,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        let history = self.recorder.history();
        problems.extend(check_history(&history));
        Ok((history, problems))
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.recorder.stop();
        self.release.store(true, Ordering::SeqCst);
    }
}
