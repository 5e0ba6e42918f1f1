#!/usr/bin/env bash
# Deploy a Chorus cluster to machines over ssh, one member per machine (docs/deploy.md).
#
#   scripts/deploy.sh install --hosts FILE [options]   certificates, configuration, binary and
#                                                     systemd unit to every machine; a new
#                                                     cluster's data directories initialized;
#                                                     every member started; status printed
#   scripts/deploy.sh status  --hosts FILE [options]   each machine's service, then `chorus
#                                                     cluster status`
#   scripts/deploy.sh health  --hosts FILE [options]   `chorus cluster health`: exit 0 when every
#                                                     member follows one leader, caught up
#   scripts/deploy.sh start|stop --hosts FILE [opts]   every member (stop: the leader last)
#   scripts/deploy.sh upgrade --hosts FILE [options]   rolling: a new binary to one member at a
#                                                     time, the leader last (its SIGTERM hands
#                                                     leadership over), the next only once the
#                                                     cluster is healthy again
#
# FILE: one line per member, `ID SSH_DESTINATION ADDRESS [ROOT]` (# starts a comment):
#   1  root@10.0.0.1  10.0.0.1
#   2  admin@db-2     10.0.0.2
# ADDRESS is what the other members and the clients reach the machine at (an IP or DNS
# name; it goes into the member's certificate); ROOT an install prefix (default: /).
#
# Options:
#   --state DIR        this machine's copy of the cluster: the CA (ca.key never leaves it),
#                      the certificates it issued, the generated cluster.toml [deploy-state]
#   --cluster-id NAME  the new cluster's name (install) [chorus]
#   --binary PATH      the chorus binary to deploy [built: cargo build --release]
#   --chorus PATH      the chorus this machine runs for certificates, status and health
#                      checks [the --binary]: a build for other machines, or one under test,
#                      need not run here
#   --ssh-config FILE  passed to ssh and scp as -F
#   --service KIND     systemd (default: the unit under systemd) or supervise (the unit's
#                      command under a restart loop of remote.sh's own, for machines
#                      without systemd as PID 1, and for prefixes)
#   --user NAME        the account the node runs as, with systemd [chorus, made if
#                      missing]; under supervise the node runs as the ssh login
#   --client-port N    the chat API's port on every machine [7001]
#   --peer-port N      node-to-node traffic's port [7101]
#   --wait SECS        how long health waits for the cluster to be healthy [60]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
remote_script="$here/deploy/remote.sh"
unit_template="$here/deploy/chorus.service"

die() {
    echo "deploy.sh: $*" >&2
    exit 1
}

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

verb=${1:-}
[ -n "$verb" ] || usage 2
shift
case "$verb" in
    install | status | health | start | stop | upgrade) ;;
    -h | --help | help) usage 0 ;;
    *) die "unknown verb '$verb' (install, status, health, start, stop, upgrade; --help)" ;;
esac

hosts_file="" state_dir="deploy-state" cluster_id="chorus" binary="" local_chorus="" ssh_config="" service="systemd"
user="" client_port=7001 peer_port=7101 wait_secs=60
# How long a restarted member must stay up and the cluster healthy before the next goes.
settle_secs=3
while [ $# -gt 0 ]; do
    [ $# -ge 2 ] || die "$1 needs a value"
    case "$1" in
        --hosts) hosts_file=$2 ;;
        --state) state_dir=$2 ;;
        --cluster-id) cluster_id=$2 ;;
        --binary) binary=$2 ;;
        --chorus) local_chorus=$2 ;;
        --ssh-config) ssh_config=$2 ;;
        --service) service=$2 ;;
        --user) user=$2 ;;
        --client-port) client_port=$2 ;;
        --peer-port) peer_port=$2 ;;
        --wait) wait_secs=$2 ;;
        *) die "unknown option $1 (--help)" ;;
    esac
    shift 2
done

[ -n "$hosts_file" ] || die "--hosts FILE is required: one line per member, 'ID SSH_DESTINATION ADDRESS [ROOT]'"
[ -f "$hosts_file" ] || die "no hosts file at $hosts_file"
case "$service" in systemd | supervise) ;; *) die "--service is systemd or supervise, not '$service'" ;; esac
# The restart loop runs the node as the ssh login: another account would need a second
# way of dropping privileges beside the unit's User=.
[ "$service" = systemd ] || [ -z "$user" ] || die "--user goes with --service systemd: under supervise the node runs as the ssh login"

