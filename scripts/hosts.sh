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
#                                    iptables) where missing; scripts/test.sh runs it.
set -euo pipefail
cd "$(dirname "$0")/.."

install_tools() {
    local missing=()
    command -v ip > /dev/null || missing+=(iproute2)
    command -v nft > /dev/null || missing+=(nftables)
    command -v iptables > /dev/null || missing+=(iptables)
    if [ "${#missing[@]}" -eq 0 ]; then
        return 0
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" > /dev/null
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
}

verb="${1:-shell}"
case "$verb" in
    install-tools)
        install_tools
        ;;
    demo)
        need_root
        install_tools
        cargo build -q -p chorus -p chorus-hosts
        # One test at a time, so that the narration reads in order.
        cargo test -q -p chorus-hosts --test assignment_demos --test real_partitions -- --nocapture --test-threads=1
        ;;
    sweep)
        need_root
        cargo build -q -p chorus-hosts
        exec target/debug/chorus-hosts sweep "${@:2}"
        ;;
    shell | --host | --dir)
        need_root
        install_tools
        [ "$verb" = shell ] && [ $# -gt 0 ] && shift
        cargo build -q -p chorus -p chorus-hosts
        exec target/debug/chorus-hosts "$@"
        ;;
    *)
        sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
