#!/usr/bin/env bash
# Chorus across "machines" on one box: test hosts with network stacks of their own (Linux
# network namespaces on a private bridge, made and removed by the chorus-hosts crate in
# tests/). Needs root.
#
#   scripts/hosts.sh                 three hosts (A: nodes 1-2, B: nodes 3-4, C: node 5),
#                                    a cluster across them over TLS, and a shell to cut them
#                                    off, partition, slow, kill and pause (`help` lists the
#                                    verbs; `on B send bob hi` runs the client on host B).
#                                    Options: --host NAME=ID,ID... (repeatable), --dir DIR.
#   scripts/hosts.sh demo            the assignment's demos, automated and narrated: every
#                                    machine cut off and back (persistence), a killed leader
#                                    and lost machines (replication), partitions that loopback
#                                    cannot show.
#   scripts/hosts.sh sweep [--all]   remove hosts (and their processes) that a killed run
#                                    left behind; --all: every chorus-hosts host.
#   scripts/hosts.sh install-tools   install what the hosts need (iproute2, nftables,
#                                    iptables; openssh and systemd-analyze for the deploy
#                                    test) where missing; scripts/test.sh runs it.
#   scripts/hosts.sh sweep-orphans   remove the hosts of runs that are gone, without
#                                    building anything; scripts/test.sh runs it first.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"

install_tools() {
    local missing=()
    command -v ip > /dev/null || missing+=(iproute2)
    command -v nft > /dev/null || missing+=(nftables)
    command -v iptables > /dev/null || missing+=(iptables)
    # scripts/deploy.sh's test: an sshd on each host, ssh and scp from the operator's host,
    # and systemd-analyze to check the unit (systemd is not started: the package alone).
    [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
    command -v ssh > /dev/null || missing+=(openssh-client)
    command -v systemd-analyze > /dev/null || missing+=(systemd)
    if [ "${#missing[@]}" -eq 0 ]; then
        return 0
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
        # Packages with services (openssh-server) must not start them on this machine: a
        # policy-rc.d that refuses every start, for the length of the install.
        local policy=/usr/sbin/policy-rc.d made_policy=""
        if [ ! -e "$policy" ]; then
            printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 0755 "$policy" && made_policy=1
        fi
        local status=0
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" > /dev/null || status=$?
        if [ -n "$made_policy" ]; then
            rm -f "$policy"
        fi
        return "$status"
    else
        echo "hosts.sh: the test hosts need ${missing[*]}: install them (as root)" >&2
        return 1
    fi
}

need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "hosts.sh: the test hosts are network namespaces: run this as root" >&2
        exit 1
    fi
    if ! command -v cargo > /dev/null; then
        echo "hosts.sh: cargo is not on root's PATH (sudo resets it): try sudo env \"PATH=\$PATH\" scripts/hosts.sh" >&2
        exit 1
    fi
}

# The namespaces of runs whose process is gone (named chorus-hosts-<pid>-…): every process
# still inside is killed, then the namespace removed. The same rule as chorus-hosts's own
# sweep, in shell, so that it runs before anything is built.
sweep_orphans() {
    command -v ip > /dev/null || return 0
    local name pid
    for name in $(ip netns list 2> /dev/null | awk '{print $1}' | grep '^chorus-hosts-[0-9]*-' || true); do
        pid="${name#chorus-hosts-}"
        pid="${pid%%-*}"
        if [ ! -d "/proc/$pid" ]; then
            ip netns pids "$name" 2> /dev/null | xargs -r kill -9 2> /dev/null || true
            ip netns del "$name" 2> /dev/null || true
            echo "removed the leftover namespace $name"
        fi
    done
}

verb="${1:-shell}"
case "$verb" in
    install-tools)
        install_tools
        ;;
    sweep-orphans)
        sweep_orphans
        ;;
    demo)
        need_root
        install_tools
        cargo build -q -p chorus -p chorus-hosts
        # One test at a time, so that the narration reads in order; a host that cannot be
        # made is a failure here, not a skip.
        CHORUS_HOSTS_REQUIRED=1 cargo test -q -p chorus-hosts --test hosts -- --nocapture --test-threads=1 \
            assignment_demos offline_outbox real_partitions
        ;;
    sweep)
        need_root
        cargo build -q -p chorus-hosts
        exec "$target/debug/chorus-hosts" sweep "${@:2}"
        ;;
    shell | --host | --dir)
        need_root
        install_tools
        [ "$verb" = shell ] && [ $# -gt 0 ] && shift
        cargo build -q -p chorus -p chorus-hosts
        exec "$target/debug/chorus-hosts" "$@"
        ;;
    *)
        sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
