//! `scripts/deploy.sh` against three test hosts, each running a real sshd and installed
//! under a prefix of its own, from an operator's host on the same network: install (the
//! CA, certificates, configuration and unit, data directories initialized once, members
//! started), a rolling upgrade while a client keeps sending, a full stop and start, and
//! the refusal to bring back a member whose data was lost. The members run the unit's own
//! command under remote.sh's restart loop (`--service supervise`): the hosts have no
//! systemd as PID 1, so the unit file itself is checked with `systemd-analyze verify`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chorus_hosts::Network;
use chorus_hosts::netns::Namespace;

use crate::common::{self, say};

const MEMBERS: [&str; 3] = ["A", "B", "C"];
const SSHD: &str = "/usr/sbin/sshd";

/// The hosts, their sshds, and what the operator's commands need.
struct Site {
    network: Network,
    dir: PathBuf,
    ssh_config: PathBuf,
    hosts_file: PathBuf,
    state: PathBuf,
    sshds: Vec<Child>,
    /// Made by this test (sshd's privilege separation directory): removed by it too.
    made_run_sshd: bool,
}

impl Drop for Site {
    fn drop(&mut self) {
        for sshd in &mut self.sshds {
            let _ = sshd.kill();
            let _ = sshd.wait();
        }
        if self.made_run_sshd {
            let _ = std::fs::remove_dir("/run/sshd");
        }
        // The network's drop kills whatever else runs on the hosts (the members and their
        // supervisors, started over ssh) and removes them.
    }
}

fn run_ok(program: &str, args: &[&str]) -> Output {
    let output = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(output.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    output
}

fn root_of(dir: &Path, host: &str) -> PathBuf {
    dir.join(format!("root-{host}"))
}

impl Site {
    fn start(dir: &Path) -> Self {
        let network = Network::create(&["A", "B", "C", "ops"], None).unwrap();
        for key in ["host_key", "client_key"] {
            let path = dir.join(key);
            run_ok("ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-f", path.to_str().unwrap()]);
        }
        std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
        let made_run_sshd = !Path::new("/run/sshd").exists();
        if made_run_sshd {
            std::fs::create_dir_all("/run/sshd").unwrap();
        }
        let mut site = Self {
            ssh_config: dir.join("ssh_config"),
            hosts_file: dir.join("hosts"),
            state: dir.join("state"),
            dir: dir.to_owned(),
            network,
            sshds: Vec::new(),
            made_run_sshd,
        };
        let mut hosts = String::from("# id  ssh destination  address  install prefix\n");
        for (index, name) in MEMBERS.iter().enumerate() {
            let host = site.network.host(name).unwrap();
            let config = dir.join(format!("sshd_config-{name}"));
            std::fs::write(
                &config,
                format!(
                    "ListenAddress {address}:22\nHostKey {dir}/host_key\nPidFile {dir}/sshd-{name}.pid\n\
                     AuthorizedKeysFile {dir}/authorized_keys\nStrictModes no\nUsePAM no\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                     PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\nLogLevel ERROR\n",
                    address = host.address,
                    dir = dir.display(),
                ),
            )
            .unwrap();
            let log = std::fs::File::create(dir.join(format!("sshd-{name}.log"))).unwrap();
            let mut command = Command::new("ip");
            command.args(["netns", "exec", host.namespace.name(), SSHD, "-D", "-e", "-f"]).arg(&config);
            site.sshds.push(command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn().unwrap());
            let root = root_of(dir, name);
            hosts.push_str(&format!("{}  {}  {}  {}\n", index + 1, host.address, host.address, root.display()));
        }
        std::fs::write(&site.hosts_file, hosts).unwrap();
        std::fs::write(
            &site.ssh_config,
            format!(
                "Host *\n  User root\n  IdentityFile {dir}/client_key\n  IdentitiesOnly yes\n  \
                 UserKnownHostsFile {dir}/known_hosts\n  StrictHostKeyChecking accept-new\n  LogLevel ERROR\n",
                dir = dir.display()
            ),
        )
        .unwrap();
        for name in MEMBERS {
            site.wait_for_sshd(name);
        }
        site
    }

    fn ops(&self) -> &Namespace {
        &self.network.host("ops").unwrap().namespace
    }

    fn wait_for_sshd(&self, name: &str) {
        let address = self.network.host(name).unwrap().address;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let probe = format!("exec 3<>/dev/tcp/{address}/22");
            if self.ops().exec("bash", &["-c", &probe], None).is_ok_and(|o| o.status.success()) {
                return;
            }
            let log = std::fs::read_to_string(self.dir.join(format!("sshd-{name}.log"))).unwrap_or_default();
            assert!(Instant::now() < deadline, "sshd on host {name} did not listen within 20 s: {log}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `scripts/deploy.sh VERB` from the operator's host, with the site's options and
    /// `extra`; returns whether it succeeded, and what it printed.
    fn deploy(&self, verb: &str, binary: &Path, extra: &[&str]) -> (bool, String) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/deploy.sh");
        let mut args = vec![
            "netns".to_owned(),
            "exec".to_owned(),
            self.ops().name().to_owned(),
            "timeout".to_owned(),
            "300".to_owned(),
            "bash".to_owned(),
            script.display().to_string(),
            verb.to_owned(),
        ];
        for (option, value) in [
            ("--hosts", &self.hosts_file),
            ("--state", &self.state),
            ("--binary", &binary.to_owned()),
            ("--ssh-config", &self.ssh_config),
        ] {
            args.push(option.to_owned());
            args.push(value.display().to_string());
        }
        args.push("--chorus".to_owned());
        args.push(chorus_hosts::testbed::chorus_binary().unwrap().display().to_string());
        args.extend(["--service", "supervise", "--cluster-id", "deploy-test"].map(str::to_owned));
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let output = Command::new("ip").args(&args).stdin(Stdio::null()).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.success(), text)
    }

    /// The members' client addresses.
    fn servers(&self) -> Vec<String> {
        MEMBERS.iter().map(|name| format!("{}:7001", self.network.host(name).unwrap().address)).collect()
    }

    /// The `chorus` client on the operator's host, as `user` (their own session file).
    fn chorus(&self, binary: &Path, user: &str, args: &[&str]) -> Output {
        let servers = self.servers();
        let session = self.dir.join(format!("session-{user}.json"));
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", self.ops().name()])
            .arg(binary)
            .args(["--servers", &servers.join(","), "--timeout", "60"])
            .arg("--ca")
            .arg(self.state.join("certs/ca.pem"))
            .arg("--session-file")
            .arg(session)
            .args(args)
            .env("CHORUS_PASSWORD", format!("{user}-password"))
            .stdin(Stdio::null());
        command.output().unwrap()
    }

    /// Each member's node pid, or `None` where none runs.
    fn node_pids(&self) -> Vec<Option<u32>> {
        MEMBERS
            .iter()
            .map(|name| {
                let file = root_of(&self.dir, name).join("run/chorus/node.pid");
                let pid: u32 = std::fs::read_to_string(file).ok()?.trim().parse().ok()?;
                Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
            })
            .collect()
    }
}

