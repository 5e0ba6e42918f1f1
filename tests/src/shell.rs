//! The verbs of `chorus-hosts` (scripts/hosts.sh): a person's handle on the test hosts,
//! one line at a time, from a terminal or a script on stdin.

use std::fmt::Write as _;
use std::time::Duration;

use chorus::replication::NodeId;
use chorus_proto::v1::Role;

use crate::testbed::{Testbed, TestbedError};

/// One line of the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verb {
    Help,
    Status,
    /// Start every member that is not running.
    Up,
    /// SIGTERM every running member (each leader hands over first).
    Down,
    Airplane(String),
    Land(String),
    Partition(Vec<Vec<String>>),
    OneWay {
        from: String,
        to: Vec<String>,
    },
    Heal,
    Slow {
        host: String,
        delay: Duration,
        loss_percent: u8,
    },
    Fast(String),
    Kill(NodeId),
    Pause(NodeId),
    Resume(NodeId),
    Start(NodeId),
    /// `chorus ARGS…` run on a host, as a person there would.
    On {
        host: String,
        args: Vec<String>,
    },
    Quit,
}

pub const HELP: &str = "\
status                     hosts, their faults, and every member's role, term and commit
up | down                  start every stopped member | SIGTERM every running one
airplane HOST | land HOST  HOST's link goes down (airplane mode) | comes back
partition A,B / C,D,E      no host hears a host of another side
one-way A -> B,C           A still sends to B and C but hears nothing back
heal                       every partition and one-way cut removed
slow HOST 50ms 5%          every packet of HOST held 50 ms, 5 % dropped each way
fast HOST                  HOST's link fast again
kill N | pause N           SIGKILL | SIGSTOP member N
resume N | start N         SIGCONT | start member N again
on HOST ARGS...            `chorus ARGS...` on HOST (e.g. on B send bob hello)
quit                       stop every member and remove the hosts";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(String);

fn bad(message: impl Into<String>) -> ParseError {
    ParseError(message.into())
}

/// Parses one line; `Ok(None)` for an empty line or a comment (`#`).
pub fn parse(line: &str) -> Result<Option<Verb>, ParseError> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let (verb, rest) = words.split_first().expect("the line is not empty");
    let one = |what: &str| -> Result<String, ParseError> {
        match rest {
            [word] => Ok((*word).to_owned()),
            _ => Err(bad(format!("{verb} takes one {what}: {verb} {}", what.to_uppercase()))),
        }
    };
    let node = || -> Result<NodeId, ParseError> {
        let word = one("node")?;
        word.parse().map_err(|_| bad(format!("{word:?} is not a node number")))
    };
    let none =
        |verb: Verb| if rest.is_empty() { Ok(verb) } else { Err(bad(format!("{} takes no arguments", words[0]))) };
    Ok(Some(match *verb {
        "help" | "?" => none(Verb::Help)?,
        "status" => none(Verb::Status)?,
        "up" => none(Verb::Up)?,
        "down" => none(Verb::Down)?,
        "heal" => none(Verb::Heal)?,
        "quit" | "exit" => none(Verb::Quit)?,
        "airplane" => Verb::Airplane(one("host")?),
        "land" => Verb::Land(one("host")?),
        "fast" => Verb::Fast(one("host")?),
        "kill" => Verb::Kill(node()?),
        "pause" => Verb::Pause(node()?),
        "resume" => Verb::Resume(node()?),
        "start" => Verb::Start(node()?),
        "partition" => {
            let sides: Vec<Vec<String>> = rest
                .join(" ")
                .split('/')
                .map(|side| side.split(',').map(str::trim).filter(|h| !h.is_empty()).map(str::to_owned).collect())
                .collect();
            if sides.len() < 2 || sides.iter().any(Vec::is_empty) {
                return Err(bad("partition takes two sides or more: partition A,B / C,D,E"));
            }
            Verb::Partition(sides)
        }
        "one-way" => {
            let text = rest.join(" ");
            let Some((from, to)) = text.split_once("->") else {
                return Err(bad("one-way takes a host and those it no longer hears: one-way A -> B,C"));
            };
            let to: Vec<String> = to.split(',').map(str::trim).filter(|h| !h.is_empty()).map(str::to_owned).collect();
            if from.trim().is_empty() || to.is_empty() {
                return Err(bad("one-way takes a host and those it no longer hears: one-way A -> B,C"));
            }
            Verb::OneWay { from: from.trim().to_owned(), to }
        }
        "slow" => {
            let [host, delay, loss] = rest else {
                return Err(bad("slow takes a host, a delay and a loss: slow B 50ms 5%"));
            };
            let millis = delay.strip_suffix("ms").and_then(|ms| ms.parse::<u64>().ok());
            let Some(millis) = millis.filter(|ms| *ms <= 10_000) else {
                return Err(bad(format!("{delay:?} is not a delay in milliseconds up to 10000 (such as 50ms)")));
            };
            let percent = loss.strip_suffix('%').and_then(|p| p.parse::<u8>().ok());
            let Some(loss_percent) = percent.filter(|p| *p <= 100) else {
                return Err(bad(format!("{loss:?} is not a loss from 0% to 100%")));
            };
            Verb::Slow { host: (*host).to_owned(), delay: Duration::from_millis(millis), loss_percent }
        }
        "on" => {
            let Some((host, args)) = rest.split_first().filter(|(_, args)| !args.is_empty()) else {
                return Err(bad("on takes a host and a chorus command: on B send bob hello"));
            };
            Verb::On { host: (*host).to_owned(), args: args.iter().map(|a| (*a).to_owned()).collect() }
        }
        other => return Err(bad(format!("unknown command {other:?}; `help` lists them"))),
    }))
}

