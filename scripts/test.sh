#!/usr/bin/env bash
# The project's one test command: what CI runs (.ci/run) and what the README's Quickstart
# gives a newcomer. Exits non-zero on the first failure.
#
# Environment:
#   PROPTEST_CASES        property-test cases per test (default: each test's own, small enough for CI)
#   RAFT_PROPTEST_CASES   cases per cluster size of the replication property test (default 1000)
#   MADSIM_TEST_NUM       simulation seeds per scenario (default 8)
#   FUZZ_SECONDS          seconds each fuzz target runs (default 12)
#   CHORUS_NEMESIS_SECS   seconds of faults in the real-process nemesis test (default 45)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain components"
# A fresh machine may lack rustfmt or clippy; install them rather than fail obscurely.
for component in rustfmt clippy; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^${component}"; then
        rustup component add "$component"
    fi
done

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

# The multi-host tests (tests/, the chorus-hosts crate) run their nodes on test hosts with
# network stacks of their own: network namespaces, which need root. Where this machine makes
# them they must run (CHORUS_HOSTS_REQUIRED turns a refusal into a failure); elsewhere they
# print a SKIPPED line each.
step "test hosts: tools and network namespaces"
if [ "$(id -u)" = 0 ]; then
    scripts/hosts.sh install-tools
    # Hosts a killed earlier run left behind would eat the CPU the timed tests need.
    scripts/hosts.sh sweep-orphans
    # Named as chorus-hosts names its own, so that a sweep finds it if this script dies here.
    probe="chorus-hosts-$$-probe"
    if refused=$(ip netns add "$probe" 2>&1); then
        if refused=$(ip netns exec "$probe" nft list tables 2>&1 && ip netns exec "$probe" iptables -w -L -n 2>&1); then
            export CHORUS_HOSTS_REQUIRED=1
            echo "network namespaces work here: the multi-host tests run"
        else
            echo "SKIPPED: the multi-host tests: nftables or iptables fail inside a namespace ($refused)"
        fi
        ip netns del "$probe"
    else
        echo "SKIPPED: the multi-host tests: this kernel refuses network namespaces ($refused)"
    fi
else
    echo "SKIPPED: the multi-host tests: they need root to make network namespaces"
fi

step "cargo test"
# CHORUS_NEMESIS_SECS: how long the real-process nemesis runs (tests/tests/hosts/real_nemesis.rs).
CHORUS_NEMESIS_SECS="${CHORUS_NEMESIS_SECS:-45}" cargo test --workspace --locked

# Coverage-guided fuzzing, briefly (FUZZ_SECONDS per target, default 12): libFuzzer is
# C++, compiled by libfuzzer-sys, so a C++ compiler must be there. The instrumented build
# reuses the dependencies `cargo test` just built. Longer runs: docs/testing.md.
step "fuzz smoke: every target for ${FUZZ_SECONDS:-12}s from the committed corpus"
if ! command -v "${CXX:-c++}" > /dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
        apt-get update -qq && apt-get install -y -qq g++
    else
        echo "test.sh: the fuzzers need a C++ compiler (libFuzzer is C++): install g++, or set CXX" >&2
        exit 1
    fi
fi
scripts/fuzz.sh smoke "${FUZZ_SECONDS:-12}"

# The simulation: the real node code under madsim, optimized (it runs tens of seeds) but
# with debug assertions and overflow checks on (the `sim` profile: faults are injected here,
# so here a broken invariant must crash), in its own target directory so that the two
# builds never evict each other.
export RUSTFLAGS="--cfg madsim"
# The code only the simulation compiles (cfg(madsim), the planted bugs) is linted as it is
# built, not by a separate `cargo clippy`: clippy's driver compiles the workspace's own
# crates here (RUSTC_WORKSPACE_WRAPPER, as `cargo clippy` itself does, with its -D warnings
# in CLIPPY_ARGS), so the lint costs no second pass over every dependency (about 4 min cold
# on 2 cores). A lint failure fails the build, with clippy's message.
step "simulation suite, linted as it builds: scenarios, determinism, replay, planted bugs"
# Seeds per scenario: MADSIM_TEST_NUM (default 8), from MADSIM_TEST_SEED (default 1).
RUSTC_WORKSPACE_WRAPPER="$(rustc --print sysroot)/bin/clippy-driver" \
    CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__" \
    MADSIM_TEST_NUM="${MADSIM_TEST_NUM:-8}" \
    cargo test --profile sim --locked --target-dir target/sim -p chorus-sim
unset RUSTFLAGS

printf '\nall checks passed\n'