for number in "$client_port" "$peer_port" "$wait_secs"; do
    [[ "$number" =~ ^[0-9]+$ ]] || die "'$number' is not a number"
done
[ "$client_port" != "$peer_port" ] || die "--client-port and --peer-port must differ"

# The members: parallel arrays, in the file's order.
ids=() dests=() addresses=() roots=()
# (`|| [ -n … ]`: a last line without its newline is a member too.)
while read -r id dest address root extra || [ -n "${id:-}" ]; do
    [ -n "${id:-}" ] || continue
    case "$id" in \#*) continue ;; esac
    [ -z "${extra:-}" ] || die "$hosts_file: '$id $dest $address $root $extra': at most four fields"
    [[ "$id" =~ ^[1-9][0-9]{0,8}$ ]] || die "$hosts_file: member id '$id' must be a positive number"
    [ -n "${address:-}" ] || die "$hosts_file: member $id needs 'ID SSH_DESTINATION ADDRESS [ROOT]'"
    [[ "$address" =~ ^[A-Za-z0-9.-]+$ ]] ||
        die "$hosts_file: member $id: '$address' is not a host name or IPv4 address (for IPv6, use a DNS name)"
    root=${root:-/}
    [[ "$root" =~ ^/[A-Za-z0-9/._-]*$ ]] || die "$hosts_file: member $id: ROOT '$root' must be an absolute path of plain characters"
    [ "$root" = / ] || root=${root%/}
    for seen in "${ids[@]}"; do
        [ "$seen" != "$id" ] || die "$hosts_file: member $id is listed twice"
    done
    ids+=("$id") dests+=("$dest") addresses+=("$address") roots+=("$root")
done < "$hosts_file"
[ "${#ids[@]}" -gt 0 ] || die "$hosts_file names no member"

ssh_options=(-o BatchMode=yes -o ConnectTimeout=10)
[ -z "$ssh_config" ] || ssh_options=(-F "$ssh_config" "${ssh_options[@]}")

# remote.sh VERB ROOT ARGS… on member number $1 (an index into the arrays). ssh joins its
# arguments into one command line for the remote shell, so each is quoted here (an empty
# one would vanish, a space would split one in two).
on() {
    local index=$1
    shift
    local command
    command="bash -s -- $(printf '%q ' "$1" "${roots[$index]}" "${@:2}")"
    ssh "${ssh_options[@]}" "${dests[$index]}" "$command" < "$remote_script"
}

# Member $1's install prefix as a path prefix ("" for /).
prefix() {
    echo "${roots[$1]%/}"
}

# Copies files into member $1's staging directory (remote.sh moves them into place).
copy_to() {
    local index=$1
    shift
    scp -q "${ssh_options[@]}" "$@" "${dests[$index]}:$(prefix "$index")/var/lib/chorus-deploy/"
}

# The binary to member $1, checked to run there, beside the installed one.
stage_binary_on() {
    scp -q "${ssh_options[@]}" "$binary" "${dests[$1]}:$(prefix "$1")/var/lib/chorus-deploy/chorus"
    on "$1" stage-binary
}

# Whether member $1's node runs (a machine that cannot say is an error, never "no").
running() {
    local state
    state=$(on "$1" state "$service") || die "member ${ids[$1]}: cannot tell whether its node runs"
    case "$state" in running*) return 0 ;; *) return 1 ;; esac
}

say() {
    printf '%s\n' "$*"
}

# The binary: given, or built here.
if [ -z "$binary" ]; then
    say "building the release binary (cargo build --release)"
    (cd "$here/.." && cargo build --release --locked -p chorus --bin chorus)
    binary="$here/../target/release/chorus"
fi
[ -f "$binary" ] && [ -x "$binary" ] || die "$binary is not an executable chorus binary"
local_chorus=${local_chorus:-$binary}
"$local_chorus" --version > /dev/null || die "$local_chorus does not run here (--chorus names one that does)"

