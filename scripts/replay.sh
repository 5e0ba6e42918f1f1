#!/usr/bin/env bash
# Replays one simulation seed with full tracing, writing the log to a file and printing
# the nemesis timeline and the checkers' verdict.
#
#   scripts/replay.sh SEED [SCENARIO] [BUG]
#
# SCENARIO: available-crash (default), available-power-loss, safety-crash, safety-power-loss,
# snapshot-catch-up.
# BUG: a planted bug to replay with (CommitWithoutQuorum, SkipFsync, ApplyBeforeCommit,
#      ForgetDedup, SkipReadIndex), as scripts/test.sh's planted-bug tests report.
# RUST_LOG sets the tracing filter (default: debug for Chorus, info for the rest).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 1 ]; then
    sed -n '2,10p' "$0"
    exit 2
fi
seed=$1
scenario=${2:-available-crash}
bug=${3:-}
log="target/sim/replay-${scenario}-${seed}${bug:+-$bug}.log"
mkdir -p target/sim

echo "replaying seed $seed of $scenario${bug:+ with planted bug $bug}; full log: $log"
status=0
CHORUS_SIM_REPLAY_SEED="$seed" CHORUS_SIM_REPLAY_SCENARIO="$scenario" CHORUS_SIM_REPLAY_BUG="$bug" \
    RUST_LOG="${RUST_LOG:-info,chorus=debug}" RUSTFLAGS="--cfg madsim" \
    cargo test --profile sim --locked --target-dir target/sim -p chorus-sim --test replay -- --nocapture \
    > "$log" 2>&1 || status=$?
# The verdict and the nemesis timeline, without the tracing lines.
sed -n '/^scenario /,/^replay:/p; /operations, .* simulated/p' "$log"
if [ "$status" -ne 0 ]; then
    echo "seed $seed of $scenario FAILED (exit $status); see $log"
fi
exit "$status"
