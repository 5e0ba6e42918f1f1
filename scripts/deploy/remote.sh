#!/usr/bin/env bash
# The machine's half of scripts/deploy.sh: run over ssh (`bash -s -- VERB ARGS… <
# remote.sh`), as root or a user that may write ROOT. ROOT is the install prefix ("" for /):
#
#   ROOT/usr/local/bin/chorus              the binary
#   ROOT/etc/chorus/cluster.toml           the cluster's configuration (every member's copy alike)
#   ROOT/etc/chorus/certs/                 ca.pem, node-ID.pem, node-ID.key (readable by USER only)
#   ROOT/etc/systemd/system/chorus.service the unit
#   ROOT/var/lib/chorus/                   the data directory (USER's, mode 0700)
#   ROOT/var/lib/chorus-deploy/            files on their way in (scp writes here first;
#                                          the deploying user's own, mode 0700)
#   ROOT/run/chorus/                       the supervisor's pid files and the node's log
#                                          (--service supervise only)
#
# Verbs (SERVICE is systemd or supervise; supervise runs the unit's ExecStart under a
# restart loop of this script's own, for machines without systemd as PID 1):
#   prepare ROOT USER SERVICE   make the directories (and, for systemd, the user)
#   data ROOT                   print "empty" or "holds data" for the data directory
#                               (absent counts as empty)
#   place ROOT USER ID          move the staged configuration, certificates and unit in
#   stage-binary ROOT           check that the copied binary runs here, and put it beside
#                               its place (ROOT/usr/local/bin/.chorus.new)
#   place-binary ROOT           rename the staged binary over the installed one (atomic: a
#                               running node keeps the old file until it restarts)
#   init ROOT USER ID           initialize the empty data directory (chorus node --bootstrap
#                               --init-only), as USER
#   start ROOT SERVICE          start the node (and enable it at boot, for systemd)
#   stop ROOT SERVICE           stop it with SIGTERM (a leader hands over first) and wait
#   state ROOT SERVICE          print "running (pid N)" or "stopped"
set -euo pipefail

die() {
    echo "$(hostname): $*" >&2
    exit 1
}

# How long a stop may take: the unit's TimeoutStopSec, plus a little.
STOP_WAIT_SECS=40

paths() {
    root=$1
    bin="$root/usr/local/bin/chorus"
    etc="$root/etc/chorus"
    unit="$root/etc/systemd/system/chorus.service"
    data="$root/var/lib/chorus"
    staging="$root/var/lib/chorus-deploy"
    run="$root/run/chorus"
    staged_bin="$root/usr/local/bin/.chorus.new"
}

need_systemd_root() {
    if [ -n "$root" ]; then
        die "--service systemd installs to / only (systemd reads /etc/systemd/system), not to $root: use --service supervise for a prefix"
    fi
    command -v systemctl > /dev/null || die "systemctl is missing: this machine has no systemd (use --service supervise)"
}

as_user() {
    local user=$1
    shift
    if [ "$(id -un)" = "$user" ]; then
        "$@"
    else
        runuser -u "$user" -- "$@"
    fi
}

prepare() {
    local user=$2 service=$3
    if [ "$service" = systemd ]; then
        need_systemd_root
        if ! id "$user" > /dev/null 2>&1; then
            useradd --system --user-group --no-create-home --home-dir "$data" --shell /usr/sbin/nologin "$user"
        fi
    fi
    id "$user" > /dev/null 2>&1 || die "user $user does not exist here"
    mkdir -p "$root/usr/local/bin" "$etc/certs" "$root/etc/systemd/system" "$data"
    # Keys and the binary pass through here: a directory someone else made (or a symlink
    # they planted) would let them read a key or swap the binary before it is installed.
    if [ -L "$staging" ]; then
        die "$staging is a symbolic link: remove it"
    fi
    mkdir -p -m 0700 "$staging"
    [ -O "$staging" ] || die "$staging belongs to someone else: remove it"
    chmod 0700 "$staging"
    # The data directory holds every message: its user's alone.
    chown "$user:" "$data"
    chmod 0700 "$data"
    if [ "$service" = supervise ]; then
        mkdir -p "$run"
    fi
}

