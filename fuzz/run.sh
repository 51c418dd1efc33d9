#!/usr/bin/env bash
# Runs each fuzz target for N minutes (default 10) and prints executions per second.
#
#   fuzz/run.sh [minutes] [target...]        e.g. fuzz/run.sh 10, fuzz/run.sh 3 config
#
# Needs a nightly toolchain (`rustup toolchain install nightly`) and cargo-fuzz (`cargo install
# cargo-fuzz`). Targets are built with AddressSanitizer, debug assertions and overflow checks.
# An input that takes longer than FUZZ_TIMEOUT seconds (default 1) or makes the process grow
# past FUZZ_RSS_MB (default 512) is a finding, like a panic: libFuzzer writes it to
# fuzz/artifacts/<target>/ and the target stops. Reproduce one with
#   cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>
# and, once fixed, add it to fuzz/regressions/<target>/ so that tests/fuzz_corpus.rs replays it.
#
# Each target starts from fuzz/corpus/<target>/ and fuzz/regressions/<target>/ (read only) and
# writes what it adds to fuzz/work/<target>/ (kept between runs, not committed). Exits non-zero
# when a target found something.
set -uo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
minutes="${1:-10}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(stun_message stream_framing config core_unauthenticated core_authenticated)
fi
timeout_s="${FUZZ_TIMEOUT:-1}"
rss_mb="${FUZZ_RSS_MB:-512}"

# AddressSanitizer keeps up to 256 MB of freed memory in quarantine by default, which would
# count against -rss_limit_mb; 32 MB keeps the peak RSS about the target's own memory.
export ASAN_OPTIONS="${ASAN_OPTIONS:-quarantine_size_mb=32}"

cd "$here"
cargo +nightly fuzz build || exit 1

# Longest input per target: a whole STUN message, a TCP stream window, a configuration file,
# operations (room for one datagram of the largest size and a few more).
max_len() {
    case "$1" in
        stun_message) echo 65556 ;;
        config) echo 16384 ;;
        *) echo 70000 ;;
    esac
}

# Tokens libFuzzer splices into inputs: TOML keys, STUN types and attribute headers.
dictionary() {
    case "$1" in
        config) echo "dictionaries/config.dict" ;;
        *) echo "dictionaries/stun.dict" ;;
    esac
}

summary=()
status=0
for target in "${targets[@]}"; do
    mkdir -p "work/$target" "regressions/$target" "artifacts/$target"
    log="work/$target.log"
    echo "== $target: ${minutes} min, -timeout=$timeout_s -rss_limit_mb=$rss_mb"
    cargo +nightly fuzz run "$target" "work/$target" "corpus/$target" "regressions/$target" -- \
        -max_total_time=$((minutes * 60)) -timeout="$timeout_s" -rss_limit_mb="$rss_mb" \
        -max_len="$(max_len "$target")" -dict="$(dictionary "$target")" \
        -print_final_stats=1 > "$log" 2>&1
    code=$?
    stat() { grep -m1 "^stat::$1:" "$log" | awk '{print $2}'; }
    execs="$(stat number_of_executed_units)"
    rate="$(stat average_exec_per_sec)"
    added="$(stat new_units_added)"
    rss="$(stat peak_rss_mb)"
    if [ "$code" -eq 0 ]; then
        result="nothing found"
    else
        status=1
        artifact="$(grep -o "Test unit written to [^ ]*" "$log" | tail -1 | cut -d' ' -f5)"
        result="FOUND (exit $code) ${artifact:-see $log}"
        grep -m1 -E "panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer" "$log" || true
    fi
    summary+=("$(printf '%-22s %9s execs/s %12s execs %6s new  %5s MB  %s' \
        "$target" "${rate:-?}" "${execs:-?}" "${added:-?}" "${rss:-?}" "$result")")
done

echo
echo "target                    execs/s        total execs    new units  peak RSS  result"
printf '%s\n' "${summary[@]}"
exit $status
