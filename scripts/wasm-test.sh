#!/usr/bin/env bash
# Builds dak-core for the browser (wasm32-unknown-unknown) and runs its tests
# (crates/dak-core/tests/wasm.rs and any other wasm-bindgen-test) in headless
# Chromium through chromedriver. scripts/test.sh runs this after the native
# tests; it installs what is missing first (scripts/wasm-tools.sh).
#
#   scripts/wasm-test.sh [extra cargo test arguments]
#
# Environment:
#   CI=true                     builds use --locked
#   WASM_BINDGEN_TEST_TIMEOUT   seconds all the browser tests may take (default 600)
#   DAK_WASM_TEST_KEEP=1        keep the generated webdriver.json and browser profile
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo_flags=()
case "${CI:-}" in true | 1 | yes) cargo_flags+=(--locked) ;; esac

echo "-- tools (scripts/wasm-tools.sh)"
scripts/wasm-tools.sh

# ---- the architecture invariant ------------------------------------------------
# The core does no I/O: nothing that dak-core builds on in the browser may
# be tokio, rusqlite or tungstenite (normal dependencies; its
# dev-dependencies are the tests' business).
echo "-- cargo tree -p dak-core --target wasm32-unknown-unknown -e normal"
tree=$(cargo tree ${cargo_flags[@]+"${cargo_flags[@]}"} -p dak-core --target wasm32-unknown-unknown -e normal --prefix none)
forbidden=$(printf '%s\n' "$tree" | awk '{print $1}' | grep -E '^(tokio|tokio-.*|rusqlite|libsqlite3-sys|tungstenite|tokio-tungstenite)$' | sort -u || true)
if [ -n "$forbidden" ]; then
    echo "error: dak-core must not depend on tokio, rusqlite or tungstenite (it is sans-I/O and runs in a browser), but its wasm32 dependency tree has:" >&2
    printf '%s\n' "$forbidden" | sed 's/^/  /' >&2
    echo "who pulls them in:" >&2
    for crate in $forbidden; do # one name a line, no spaces
        cargo tree ${cargo_flags[@]+"${cargo_flags[@]}"} -p dak-core --target wasm32-unknown-unknown -e normal -i "$crate" >&2 || true
    done
    exit 1
fi
echo "no tokio, rusqlite or tungstenite: ok ($(printf '%s\n' "$tree" | awk '{print $1}' | sort -u | wc -l) crates)"

# ---- headless Chromium -----------------------------------------------------------
# wasm-bindgen-test-runner starts chromedriver ($CHROMEDRIVER) and asks it
# for a browser with the capabilities in $WASM_BINDGEN_TEST_WEBDRIVER_JSON
# (it adds headless, no-sandbox and disable-dev-shm-usage to the args
# itself). As root in a container there is no sandbox to have and /dev/shm
# is small; no GPU; nothing should reach for the network.
work=$(mktemp -d "${TMPDIR:-/tmp}/dak-wasm-test.XXXXXX")
if [ "${DAK_WASM_TEST_KEEP:-}" = 1 ]; then
    echo "keeping $work"
else
    trap 'rm -rf "$work"' EXIT
fi
chromium_bin=/usr/lib/chromium/chromium # the binary itself; /usr/bin/chromium is a wrapper script
[ -x "$chromium_bin" ] || chromium_bin=/usr/bin/chromium
cat >"$work/webdriver.json" <<EOF
{
  "goog:chromeOptions": {
    "binary": "$chromium_bin",
    "args": [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-dev-shm-usage",
      "--no-first-run",
      "--no-default-browser-check",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--disable-extensions",
      "--user-data-dir=$work/profile"
    ]
  }
}
EOF

export CHROMEDRIVER=/usr/bin/chromedriver
export WASM_BINDGEN_TEST_WEBDRIVER_JSON="$work/webdriver.json"
export WASM_BINDGEN_TEST_TIMEOUT="${WASM_BINDGEN_TEST_TIMEOUT:-600}"
export WASM_BINDGEN_TEST_DRIVER_TIMEOUT="${WASM_BINDGEN_TEST_DRIVER_TIMEOUT:-60}"
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner
unset NO_HEADLESS WASM_BINDGEN_TEST_ONLY_NODE

echo "-- cargo test -p dak-core --target wasm32-unknown-unknown (headless Chromium)"
cargo test ${cargo_flags[@]+"${cargo_flags[@]}"} -p dak-core --target wasm32-unknown-unknown "$@"