data() {
    if [ ! -e "$data" ]; then
        echo "empty"
        return
    fi
    local first
    # A file system's own lost+found is not data; a listing that fails is not "empty".
    # -H: a data directory that is a symbolic link (to a volume) is listed where it points.
    first=$(find -H "$data" -mindepth 1 -maxdepth 1 ! -name lost+found -print -quit) || die "cannot list $data"
    if [ -z "$first" ]; then
        echo "empty"
    else
        echo "holds data"
    fi
}

place() {
    local user=$2 id=$3
    for file in cluster.toml chorus.service ca.pem "node-$id.pem" "node-$id.key"; do
        [ -f "$staging/$file" ] || die "$staging/$file was not copied"
    done
    # Each file is written beside its place and renamed over it: a node reading its
    # configuration or reloading its certificates never sees half a file.
    install -m 0644 "$staging/cluster.toml" "$etc/.cluster.toml.new"
    mv -f "$etc/.cluster.toml.new" "$etc/cluster.toml"
    install -m 0644 "$staging/chorus.service" "$unit.new"
    mv -f "$unit.new" "$unit"
    chown "root:$user" "$etc/certs" 2> /dev/null || chgrp "$user" "$etc/certs"
    chmod 0750 "$etc/certs"
    install -m 0644 "$staging/ca.pem" "$etc/certs/.ca.pem.new"
    install -m 0644 "$staging/node-$id.pem" "$etc/certs/.node-$id.pem.new"
    # The node's private key: readable by the service's group, nobody else.
    install -m 0640 "$staging/node-$id.key" "$etc/certs/.node-$id.key.new"
    chgrp "$user" "$etc/certs/.node-$id.key.new"
    mv -f "$etc/certs/.ca.pem.new" "$etc/certs/ca.pem"
    mv -f "$etc/certs/.node-$id.pem.new" "$etc/certs/node-$id.pem"
    mv -f "$etc/certs/.node-$id.key.new" "$etc/certs/node-$id.key"
    rm -f "$staging/cluster.toml" "$staging/chorus.service" "$staging/ca.pem" "$staging/node-$id.pem" "$staging/node-$id.key"
}

stage_binary() {
    [ -f "$staging/chorus" ] || die "$staging/chorus was not copied"
    # Copied beside its place, so that placing it is one rename on one file system.
    install -m 0755 "$staging/chorus" "$staged_bin"
    rm -f "$staging/chorus"
    "$staged_bin" --version > /dev/null || die "the new binary does not run on this machine"
}

place_binary() {
    [ -f "$staged_bin" ] || die "no binary is staged: stage-binary first"
    mv -f "$staged_bin" "$bin"
}

init() {
    local user=$2 id=$3 state
    state=$(data)
    [ "$state" = empty ] || die "$data holds data: it is initialized already"
    # The databases are the node's alone, as under the unit's UMask.
    umask 077
    as_user "$user" "$bin" node --id "$id" --config "$etc/cluster.toml" --certs "$etc/certs" --bootstrap --init-only
}

# The unit's ExecStart under a restart loop: Restart=on-failure, RestartSec, and SIGTERM
# passed to the node on stop, as systemd would. Runs detached (setsid), its pid in
# run/supervisor.pid, the node's in run/node.pid, the node's output in run/node.log.
supervise() {
    local command restart_secs child="" rc stopping=0
    command=$(sed -n 's/^ExecStart=//p' "$unit")
    restart_secs=$(sed -n 's/^RestartSec=//p' "$unit")
    [ -n "$command" ] || die "$unit has no ExecStart"
    umask 077 # as the unit's UMask: the node's files are its own
    echo "$$" > "$run/supervisor.pid" || die "cannot write $run/supervisor.pid"
    trap 'stopping=1; if [ -n "$child" ]; then kill -TERM "$child" 2> /dev/null || true; fi' TERM INT
    set -f # the command is split on spaces, never globbed
    while [ "$stopping" = 0 ]; do
        # shellcheck disable=SC2086 # split into words on purpose, as systemd does
        $command >> "$run/node.log" 2>&1 < /dev/null &
        child=$!
        echo "$child" > "$run/node.pid"
        # A stop that came between the spawn and `child` being set reached no node.
        if [ "$stopping" = 1 ]; then
            kill -TERM "$child" 2> /dev/null || true
        fi
        # A trapped signal interrupts `wait`: wait again until the node itself has exited.
        rc=0
        wait "$child" || rc=$?
        while kill -0 "$child" 2> /dev/null; do
            rc=0
            wait "$child" || rc=$?
        done
        child=""
        rm -f "$run/node.pid"
        if [ "$stopping" = 1 ] || [ "$rc" = 0 ]; then
            break
        fi
        echo "supervisor: chorus exited with status $rc; restarting in ${restart_secs:-2}s" >> "$run/node.log"
        sleep "${restart_secs:-2}" &
        wait $! || true
    done
    rm -f "$run/supervisor.pid"
}