/// What the shell prints for `status`.
pub fn status_report(testbed: &Testbed) -> Result<String, TestbedError> {
    let mut text = String::new();
    for host in testbed.network().hosts() {
        let faults = host.faults();
        let mut said = Vec::new();
        if faults.airplane {
            said.push("AIRPLANE MODE".to_owned());
        }
        if !faults.deaf_to.is_empty() {
            said.push(format!("hears nothing from {}", join(&faults.deaf_to)));
        }
        if !faults.mute_to.is_empty() {
            said.push(format!("cannot send to {}", join(&faults.mute_to)));
        }
        if !faults.delay.is_zero() || faults.loss_percent > 0 {
            said.push(format!("slow: {} ms, {} % loss", faults.delay.as_millis(), faults.loss_percent));
        }
        let nodes = testbed.nodes_on(&host.name);
        let nodes = if nodes.is_empty() {
            String::new()
        } else {
            format!("  nodes {}", nodes.iter().map(ToString::to_string).collect::<Vec<_>>().join(","))
        };
        let faults = if said.is_empty() { "healthy".to_owned() } else { said.join("; ") };
        let _ = writeln!(text, "host {:<4} {:<12}{nodes}  {faults}", host.name, host.address.to_string());
    }
    let statuses = testbed.statuses(false)?;
    for id in testbed.ids() {
        let line = match statuses.get(&id) {
            None => "stopped".to_owned(),
            Some(None) => "no answer (cut off, paused or busy)".to_owned(),
            Some(Some(status)) => {
                let role = match status.role() {
                    Role::Leader => "LEADER",
                    Role::Follower => "follower",
                    Role::Candidate => "candidate",
                    Role::PreCandidate => "pre-candidate",
                    _ => "unknown",
                };
                format!(
                    "{role:<13} term {:<4} commit {:<6} applied {}",
                    status.term, status.commit_index, status.applied_index
                )
            }
        };
        let _ = writeln!(text, "node {id}  {line}");
    }
    Ok(text)
}

fn join(names: &std::collections::BTreeSet<String>) -> String {
    names.iter().cloned().collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_verb_parses_and_bad_lines_say_why() {
        assert_eq!(parse("  # a comment").unwrap(), None);
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("airplane B").unwrap(), Some(Verb::Airplane("B".into())));
        assert_eq!(
            parse("partition A,B / C, D,E").unwrap(),
            Some(Verb::Partition(vec![vec!["A".into(), "B".into()], vec!["C".into(), "D".into(), "E".into()]]))
        );
        assert_eq!(
            parse("one-way A -> B,C").unwrap(),
            Some(Verb::OneWay { from: "A".into(), to: vec!["B".into(), "C".into()] })
        );
        assert_eq!(
            parse("slow C 50ms 5%").unwrap(),
            Some(Verb::Slow { host: "C".into(), delay: Duration::from_millis(50), loss_percent: 5 })
        );
        assert_eq!(parse("kill 3").unwrap(), Some(Verb::Kill(3)));
        assert_eq!(
            parse("on B send bob hi there").unwrap().unwrap(),
            Verb::On { host: "B".into(), args: vec!["send".into(), "bob".into(), "hi".into(), "there".into()] }
        );
        for (line, says) in [
            ("partition A,B", "two sides"),
            ("partition A / ", "two sides"),
            ("one-way A B", "one-way takes"),
            ("slow C 50 5%", "not a delay"),
            ("slow C 50ms 500%", "not a loss"),
            ("kill x", "not a node number"),
            ("kill", "kill takes one node"),
            ("status now", "takes no arguments"),
            ("on B", "on takes"),
            ("fly A", "unknown command"),
        ] {
            let error = parse(line).unwrap_err().to_string();
            assert!(error.contains(says), "{line:?} said {error:?}");
        }
    }
}