/// Sets its flag when dropped: on a panic too.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

/// Alice sends to Bob, one `chorus send` after another, until told to stop; returns the
/// bodies whose sends were acknowledged.
fn keep_sending(site: Arc<Site>, binary: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut acknowledged = Vec::new();
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let body = format!("sent during the upgrade {n}");
            let run = site.chorus(&binary, "alice", &["send", "bob", &body]);
            let said = text(&run);
            assert!(run.status.success(), "a send during the upgrade failed: {said}");
            assert!(!said.contains("queued"), "a majority was up throughout, yet a send was queued: {said}");
            acknowledged.push(body);
        }
        acknowledged
    })
}

/// Asks every member for its status every 100 ms, from the operator's host, until told to
/// stop; returns the most members found not answering at once, and how many rounds ran.
fn watch_members(
    site: &Site,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<(usize, usize), chorus_hosts::netns::NetError>> {
    use chorus::client::v1::StatusRequest;
    use chorus::client::{ClientIdentity, ClientSecurity, ClusterClient, RetryPolicy};
    let read = |file: &str| std::fs::read_to_string(site.state.join("certs").join(file)).unwrap();
    let identity = ClientIdentity { cert_pem: read("client-ops.pem"), key_pem: read("client-ops.key") };
    let security = ClientSecurity::Tls { ca_pem: read("ca.pem"), identity: Some(identity) };
    let servers = site.servers();
    site.ops()
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let mut client = ClusterClient::new(&servers, RetryPolicy::default(), security).unwrap();
                let (mut most_down, mut rounds) = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    let mut down = 0;
                    for index in 0..servers.len() {
                        let request = StatusRequest { include_state_digest: false };
                        let mut member = client.cluster_of(index);
                        // Generous: a member busy on 2 shared cores is slow, not down.
                        let asked = tokio::time::timeout(Duration::from_secs(3), member.status(request)).await;
                        if !matches!(asked, Ok(Ok(_))) {
                            down += 1;
                        }
                    }
                    most_down = most_down.max(down);
                    rounds += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                (most_down, rounds)
            })
        })
        .unwrap()
}

