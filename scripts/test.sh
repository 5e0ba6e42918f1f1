#!/usr/bin/env bash
# The project's one test command: what CI runs (.ci/run) and what the README's Quickstart
# gives a newcomer. Exits non-zero on the first failure.
#
# Environment:
#   PROPTEST_CASES        property-test cases per test (default: each test's own, small enough for CI)
#   RAFT_PROPTEST_CASES   cases per cluster size of the replication property test (default 1000)
#   MADSIM_TEST_NUM       simulation seeds per scenario (default 8)
#   FUZZ_SECONDS          seconds each fuzz target runs (default 12)
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

step "cargo test"
cargo test --workspace --locked

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
# The node crate is linted and built here with its planted bugs (the simulation crate
# turns them on); without them it is built and tested above, outside the simulation.
step "cargo clippy -D warnings (simulation-only code)"
cargo clippy --profile sim --locked --target-dir target/sim -p chorus-sim --all-targets -- -D warnings

step "simulation suite: scenarios, determinism, replay, planted bugs"
# Seeds per scenario: MADSIM_TEST_NUM (default 8), from MADSIM_TEST_SEED (default 1).
MADSIM_TEST_NUM="${MADSIM_TEST_NUM:-8}" cargo test --profile sim --locked --target-dir target/sim -p chorus-sim
unset RUSTFLAGS

printf '\nall checks passed\n'
