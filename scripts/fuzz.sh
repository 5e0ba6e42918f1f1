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
#                                            keep its coverage (after a long run)
#   scripts/fuzz.sh seed                     writes the seed inputs into the corpus again
#   scripts/fuzz.sh replay TARGET FILE...    runs inputs once, e.g. a crash's artifact
#   scripts/fuzz.sh list                     the targets
#
# A finding (a panic, a timeout of 10 s, 1 GiB of memory, one allocation over 256 MiB)
# stops the run with a non-zero exit and leaves the input in
# target/fuzz/artifacts/TARGET/; replay it, fix the defect, and commit the input into
# node/fuzz/corpus/TARGET/ so that `cargo test` replays it ever after.
set -euo pipefail
cd "$(dirname "$0")/.."

targets=(raft_batch chat_command log_record api_input api_handlers)
corpus=node/fuzz/corpus
artifacts=target/fuzz/artifacts
# libFuzzer's limits: inputs up to 16 KiB (every target's structure fits), 10 s per input,
# and memory bounded so that an unbounded allocation is a finding, not a dead machine.
limits=(-max_len=16384 -timeout=10 -rss_limit_mb=1024 -malloc_limit_mb=256)

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

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

smoke() {
    local seconds=${1:-12}
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
            if wait "${pids[$position]}"; then
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
        build
        fuzz "$1" "${2:-600}" "$corpus/$1"
        ;;
    merge)
        [ $# -eq 1 ] || usage
        known_target "$1"
        build
        merged=$(mktemp -d)
        trap 'rm -rf "$merged"' EXIT
        "target/debug/$1" "${limits[@]}" -merge=1 "$merged" "$corpus/$1"
        find "$corpus/$1" -type f ! -name 'seed-*' -delete
        cp -n "$merged"/* "$corpus/$1"/ 2>/dev/null || true
        echo "$(find "$corpus/$1" -type f | wc -l) inputs in $corpus/$1"
        ;;
    seed) cargo run --locked -q -p chorus-fuzz --bin fuzz-seeds ;;
    replay)
        [ $# -ge 2 ] || usage
        known_target "$1"
        target=$1
        shift
        build
        "target/debug/$target" "${limits[@]}" "$@"
        ;;
    list) printf '%s\n' "${targets[@]}" ;;
    *) usage ;;
esac
