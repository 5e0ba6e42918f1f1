#!/usr/bin/env bash
# The project's one test command: what CI runs (.ci/run) and what the README's Quickstart
# gives a newcomer. Exits non-zero on the first failure.
#
# Environment:
#   PROPTEST_CASES   property-test cases per test (default: each test's own, small enough for CI)
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

step "madsim build (the node library compiles for simulation)"
RUSTFLAGS="--cfg madsim" cargo build --locked --target-dir target/sim -p chorus

printf '\nall checks passed\n'
