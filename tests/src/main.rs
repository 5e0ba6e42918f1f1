//! `chorus-hosts`: test hosts on one box for people (scripts/hosts.sh). With no verb it
//! makes the hosts, starts a cluster across them and reads shell verbs (`help` lists them)
//! from stdin until `quit` or end of input, then stops every member and removes every
//! host. `sweep` removes what a killed run left behind; `delay-queue` is the process that
//! holds a slow host's packets (started by the hosts themselves).

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chorus_hosts::shell::{self, Verb};
use chorus_hosts::{Placement, Testbed, TestbedOptions};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "chorus-hosts", about = "Chorus across test hosts (network namespaces) on one box")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Hosts and the members each runs: HOST=ID,ID… (repeatable).
    #[arg(long = "host", value_parser = parse_placement, default_values = ["A=1,2", "B=3,4", "C=5"])]
    hosts: Vec<Placement>,
    /// Where the cluster's files go [default: a new temporary directory, removed at the end].
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Remove the namespaces (and kill the processes in them) of runs that are gone;
    /// with --all, of every run.
    Sweep {
        #[arg(long)]
        all: bool,
    },
    /// Hold every packet this long (runs inside a host; started by `slow`).
    #[command(hide = true)]
    DelayQueue {
        #[arg(long)]
        millis: u64,
    },
}

fn parse_placement(text: &str) -> Result<Placement, String> {
    let (host, ids) = text.split_once('=').ok_or_else(|| format!("{text:?}: expected HOST=ID,ID…"))?;
    let nodes = ids
        .split(',')
        .map(|id| id.trim().parse::<u64>().map_err(|_| format!("{id:?} in {text:?} is not a node id")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Placement::new(host.trim(), &nodes))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::DelayQueue { millis }) => {
            chorus_hosts::delay::serve(Duration::from_millis(millis)).context("delay queue")
        }
        Some(Command::Sweep { all }) => {
            let removed = if all { chorus_hosts::netns::sweep_all() } else { chorus_hosts::netns::sweep_orphans() };
            println!("removed {} namespace(s){}", removed.len(), if removed.is_empty() { "" } else { ":" });
            for name in removed {
                println!("  {name}");
            }
            Ok(())
        }
        None => run_shell(cli.hosts, cli.dir),
    }
}

/// Set while a person's command (`on HOST …`) runs in the foreground: a Ctrl-C is then
/// theirs (it stops `on B watch`), not the shell's.
static CHILD_RUNNING: AtomicBool = AtomicBool::new(false);

/// SIGINT, SIGTERM and SIGHUP end the shell as `quit` does, though no destructor can run
/// from a signal: the signals are taken by a thread of their own (blocked everywhere
/// else; the programs the shell starts get a fresh mask), which removes this process's
/// hosts, killing every node and reader inside, and its temporary directory, then exits.
fn handle_signals(temporary: Option<PathBuf>) -> Result<()> {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(signal);
    }
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&signals), None).context("blocking signals")?;
    std::thread::spawn(move || {
        loop {
            let Ok(signal) = signals.wait() else { continue };
            if signal == Signal::SIGINT && CHILD_RUNNING.load(Ordering::SeqCst) {
                continue;
            }
            eprintln!("\n{signal}: stopping every member and removing the hosts");
            chorus_hosts::netns::sweep_mine();
            if let Some(dir) = &temporary {
                let _ = std::fs::remove_dir_all(dir);
            }
            std::process::exit(130);
        }
    });
    Ok(())
}

