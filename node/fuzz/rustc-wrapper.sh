#!/usr/bin/env bash
# The RUSTC_WORKSPACE_WRAPPER of scripts/fuzz.sh: cargo runs it as `WRAPPER RUSTC ARGS...`
# for the workspace's own crates only, so only Chorus's code carries libFuzzer's coverage
# instrumentation, and the dependencies are the very artifacts `cargo test` built (cargo
# keeps the wrapped crates apart by hashing the wrapper's path into their file names).
#
# The flags are cargo-fuzz's: SanitizerCoverage with 8-bit edge counters, the table of
# program counters and comparison tracing (libFuzzer learns the constants the code compares
# with), `--cfg fuzzing`, and debug assertions with overflow checks on, so that a broken
# invariant stops the run. Build scripts run on this machine and are left alone.
set -euo pipefail
rustc="$1"
shift
case " $* " in
    *" --crate-name build_script_"* | *" -vV "* | *" --print"*) exec "$rustc" "$@" ;;
esac
exec "$rustc" "$@" \
    -Cpasses=sancov-module \
    -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
    -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares \
    --cfg fuzzing \
    -Cdebug-assertions \
    -Coverflow-checks \
    -Copt-level=1
