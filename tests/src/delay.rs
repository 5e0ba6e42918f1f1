//! Delay on a host's link without `tc netem` (the kernels this runs on may lack it, as
//! the one CI uses does): iptables hands every packet of the host's interface to an
//! NFQUEUE, and a process inside the host (`chorus-hosts delay-queue`, [`serve`]) holds
//! each one for the delay before it lets it go, in the order they came.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::netns::{Namespace, NetError};
use crate::network::HOST_INTERFACE;

/// The queue a host's delayed packets go through (queue numbers are per namespace).
const QUEUE: u16 = 0;
/// What [`serve`] prints once it holds the queue.
const READY: &str = "delay queue ready";
/// How many packets the kernel keeps for the reader before it lets the rest pass
/// (`fail-open`): enough for every node's traffic over any delay used here.
const QUEUE_LENGTH: u32 = 65_536;
/// How often the reader looks for new packets and packets due.
const POLL: Duration = Duration::from_millis(1);
/// How much of each packet the kernel copies to the reader: its headers are plenty, as
/// nothing reads a payload, and each held packet keeps its copy.
const COPY_BYTES: u16 = 128;

/// A running delay on one host. Dropping it removes the rules, then the reader.
#[derive(Debug)]
pub struct DelayQueue {
    reader: Child,
    namespace: String,
    delay: Duration,
}

impl DelayQueue {
    /// Starts `program delay-queue` inside `namespace`, waits until it holds the queue,
    /// then sends the host's packets (both ways, on its interface) through it.
    /// `own_process_group`: in a process group of its own (see `Network::set_own_process_groups`).
    pub fn start(
        program: &Path,
        namespace: &Namespace,
        delay: Duration,
        own_process_group: bool,
    ) -> Result<Self, NetError> {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", namespace.name()])
            .arg(program)
            .args(["delay-queue", "--millis", &delay.as_millis().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if own_process_group {
            std::os::unix::process::CommandExt::process_group(&mut command, 0);
        }
        let shown = program.display().to_string();
        let mut reader = command.spawn().map_err(|source| NetError::Spawn { program: shown.clone(), source })?;
        let stdout = reader.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        let said = BufReader::new(stdout).read_line(&mut line);
        if said.is_err() || line.trim() != READY {
            let _ = reader.kill();
            let status = reader.wait().map(|s| s.to_string()).unwrap_or_default();
            return Err(NetError::Failed {
                command: format!("{shown} delay-queue"),
                status,
                stderr: format!("it said {line:?} instead of {READY:?}"),
            });
        }
        let queue = Self { reader, namespace: namespace.name().to_owned(), delay };
        let queue_number = QUEUE.to_string();
        for (chain, direction) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
            namespace.exec(
                "iptables",
                &[
                    "-w",
                    "-A",
                    chain,
                    direction,
                    HOST_INTERFACE,
                    "-j",
                    "NFQUEUE",
                    "--queue-num",
                    &queue_number,
                    "--queue-bypass",
                ],
                None,
            )?;
        }
        Ok(queue)
    }

    pub fn delay(&self) -> Duration {
        self.delay
    }

    pub fn pid(&self) -> u32 {
        self.reader.id()
    }

    /// How the reader exited, if it did.
    pub fn exited(&mut self) -> Option<String> {
        match self.reader.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(error) => Some(error.to_string()),
        }
    }
}

impl Drop for DelayQueue {
    fn drop(&mut self) {
        // Rules first: a packet queued with no reader would wait for the kernel's
        // `bypass`, which only applies while no one is bound.
        for chain in ["INPUT", "OUTPUT"] {
            let _ = crate::netns::run("ip", ["netns", "exec", &self.namespace, "iptables", "-w", "-F", chain]);
        }
        let _ = self.reader.kill();
        let _ = self.reader.wait();
    }
}

/// The reader: binds the queue, says [`READY`] on stdout, then lets each packet go
/// `delay` after it arrived. Runs until killed.
pub fn serve(delay: Duration) -> std::io::Result<()> {
    let mut queue = nfq::Queue::open()?;
    queue.bind(QUEUE)?;
    queue.set_copy_range(QUEUE, COPY_BYTES)?;
    queue.set_queue_max_len(QUEUE, QUEUE_LENGTH)?;
    // Past the length, let packets through rather than drop them: overload must not look
    // like loss the test did not ask for.
    queue.set_fail_open(QUEUE, true)?;
    // Large segments stay whole; nothing here reads a payload.
    queue.set_recv_gso(QUEUE, true)?;
    queue.set_nonblocking(true);
    println!("{READY}");
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    loop {
        loop {
            match queue.recv() {
                Ok(message) => held.push_back((Instant::now() + delay, message)),
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                // The answer to a verdict on a packet the kernel had already let go of (it
                // drops the namespace's queued packets whenever a filter hook goes away, as
                // each change of the host's faults replaces its table): that packet is lost,
                // and TCP sends it again.
                Err(error) if error.raw_os_error() == Some(nix::errno::Errno::ENOENT as i32) => {}
                Err(error) => return Err(error),
            }
        }
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            let (_, mut message) = held.pop_front().expect("a packet is held");
            message.set_verdict(nfq::Verdict::Accept);
            queue.verdict(message)?;
        }
        std::thread::sleep(POLL);
    }
}
