#!/usr/bin/env bash
# The project's one test command: formatting, lints, the test suite and (in
# CI, or with FUZZ_SMOKE=1) a short fuzz smoke run. CI runs exactly this via
# .ci/run.
#
#   scripts/test.sh
#
# Environment:
#   CI=true        what CI sets: builds use --locked, and the fuzz smoke runs
#   FUZZ_SMOKE=1   run the fuzz smoke locally too (FUZZ_SMOKE=0 skips it in CI)
#   FUZZ_SECONDS   seconds per fuzz target in the smoke run (default 10)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

ci=false
case "${CI:-}" in true | 1 | yes) ci=true ;; esac

started=$SECONDS
section() {
    printf '\n==== %s  [%ds]\n' "$*" "$((SECONDS - started))"
}

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust from https://rustup.rs, then run this again" >&2
    exit 1
fi

# In CI the lock file must already be right: a change to Cargo.toml without
# its Cargo.lock update fails here rather than resolving something new.
cargo_flags=()
if $ci; then
    cargo_flags+=(--locked)
fi

section "toolchain"
rustc --version
cargo --version
# Add rustfmt/clippy only when they are missing; that needs the network, so a
# failure here is not fatal by itself (the step that needs the tool decides).
missing=()
cargo fmt --version >/dev/null 2>&1 || missing+=(rustfmt)
cargo clippy --version >/dev/null 2>&1 || missing+=(clippy)
if [ "${#missing[@]}" -gt 0 ]; then
    if command -v rustup >/dev/null 2>&1; then
        echo "adding rustup components: ${missing[*]}"
        rustup component add "${missing[@]}" ||
            echo "warning: 'rustup component add ${missing[*]}' failed (offline?)" >&2
    else
        echo "warning: ${missing[*]} missing and rustup not found to add them" >&2
    fi
fi

# A tool that is still missing fails the run in CI; locally its step is
# skipped with a warning so the tests still run.
have_tool() {
    local name="$1"
    shift
    if "$@" >/dev/null 2>&1; then
        return 0
    fi
    if $ci; then
        echo "error: $name is not available" >&2
        exit 1
    fi
    echo "warning: $name is not available; skipping this step" >&2
    return 1
}

section "cargo fmt --check"
if have_tool rustfmt cargo fmt --version; then
    cargo fmt --all -- --check
    # fuzz/ is its own workspace, so --all does not reach it.
    cargo fmt --manifest-path fuzz/Cargo.toml -- --check
fi

section "cargo clippy -D warnings"
if have_tool clippy cargo clippy --version; then
    cargo clippy ${cargo_flags[@]+"${cargo_flags[@]}"} --workspace --all-targets -- -D warnings
fi

# ---- services for the cluster-mode tests -------------------------------------
# The PostgreSQL store's conformance tests and the two-node tests talk to a
# real PostgreSQL and NATS (each test makes and drops its own database, and
# uses its own NATS subject space). Point elsewhere with
# DAK_TEST_POSTGRES_URL (an admin URL) and DAK_TEST_NATS_URL; otherwise the
# local services are used, and started here if they are down.
section "services: PostgreSQL and NATS"
scripts/services.sh

# ---- the web client, for tests/web.rs ----------------------------------------------
# Built before the tests (the dev profile: it shares its build with the
# wasm32 tests below), with Chromium and chromedriver for the browser tests.
section "web client for the browser tests (scripts/web-build.sh --dev)"
scripts/wasm-tools.sh
scripts/web-build.sh --dev

# ---- Python, for the bot examples (tests/bot.rs runs examples/*/bot.py) -----
# They use the standard library only; Debian's python3 is enough.
section "python3 for the bot examples"
if ! command -v python3 >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get install -y --no-install-recommends python3
    else
        echo "error: python3 is missing; install it (the bot examples are Python)" >&2
        exit 1
    fi
fi
python3 --version
# schemathesis (PyPI) in target/schemathesis, for the bot API's property tests.
scripts/schemathesis.sh

