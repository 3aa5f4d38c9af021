#!/usr/bin/env bash
# Builds every fuzz target in fuzz/ and runs each for a short while.
#
#   scripts/fuzz-smoke.sh [SECONDS]      # SECONDS per target, default 15
#
# FUZZ_SANITIZER=address|none (default none). "none" works on plain stable
# Rust; "address" needs -Zsanitizer, so on a stable toolchain this script sets
# RUSTC_BOOTSTRAP=1 for it. Installs cargo-fuzz if it is missing. Exits
# non-zero if any target crashes; the crashing input is left in
# fuzz/artifacts/<target>/.
set -euo pipefail

seconds="${1:-15}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
    echo "usage: $0 [SECONDS]   (SECONDS per target, a positive integer; got '$seconds')" >&2
    exit 2
fi
sanitizer="${FUZZ_SANITIZER:-none}"

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust from https://rustup.rs" >&2
    exit 1
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "--- installing cargo-fuzz (cargo install cargo-fuzz --locked)"
    cargo install cargo-fuzz --locked
fi

if [ "$sanitizer" != none ] && ! rustc --version | grep -q nightly; then
    # cargo-fuzz passes -Zsanitizer=...; let stable rustc accept it.
    export RUSTC_BOOTSTRAP=1
fi

cd fuzz
targets=()
while IFS= read -r t; do
    if [ -n "$t" ]; then targets+=("$t"); fi
done < <(cargo fuzz list)
if [ "${#targets[@]}" -eq 0 ]; then
    echo "no fuzz targets found in fuzz/" >&2
    exit 1
fi

echo "--- building fuzz targets (sanitizer: $sanitizer): ${targets[*]}"
cargo fuzz build --sanitizer "$sanitizer"

logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT
failed=()
for t in "${targets[@]}"; do
    echo "--- fuzzing $t for ${seconds}s"
    # libFuzzer is chatty (a line per new input); keep its output in a log and
    # show the summary, or the tail if the target crashed.
    # Real messages of each kind (fuzz/seeds/<target>, committed) start the
    # corpus, so the fuzzer reaches past the outer framing at once.
    corpus=(corpus/"$t")
    mkdir -p "corpus/$t"
    if [ -d "seeds/$t" ]; then corpus+=("seeds/$t"); fi
    if cargo fuzz run --sanitizer "$sanitizer" "$t" "${corpus[@]}" -- \
        -max_total_time="$seconds" -timeout=10 >"$logs/$t.log" 2>&1; then
        grep -E '^#[0-9]+[[:space:]]+DONE' "$logs/$t.log" | tail -n 1 || true
        grep -E '^Done [0-9]+ runs' "$logs/$t.log" | tail -n 1 || true
    else
        echo "!!! $t FAILED; last lines of its output:"
        tail -n 60 "$logs/$t.log"
        failed+=("$t")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz smoke FAILED for: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz smoke passed: ${targets[*]} (${seconds}s each)"