certs="$state_dir/certs"
servers() {
    local joined="" i
    for i in "${!ids[@]}"; do
        joined+="${joined:+,}${addresses[$i]}:$client_port"
    done
    echo "$joined"
}
# `chorus` as the cluster's operator: the CA to trust, the operator's client certificate.
operator() {
    "$local_chorus" --servers "$(servers)" --ca "$certs/ca.pem" --cert "$certs/client-ops.pem" \
        --key "$certs/client-ops.key" --timeout 10 "$@"
}

service_user() {
    if [ -n "$user" ]; then
        echo "$user"
    elif [ "$service" = systemd ]; then
        echo chorus
    else
        ssh "${ssh_options[@]}" "${dests[$1]}" id -un || die "member ${ids[$1]}: cannot log in to ${dests[$1]}"
    fi
}

# The leader's id, from `chorus cluster health` (empty when unhealthy).
leader() {
    operator cluster health 2> /dev/null | sed -n 's/^healthy: leader \([0-9]*\),.*/\1/p'
}

# Member indexes, the leader's last (a leader stopped last hands over once, not each time).
in_stop_order() {
    local leader_id=$1 i
    for i in "${!ids[@]}"; do
        [ "${ids[$i]}" = "$leader_id" ] || echo "$i"
    done
    for i in "${!ids[@]}"; do
        [ "${ids[$i]}" != "$leader_id" ] || echo "$i"
    done
}

make_certificates() {
    mkdir -p "$state_dir"
    chmod 0700 "$state_dir"
    if [ ! -f "$certs/ca.pem" ]; then
        "$local_chorus" certs init --dir "$certs" --cluster-id "$cluster_id" > /dev/null
        say "made the cluster's CA in $certs (ca.key stays on this machine)"
    fi
    local i
    for i in "${!ids[@]}"; do
        if [ ! -f "$certs/node-${ids[$i]}.pem" ]; then
            "$local_chorus" certs node "${ids[$i]}" --addr "${addresses[$i]}" --dir "$certs" > /dev/null
        fi
    done
    if [ ! -f "$certs/client-ops.pem" ]; then
        "$local_chorus" certs client ops --dir "$certs" > /dev/null
    fi
}

write_cluster_config() {
    local i file="$state_dir/cluster.toml"
    {
        echo "# Generated by scripts/deploy.sh from $hosts_file: every member has this same file."
        echo "cluster_id = \"$cluster_id\""
        for i in "${!ids[@]}"; do
            echo
            echo "[[members]]"
            echo "id = ${ids[$i]}"
            echo "peer_address = \"${addresses[$i]}:$peer_port\""
            echo "client_address = \"${addresses[$i]}:$client_port\""
            echo "data_dir = \"$(prefix "$i")/var/lib/chorus\""
        done
    } > "$file.new"
    mv -f "$file.new" "$file"
}

# The cluster id an earlier install recorded wins over --cluster-id: the certificates and
# the data directories belong to it.
recorded_cluster_id() {
    sed -n 's/^cluster_id = "\(.*\)"$/\1/p' "$state_dir/cluster.toml" 2> /dev/null || true
}