#[test]
fn deploy_installs_upgrades_one_member_at_a_time_and_refuses_to_bring_back_a_lost_member() {
    let test = "deploy_installs_upgrades_one_member_at_a_time_and_refuses_to_bring_back_a_lost_member";
    if !common::hosts_available(test) || !common::tool_available(test, SSHD) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let binary = chorus_hosts::testbed::chorus_binary().unwrap();
    let site = Arc::new(Site::start(dir.path()));
    say("three hosts with an sshd each, and an operator's host");

    let (ok, said) = site.deploy("install", &binary, &[]);
    assert!(ok, "install failed:\n{said}");
    assert!(said.contains("healthy: leader"), "install ends healthy:\n{said}");
    assert_eq!(said.matches("initialized ").count(), 3, "each data directory initialized once:\n{said}");
    for id in 1..=3 {
        assert!(said.contains(&format!("member {id}: installed on")), "{said}");
    }
    say("installed and started: the cluster is healthy");
    assert!(site.state.join("certs/ca.key").is_file(), "the CA's key stays with the operator");
    for (index, name) in MEMBERS.iter().enumerate() {
        let root = root_of(dir.path(), name);
        let id = index + 1;
        assert!(!root.join("etc/chorus/certs/ca.key").exists(), "the CA's key never reaches a machine");
        assert_eq!(mode_of(&root.join(format!("etc/chorus/certs/node-{id}.key"))), 0o640, "host {name}");
        assert_eq!(mode_of(&root.join("var/lib/chorus")), 0o700, "host {name}");
        let unit = std::fs::read_to_string(root.join("etc/systemd/system/chorus.service")).unwrap();
        let start = format!("ExecStart={}/usr/local/bin/chorus node --id {id} ", root.display());
        assert!(unit.contains(&start), "the unit is rendered for member {id}:\n{unit}");
        assert!(!unit.contains('@'), "no placeholder is left:\n{unit}");
    }
    verify_unit(&root_of(dir.path(), "A").join("etc/systemd/system/chorus.service"));

    let running = site.node_pids();
    let (ok, said) = site.deploy("install", &binary, &[]);
    assert!(ok, "a second install keeps the data and restarts nothing:\n{said}");
    assert!(!said.contains("initialized "), "data directories are initialized only once:\n{said}");
    assert_eq!(site.node_pids(), running, "a second install restarts no member");
    assert_eq!(said.matches("its binary is left for `upgrade`").count(), 3, "{said}");

    for user in ["alice", "bob"] {
        let created = site.chorus(&binary, user, &["account", "create", user]);
        assert!(created.status.success(), "{}", text(&created));
        let login = site.chorus(&binary, user, &["login", user]);
        assert!(login.status.success(), "{}", text(&login));
    }

    // The new binary: the same program with bytes of its own appended (an ELF file runs
    // the same with a tail), so that each machine's copy shows whether it was replaced.
    let upgraded = dir.path().join("new/chorus");
    std::fs::create_dir_all(upgraded.parent().unwrap()).unwrap();
    let mut bytes = std::fs::read(&binary).unwrap();
    bytes.extend_from_slice(b"\nchorus deploy test: the upgraded build\n");
    std::fs::write(&upgraded, &bytes).unwrap();
    std::fs::set_permissions(&upgraded, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let before = site.node_pids();
    assert!(before.iter().all(Option::is_some), "every member runs: {before:?}");
    let stop = Arc::new(AtomicBool::new(false));
    // However this test ends, the sender and the watcher stop (and the site can go).
    let _stop_on_exit = StopOnDrop(Arc::clone(&stop));
    let sender = keep_sending(Arc::clone(&site), binary.clone(), Arc::clone(&stop));
    let watcher = watch_members(&site, Arc::clone(&stop));
    std::thread::sleep(Duration::from_secs(2));
    let (ok, said) = site.deploy("upgrade", &upgraded, &[]);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let acknowledged = sender.join().unwrap();
    let (most_down, rounds) = watcher.join().unwrap().unwrap();
    assert!(ok, "upgrade failed:\n{said}");
    // One member at a time: the next goes down only once the last is back and caught up.
    assert!(rounds > 20, "the watch ran throughout: {rounds} rounds");
    assert_eq!(most_down, 1, "members down at once during the rolling upgrade ({rounds} rounds)");
    let order: Vec<&str> = said
        .lines()
        .filter_map(|line| line.strip_prefix("member ")?.strip_suffix(": upgraded and caught up"))
        .collect();
    assert_eq!(order.len(), 3, "each member upgraded once:\n{said}");
    let leader = said.split("the leader (member ").nth(1).and_then(|rest| rest.split(')').next()).unwrap();
    assert_eq!(order.last().copied(), Some(leader), "the leader goes last:\n{said}");
    say(&format!(
        "rolling upgrade in the order {order:?} (leader {leader} last), {} sends meanwhile",
        acknowledged.len()
    ));
    let after = site.node_pids();
    for (index, name) in MEMBERS.iter().enumerate() {
        assert!(
            after[index].is_some() && after[index] != before[index],
            "member on {name} restarted: {before:?} {after:?}"
        );
        let installed = std::fs::read(root_of(dir.path(), name).join("usr/local/bin/chorus")).unwrap();
        assert!(installed == bytes, "host {name} runs the upgraded binary");
    }
    assert!(acknowledged.len() >= 5, "sends went on during the upgrade: {}", acknowledged.len());

    // A full stop and start: everything acknowledged is still there, once.
    let (ok, said) = site.deploy("stop", &binary, &[]);
    assert!(ok, "{said}");
    assert!(site.node_pids().iter().all(Option::is_none), "every member stopped");
    let (ok, said) = site.deploy("status", &binary, &[]);
    assert_eq!(said.matches(": stopped").count(), 3, "status shows each member stopped:\n{said}");
    assert!(!ok || said.contains("UNREACHABLE"), "{said}");
    let (ok, said) = site.deploy("start", &upgraded, &[]);
    assert!(ok && said.contains("healthy: leader"), "{said}");
    let read = site.chorus(&binary, "bob", &["read", "--limit", "1000"]);
    assert!(read.status.success(), "{}", text(&read));
    let listing = String::from_utf8_lossy(&read.stdout).into_owned();
    for (body, count) in acknowledged.iter().zip(common::count_bodies(&listing, &acknowledged)) {
        assert_eq!(count, 1, "{body:?} is stored once:\n{listing}");
    }
    say("stopped and started: every acknowledged message is there, once");

    // A broken build (it runs `--version`, but a node never serves): the upgrade stops at
    // its first member, which runs but does not become healthy, and the others keep the binary they
    // had, serving.
    let broken = dir.path().join("broken/chorus");
    std::fs::create_dir_all(broken.parent().unwrap()).unwrap();
    let script = format!(
        "#!/bin/sh\ncase \"$1\" in --version) exec {} --version ;; esac\necho 'a broken build: it never serves' >&2\nsleep 600\n",
        upgraded.display()
    );
    std::fs::write(&broken, script).unwrap();
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (ok, said) = site.deploy("upgrade", &broken, &["--wait", "10"]);
    assert!(!ok, "an upgrade to a build that cannot serve must stop:\n{said}");
    assert!(said.contains("upgrade stopped: after member"), "{said}");
    let installed: Vec<bool> = MEMBERS
        .iter()
        .map(|name| std::fs::read(root_of(dir.path(), name).join("usr/local/bin/chorus")).unwrap() == bytes)
        .collect();
    assert_eq!(installed.iter().filter(|kept| !**kept).count(), 1, "only the first member got the broken build");
    let sent = site.chorus(&binary, "alice", &["send", "bob", "after the broken upgrade"]);
    assert!(sent.status.success() && !text(&sent).contains("queued"), "two members still serve: {}", text(&sent));
    // Stopped, then installed with the good build: every member serves again.
    let (ok, said) = site.deploy("stop", &binary, &[]);
    assert!(ok, "{said}");
    let (ok, said) = site.deploy("install", &upgraded, &[]);
    assert!(ok && said.contains("healthy: leader"), "{said}");
    say("a broken build stopped the upgrade at its first member; the good one installed again healed it");

    // Host C's data is lost: install must not make it an empty voter again.
    let (ok, said) = site.deploy("stop", &binary, &[]);
    assert!(ok, "{said}");
    let data = root_of(dir.path(), "C").join("var/lib/chorus");
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        // The databases and the snapshots directory alike.
        if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) }.unwrap();
    }
    let (ok, said) = site.deploy("install", &binary, &[]);
    assert!(!ok, "install on a cluster with a lost member must fail:\n{said}");
    assert!(said.contains("members 1 2 hold data but members 3 have empty data directories"), "{said}");
    assert!(site.node_pids().iter().all(Option::is_none), "nothing was started");
    assert_eq!(std::fs::read_dir(&data).unwrap().count(), 0, "nothing was initialized");
    say("a member whose data was lost is refused, and nothing started");
}

/// `systemd-analyze verify` on the unit as installed (its command exists there).
fn verify_unit(unit: &Path) {
    let test = "deploy: systemd-analyze verify";
    if !common::tool_available(test, "/usr/bin/systemd-analyze") {
        return;
    }
    let output = Command::new("systemd-analyze").arg("verify").arg(unit).output().unwrap();
    let said = text(&output);
    assert!(output.status.success() && said.trim().is_empty(), "systemd-analyze verify {}:\n{said}", unit.display());
}