fn run_shell(placements: Vec<Placement>, dir: Option<PathBuf>) -> Result<()> {
    if let Some(reason) = chorus_hosts::namespaces_refused() {
        bail!("{reason}");
    }
    let temporary = match &dir {
        Some(_) => None,
        None => Some(tempfile::Builder::new().prefix("chorus-hosts-").tempdir().context("a temporary directory")?),
    };
    let dir = dir.unwrap_or_else(|| temporary.as_ref().expect("made above").path().to_owned());
    handle_signals(temporary.as_ref().map(|t| t.path().to_owned()))?;
    let options = TestbedOptions {
        fast_password_hashing: false,
        delay_program: Some(std::env::current_exe().context("this program's path")?),
        own_process_groups: true,
        ..TestbedOptions::default()
    };
    let mut testbed = Testbed::start(&dir, &placements, options).context("starting the hosts")?;
    println!("hosts up; the cluster's files (logs, certs, data) are in {}", dir.display());
    if let Err(error) = testbed.wait_for_leader(Duration::from_secs(20)) {
        println!("no leader yet: {error}");
    }
    println!("{}", shell::status_report(&testbed)?);
    println!("`help` lists the commands; `quit` (or end of input) stops everything and removes the hosts");
    let interactive = std::io::stdin().is_terminal();
    let mut lines = std::io::stdin().lock().lines();
    loop {
        if interactive {
            print!("hosts> ");
            std::io::stdout().flush()?;
        }
        let Some(line) = lines.next() else { break };
        let line = line?;
        if !interactive {
            println!("hosts> {}", line.trim());
        }
        let verb = match shell::parse(&line) {
            Ok(Some(verb)) => verb,
            Ok(None) => continue,
            Err(error) => {
                println!("{error}");
                continue;
            }
        };
        if verb == Verb::Quit {
            break;
        }
        if let Err(error) = execute(&mut testbed, &dir, verb) {
            println!("error: {error:#}");
        }
    }
    println!("stopping every member and removing the hosts");
    drop(testbed);
    Ok(())
}

fn execute(testbed: &mut Testbed, dir: &std::path::Path, verb: Verb) -> Result<()> {
    match verb {
        Verb::Help => println!("{}", shell::HELP),
        Verb::Status => print!("{}", shell::status_report(testbed)?),
        Verb::Up => {
            for id in testbed.ids() {
                if !testbed.is_running(id) {
                    testbed.start_node(id)?;
                    println!("node {id} started");
                }
            }
        }
        Verb::Down => {
            for id in testbed.ids() {
                if let Some((status, in_time)) = testbed.terminate(id, Duration::from_secs(10))? {
                    println!("node {id} stopped ({status}{})", if in_time { "" } else { ", killed after 10 s" });
                }
            }
        }
        Verb::Airplane(host) => testbed.network_mut().airplane(&host)?,
        Verb::Land(host) => testbed.network_mut().land(&host)?,
        Verb::Partition(sides) => testbed.network_mut().partition(&sides)?,
        Verb::OneWay { from, to } => testbed.network_mut().one_way(&from, &to)?,
        Verb::Heal => testbed.network_mut().heal()?,
        Verb::Slow { host, delay, loss_percent } => testbed.network_mut().slow(&host, delay, loss_percent)?,
        Verb::Fast(host) => testbed.network_mut().slow(&host, Duration::ZERO, 0)?,
        Verb::Kill(id) => println!("{}", if testbed.kill(id)? { "killed" } else { "it was not running" }),
        Verb::Pause(id) => println!("{}", if testbed.pause(id)? { "paused" } else { "it is not running" }),
        Verb::Resume(id) => println!("{}", if testbed.resume(id)? { "resumed" } else { "it is not running" }),
        Verb::Start(id) => testbed.start_node(id)?,
        Verb::On { host, args } => {
            // The person's terminal stays theirs: prompts (passwords) and `watch` work.
            let session = dir.join(format!("session-{host}.json"));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            CHILD_RUNNING.store(true, Ordering::SeqCst);
            let status = testbed.chorus_interactive(&host, &session, &args);
            CHILD_RUNNING.store(false, Ordering::SeqCst);
            let status = status?;
            if !status.success() {
                println!("({status})");
            }
        }
        Verb::Quit => unreachable!("handled by the loop"),
    }
    Ok(())
}