# The supervisor's name for itself ($0 of its shell): one per install prefix.
supervisor_name() {
    echo "chorus-deploy-supervisor:${root:-/}"
}

# Whether the process a pid file names runs, and is what the file is for: one word of its
# command line is exactly `word` (the node: the installed binary's path, its program or a
# script's interpreter's argument; the supervisor: its name). A pid file left by a reboot
# or a SIGKILL may name a pid reused since by another process, which must never be taken
# for the node, nor signalled.
alive() {
    local file=$1 word=$2 pid
    [ -f "$file" ] || return 1
    pid=$(cat "$file")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' '\n' < "/proc/$pid/cmdline" 2> /dev/null | grep -qxF -- "$word"
}

start() {
    local service=$2
    [ -x "$bin" ] || die "$bin is missing: run install first"
    if [ "$service" = systemd ]; then
        need_systemd_root
        systemctl daemon-reload
        systemctl enable --now chorus.service
        return
    fi
    # /run is emptied at every boot.
    mkdir -p "$run"
    if alive "$run/supervisor.pid" "$(supervisor_name)"; then
        echo "already running"
        return
    fi
    if alive "$run/node.pid" "$bin"; then
        die "a node runs without its supervisor (pid $(cat "$run/node.pid")): stop it (kill -TERM) before starting"
    fi
    # The detached shell's last argument (its $0) is its name, which `alive` knows it by.
    setsid bash -c "$(declare -f die supervise paths); paths '$root'; supervise" "$(supervisor_name)" \
        > /dev/null 2>&1 < /dev/null &
    # Started once the node has a pid.
    for _ in $(seq 50); do
        if alive "$run/node.pid" "$bin"; then
            return
        fi
        sleep 0.1
    done
    die "the node did not start: see $run/node.log"
}

stop() {
    local service=$2
    if [ "$service" = systemd ]; then
        need_systemd_root
        systemctl stop chorus.service
        return
    fi
    if ! alive "$run/supervisor.pid" "$(supervisor_name)"; then
        if alive "$run/node.pid" "$bin"; then
            die "a node runs without its supervisor (pid $(cat "$run/node.pid")): stop it by hand"
        fi
        echo "not running"
        return
    fi
    kill -TERM "$(cat "$run/supervisor.pid")"
    for _ in $(seq $((STOP_WAIT_SECS * 10))); do
        if ! alive "$run/supervisor.pid" "$(supervisor_name)"; then
            return
        fi
        sleep 0.1
    done
    # As systemd does after TimeoutStopSec.
    if alive "$run/node.pid" "$bin"; then
        kill -KILL "$(cat "$run/node.pid")" 2> /dev/null || true
    fi
    die "the node did not stop within ${STOP_WAIT_SECS}s of SIGTERM: killed it"
}

state() {
    local service=$2
    if [ "$service" = systemd ]; then
        need_systemd_root
        if systemctl is-active --quiet chorus.service; then
            echo "running (pid $(systemctl show --property MainPID --value chorus.service))"
        else
            echo "stopped ($(systemctl is-active chorus.service || true))"
        fi
        return
    fi
    if alive "$run/node.pid" "$bin"; then
        echo "running (pid $(cat "$run/node.pid"))"
    else
        echo "stopped"
    fi
}

verb=${1:-}
[ $# -ge 2 ] || die "usage: remote.sh VERB ROOT ARGS… (see the header)"
shift
# Each verb sees ROOT as $1 ("" for /), then its own arguments.
paths "${1%/}"
case "$verb" in
    prepare) prepare "$@" ;;
    data) data "$@" ;;
    place) place "$@" ;;
    stage-binary) stage_binary "$@" ;;
    place-binary) place_binary "$@" ;;
    init) init "$@" ;;
    start) start "$@" ;;
    stop) stop "$@" ;;
    state) state "$@" ;;
    *) die "unknown verb $verb" ;;
esac
