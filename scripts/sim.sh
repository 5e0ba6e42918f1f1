#!/usr/bin/env bash
# Runs a swarm of simulation seeds on every core and collects the failing ones.
#
#   scripts/sim.sh [SEEDS] [FIRST_SEED]      e.g. scripts/sim.sh 1000
#   scripts/sim.sh --minutes N [FIRST_SEED]  as many seeds as fit in N minutes
#
# Each scenario runs SEEDS seeds starting at FIRST_SEED (default: a random start, printed).
# Failing seeds are appended to target/sim/failing-seeds.txt as "SCENARIO SEED" lines;
# replay one with scripts/replay.sh SEED SCENARIO.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=""
if [ "${1:-}" = "--minutes" ]; then
    minutes=$2
    shift 2
fi
seeds=${1:-200}
first=${2:-$(( (RANDOM << 15 | RANDOM) + 1 ))}
jobs=$(nproc)
out=target/sim/failing-seeds.txt
mkdir -p target/sim
touch "$out"

echo "building the simulation (the sim profile: optimized, assertions on)"
RUSTFLAGS="--cfg madsim" cargo test --profile sim --locked --target-dir target/sim -p chorus-sim --test scenarios --no-run

run_batch() {  # FIRST COUNT: one batch of seeds, all scenarios, on every core
    local start=$1 count=$2
    local per_job=$(( (count + jobs - 1) / jobs ))
    local pids=()
    for job in $(seq 0 $((jobs - 1))); do
        local job_first=$(( start + job * per_job ))
        MADSIM_TEST_SEED=$job_first MADSIM_TEST_NUM=$per_job RUSTFLAGS="--cfg madsim" \
            cargo test --profile sim --locked --target-dir target/sim -p chorus-sim --test scenarios -- --nocapture \
            --test-threads 1 > "target/sim/swarm-$job.log" 2>&1 &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || true; done
    for job in $(seq 0 $((jobs - 1))); do
        grep -E ' seed [0-9]+: .*FAILED' "target/sim/swarm-$job.log" \
            | sed -E 's/^([a-z-]+) seed ([0-9]+):.*/\1 \2/' >> "$out" || true
    done
}

before=$(wc -l < "$out")
if [ -n "$minutes" ]; then
    deadline=$(( $(date +%s) + minutes * 60 ))
    start=$first
    while [ "$(date +%s)" -lt "$deadline" ]; do
        run_batch "$start" "$(( jobs * 10 ))"
        start=$(( start + jobs * 10 ))
    done
    echo "ran seeds $first..$((start - 1)) of every scenario"
else
    run_batch "$first" "$seeds"
    echo "ran seeds $first..$((first + seeds - 1)) of every scenario"
fi
after=$(wc -l < "$out")
new=$(( after - before ))
if [ "$new" -gt 0 ]; then
    echo "$new failing run(s), listed in $out:"
    tail -n "$new" "$out"
    exit 1
fi
echo "no failures"