# The runner's counts, kept for the closing line.
test_log=$(mktemp)
trap 'rm -f "$test_log"' EXIT
if cargo nextest --version >/dev/null 2>&1; then
    # nextest does not run doctests, so they go first.
    section "cargo test --doc"
    cargo test ${cargo_flags[@]+"${cargo_flags[@]}"} --workspace --doc
    section "cargo nextest run"
    cargo nextest run ${cargo_flags[@]+"${cargo_flags[@]}"} --workspace --no-fail-fast 2>&1 | tee "$test_log"
    # The counting test restarts the machine's NATS and PostgreSQL, so it
    # runs alone, after everything else that uses them.
    section "cluster counting test (restarts NATS and PostgreSQL)"
    cargo nextest run ${cargo_flags[@]+"${cargo_flags[@]}"} -p dak --test cluster --run-ignored only --no-capture 2>&1 | tee -a "$test_log"
    scripts/services.sh
    passed=$(grep -E 'Summary .* tests? run:' "$test_log" | sed -nE 's/.* ([0-9]+) passed.*/\1/p' | awk '{s+=$1} END {print s+0}')
    failed=$(grep -E 'Summary .* tests? run:' "$test_log" | sed -nE 's/.* ([0-9]+) failed.*/\1/p' | awk '{s+=$1} END {print s+0}')
else
    section "cargo test"
    cargo test ${cargo_flags[@]+"${cargo_flags[@]}"} --workspace 2>&1 | tee "$test_log"
    section "cluster counting test (restarts NATS and PostgreSQL)"
    cargo test ${cargo_flags[@]+"${cargo_flags[@]}"} -p dak --test cluster -- --ignored --nocapture 2>&1 | tee -a "$test_log"
    scripts/services.sh
    passed=$(sed -nE 's/^test result: [a-zA-Z]+\. ([0-9]+) passed.*/\1/p' "$test_log" | awk '{s+=$1} END {print s+0}')
    failed=$(sed -nE 's/^test result: .* ([0-9]+) failed.*/\1/p' "$test_log" | awk '{s+=$1} END {print s+0}')
fi

# ---- the client core in a browser -----------------------------------------------
# dak-core built for wasm32 and tested in headless Chromium. wasm-tools.sh
# (which wasm-test.sh calls) installs what is missing first: the Rust target,
# Debian's chromium and chromium-driver, and the wasm-bindgen-test-runner of
# Cargo.lock's wasm-bindgen version. Its runner prints libtest's
# "test result: ok. N passed; M failed; ..." lines, counted as above.
section "wasm32: dak-core in headless Chromium (scripts/wasm-test.sh)"
wasm_log=$(mktemp)
trap 'rm -f "$test_log" "$wasm_log"' EXIT
scripts/wasm-test.sh 2>&1 | tee "$wasm_log"
wasm_passed=$(sed -nE 's/^test result: [a-zA-Z]+\. ([0-9]+) passed.*/\1/p' "$wasm_log" | awk '{s+=$1} END {print s+0}')
wasm_failed=$(sed -nE 's/^test result: .* ([0-9]+) failed.*/\1/p' "$wasm_log" | awk '{s+=$1} END {print s+0}')
echo "wasm32: $wasm_passed passed, $wasm_failed failed"
passed=$((${passed:-0} + wasm_passed))
failed=$((${failed:-0} + wasm_failed))


fuzz_smoke="${FUZZ_SMOKE:-}"
if [ -z "$fuzz_smoke" ]; then
    fuzz_smoke=0
    $ci && fuzz_smoke=1
fi
if [ "$fuzz_smoke" = 1 ]; then
    section "fuzz smoke (${FUZZ_SECONDS:-10}s per target)"
    scripts/fuzz-smoke.sh "${FUZZ_SECONDS:-10}"
else
    section "fuzz smoke: skipped (FUZZ_SMOKE=1 runs it; see fuzz/README.md)"
fi

section "all checks passed"
# The plain closing line CI reads: the test counts of the run above.
echo "tests: ${passed:-0} passed, ${failed:-0} failed"
