#!/usr/bin/env bash
# Coverage-guided fuzzing of Chorus's decoders and API handlers (node/fuzz), with libFuzzer
# on the stable toolchain: libfuzzer-sys compiles libFuzzer, and node/fuzz/rustc-wrapper.sh
# instruments the workspace's crates the way cargo-fuzz would (no nightly, no cargo-fuzz).
#
#   scripts/fuzz.sh smoke [SECONDS]          every target for SECONDS (default 12), two at a
#                                            time, from the committed corpus; what CI runs
#   scripts/fuzz.sh run TARGET [SECONDS]     one target for SECONDS (default 600); inputs
#                                            that reach new code are added to its corpus
#   scripts/fuzz.sh merge TARGET             shrinks a target's corpus to the inputs that
#                                            keep its coverage (after a long run); seeds
#                                            and regression-* inputs always stay
#   scripts/fuzz.sh seed                     writes the seed inputs into the corpus again
#   scripts/fuzz.sh replay TARGET FILE...    runs inputs once, e.g. a crash's artifact
#   scripts/fuzz.sh list                     the targets
#
# A finding (a panic, a timeout of 10 s, 1 GiB of memory, one allocation over 256 MiB)
# stops the run with a non-zero exit and leaves the input in
# target/fuzz/artifacts/TARGET/; replay it, fix the defect, and commit the input as
# node/fuzz/corpus/TARGET/regression-NAME so that `cargo test` replays it ever after.
set -euo pipefail
cd "$(dirname "$0")/.."

targets=(raft_batch raft_step chat_command log_record api_input api_handlers)
corpus=node/fuzz/corpus
artifacts=target/fuzz/artifacts
# libFuzzer's limits: inputs up to 16 KiB (every target's structure fits), 10 s per input,
# and 1 GiB of memory, so that unbounded growth is a finding, not a dead machine. (A
# single allocation over 256 MiB fails in the targets' own allocator,
# node/fuzz/src/allocation_limit.rs: libFuzzer's -malloc_limit_mb needs a sanitizer's hooks.)
limits=(-max_len=16384 -timeout=10 -rss_limit_mb=1024)

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

positive_seconds() {
    case "$1" in
        '' | *[!0-9]* | 0) echo "fuzz.sh: '$1' is no number of seconds (at least 1; 0 would mean forever)" >&2; exit 2 ;;
    esac
}

known_target() {
    local target
    for target in "${targets[@]}"; do [ "$target" = "$1" ] && return 0; done
    echo "fuzz.sh: no target '$1'; the targets are: ${targets[*]}" >&2
    exit 2
}

build() {
    echo "building the fuzz targets (instrumented for coverage)"
    local bins=()
    for target in "${targets[@]}"; do bins+=(--bin "$target"); done
    # The workspace wrapper instruments Chorus's crates only; their instrumented artifacts
    # are kept apart from the ordinary ones, and the dependencies are shared with them.
    RUSTC_WORKSPACE_WRAPPER="$PWD/node/fuzz/rustc-wrapper.sh" \
        cargo build --locked -p chorus-fuzz --features libfuzzer "${bins[@]}"
}

# fuzz TARGET SECONDS WORK_DIR: one run; new inputs go to WORK_DIR, the committed corpus
# is read from.
fuzz() {
    local target=$1 seconds=$2 work=$3
    mkdir -p "$artifacts/$target" "$work"
    "target/debug/$target" "${limits[@]}" -max_total_time="$seconds" -print_final_stats=1 \
        -artifact_prefix="$artifacts/$target/" "$work" "$corpus/$target"
}

# covered LOG: the run's log shows coverage (an uninstrumented build runs, finds nothing
# and passes: that must fail instead).
covered() {
    if grep -q 'Is the code instrumented for coverage' "$1" || ! grep -q -E ' cov: [1-9]' "$1"; then
        echo "fuzz.sh: the run shows no coverage: the targets were built without instrumentation" >&2
        return 1
    fi
}

smoke() {
    local seconds=${1:-12}
    positive_seconds "$seconds"
    build
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    local failed=()
    local index
    for ((index = 0; index < ${#targets[@]}; index += 2)); do
        local pair=("${targets[@]:index:2}") pids=()
        for target in "${pair[@]}"; do
            echo "fuzzing $target for ${seconds}s"
            fuzz "$target" "$seconds" "$scratch/$target" > "$scratch/$target.log" 2>&1 &
            pids+=($!)
        done
        for position in "${!pair[@]}"; do
            local target=${pair[$position]}
            if wait "${pids[$position]}" && covered "$scratch/$target.log"; then
                grep -E '^#[0-9]+.*DONE' "$scratch/$target.log" | sed "s/^/  $target: /" || true
            else
                failed+=("$target")
                echo "FUZZ FINDING in $target:" >&2
                grep -v -E '^#[0-9]+' "$scratch/$target.log" | tail -40 >&2
            fi
        done
    done
    if [ ${#failed[@]} -gt 0 ]; then
        echo "fuzz findings in: ${failed[*]}; the inputs are in $artifacts/; replay one with" >&2
        echo "  scripts/fuzz.sh replay TARGET FILE" >&2
        exit 1
    fi
}

command=${1:-}
[ -n "$command" ] || usage
shift
case "$command" in
    smoke) smoke "$@" ;;
    run)
        [ $# -ge 1 ] || usage
        known_target "$1"
        positive_seconds "${2:-600}"
        build
        fuzz "$1" "${2:-600}" "$corpus/$1"
        ;;
    merge)
        [ $# -eq 1 ] || usage
        known_target "$1"
        build
        # Every input first, once: libFuzzer's merge skips an input that crashes, and the
        # merge must not quietly drop a regression that came back.
        "target/debug/$1" "${limits[@]}" -runs=0 "$corpus/$1"
        merged=$(mktemp -d)
        trap 'rm -rf "$merged"' EXIT
        "target/debug/$1" "${limits[@]}" -merge=1 "$merged" "$corpus/$1"
        find "$corpus/$1" -type f ! -name 'seed-*' ! -name 'regression-*' -delete
        find "$merged" -type f -exec cp -n {} "$corpus/$1"/ \;
        echo "$(find "$corpus/$1" -type f | wc -l) inputs in $corpus/$1"
        ;;
    seed) cargo run --locked -q -p chorus-fuzz --bin fuzz-seeds ;;
    replay)
        [ $# -ge 2 ] || usage
        known_target "$1"
        target=$1
        shift
        build
        RUST_BACKTRACE=1 "target/debug/$target" "${limits[@]}" "$@"
        ;;
    list) printf '%s\n' "${targets[@]}" ;;
    *) usage ;;
esac