verb_install() {
    local recorded i
    recorded=$(recorded_cluster_id)
    if [ -n "$recorded" ] && [ "$recorded" != "$cluster_id" ]; then
        say "$state_dir belongs to cluster '$recorded': installing that (not '$cluster_id')"
        cluster_id=$recorded
    fi
    # First, before anything is changed anywhere: a new cluster starts from empty data
    # directories only, and an installed one keeps its data. Anything in between is a
    # member whose data was lost, which must not come back as the voter it was (it could
    # make the cluster lose acknowledged writes).
    local states=() empty=0
    for i in "${!ids[@]}"; do
        states[i]=$(on "$i" data)
        [ "${states[$i]}" != empty ] || empty=$((empty + 1))
    done
    if [ "$empty" -ne 0 ] && [ "$empty" -ne "${#ids[@]}" ]; then
        local lost=() held=()
        for i in "${!ids[@]}"; do
            if [ "${states[$i]}" = empty ]; then lost+=("${ids[$i]}"); else held+=("${ids[$i]}"); fi
        done
        die "members ${held[*]} hold data but members ${lost[*]} have empty data directories: the cluster exists, and a member whose data was lost must not rejoin as the voter it was. Put its data back, or replace it as a new member (docs/deploy.md, 'When a machine is lost'). Nothing was changed on any machine."
    fi
    make_certificates
    write_cluster_config
    # Files to every machine before any member is initialized or started, so that a copy
    # that fails leaves no member half made.
    local users=()
    for i in "${!ids[@]}"; do
        local id=${ids[$i]} rendered
        users[i]=$(service_user "$i")
        on "$i" prepare "${users[$i]}" "$service"
        rendered=$(mktemp -d)
        sed -e "s#@ROOT@#$(prefix "$i")#g" -e "s#@ID@#$id#g" -e "s#@USER@#${users[$i]}#g" "$unit_template" \
            > "$rendered/chorus.service"
        copy_to "$i" "$state_dir/cluster.toml" "$rendered/chorus.service" "$certs/ca.pem" "$certs/node-$id.pem" \
            "$certs/node-$id.key"
        rm -rf "$rendered"
        on "$i" place "${users[$i]}" "$id"
        # A running member keeps its binary: a new build reaches it through `upgrade`,
        # one member at a time, never at its next crash or reboot.
        if running "$i"; then
            say "member $id: installed on ${dests[$i]} (it runs: its binary is left for \`upgrade\`)"
        else
            stage_binary_on "$i"
            on "$i" place-binary
            say "member $id: installed on ${dests[$i]}$([ "${roots[$i]}" = / ] || echo " under ${roots[$i]}")"
        fi
    done
    if [ "$empty" -ne 0 ]; then
        for i in "${!ids[@]}"; do
            on "$i" init "${users[$i]}" "${ids[$i]}"
        done
    fi
    for i in "${!ids[@]}"; do
        on "$i" start "$service"
    done
    verb_health
    verb_status
}

service_states() {
    local i
    for i in "${!ids[@]}"; do
        say "member ${ids[$i]} on ${dests[$i]}: $(on "$i" state "$service" 2>&1 || true)"
    done
}

verb_status() {
    service_states
    operator cluster status
}

verb_health() {
    operator cluster health --wait "$wait_secs"
}

verb_start() {
    local i
    for i in "${!ids[@]}"; do
        on "$i" start "$service"
    done
    verb_health
}

verb_stop() {
    local leader_id i
    leader_id=$(leader || true)
    for i in $(in_stop_order "$leader_id"); do
        on "$i" stop "$service"
        say "member ${ids[$i]}: stopped"
    done
}

# The pid member $1's node runs as ("" when stopped).
node_pid() {
    on "$1" state "$service" | sed -n 's/^running (pid \([0-9]*\))$/\1/p'
}

verb_upgrade() {
    local leader_id i
    verb_health > /dev/null || die "the cluster is not healthy: fix that before an upgrade takes a member down ($(operator cluster health 2>&1 || true))"
    leader_id=$(leader) || true
    [ -n "$leader_id" ] || die "no leader to be found: the cluster is not healthy enough for an upgrade"
    say "upgrade: one member at a time, the leader (member $leader_id) last"
    # The new binary reaches every machine, and is seen to run there, before any member
    # stops: a copy that fails, or a build for another machine, leaves the cluster as it was.
    for i in "${!ids[@]}"; do
        stage_binary_on "$i"
    done
    for i in $(in_stop_order "$leader_id"); do
        local id=${ids[$i]} pid
        on "$i" stop "$service"
        on "$i" place-binary
        if ! on "$i" start "$service"; then
            die "upgrade stopped: member $id did not start on the new binary (above); the members after it still run the old binary"
        fi
        pid=$(node_pid "$i") || die "upgrade stopped: cannot tell member $id's node process after its restart"
        # Healthy, and still so a few seconds later with the same process: a build that
        # answers once and then falls over must not let the next member go down.
        if ! operator cluster health --wait "$wait_secs" > /dev/null 2>&1 || ! sleep "$settle_secs" ||
            [ "$(node_pid "$i")" != "$pid" ] || ! operator cluster health > /dev/null 2>&1; then
            die "upgrade stopped: after member $id restarted on the new binary the cluster was not healthy within ${wait_secs}s, or did not stay so ($(operator cluster health 2>&1 || true)); the members after it still run the old binary"
        fi
        say "member $id: upgraded and caught up"
    done
    verb_health
}

"verb_$verb"
