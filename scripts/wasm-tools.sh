#!/usr/bin/env bash
# Installs what scripts/wasm-test.sh needs, and only what is missing, so a
# second run does nothing (and needs no network):
#
#   - the Rust target wasm32-unknown-unknown (rustup);
#   - Chromium and its WebDriver, chromedriver (Debian's apt packages
#     `chromium` and `chromium-driver`; needs root or sudo);
#   - wasm-bindgen-cli (wasm-bindgen-test-runner), at exactly the
#     wasm-bindgen version in Cargo.lock: the runner refuses a test binary
#     built with another one.
#
#   scripts/wasm-tools.sh [--no-browser]
#
# --no-browser skips Chromium (building the web client needs only the
# target and wasm-bindgen; testing it needs the browser too).
set -euo pipefail

browser=true
[ "${1:-}" = --no-browser ] && browser=false

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '  %s\n' "$*"; }

# ---- Rust target ---------------------------------------------------------------
# The standard library for the target is in the toolchain's sysroot (this
# works for a rustup toolchain and for any other).
if compgen -G "$(rustc --print sysroot)/lib/rustlib/wasm32-unknown-unknown/lib/libcore-*.rlib" >/dev/null; then
    step "wasm32-unknown-unknown: installed"
else
    if ! command -v rustup >/dev/null 2>&1; then
        echo "error: the wasm32-unknown-unknown target is missing and rustup is not here to add it" >&2
        exit 1
    fi
    step "wasm32-unknown-unknown: adding it (rustup target add)"
    rustup target add wasm32-unknown-unknown
fi

# ---- Chromium and chromedriver -------------------------------------------------
if ! $browser; then
    step "chromium: not needed (--no-browser)"
elif [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    step "chromium and chromedriver: installed"
else
    step "chromium, chromedriver: installing (apt-get install chromium chromium-driver)"
    sudo=()
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo=(sudo)
        else
            echo "error: installing chromium needs root (or sudo): apt-get install chromium chromium-driver" >&2
            exit 1
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "error: no apt-get here; install Chromium and its chromedriver of the same version, at /usr/bin/chromium and /usr/bin/chromedriver" >&2
        exit 1
    fi
    "${sudo[@]}" apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium chromium-driver
fi
$browser && step "$(/usr/bin/chromium --version 2>/dev/null | head -1); $(/usr/bin/chromedriver --version 2>/dev/null | head -1 | cut -d' ' -f1-2)"

# ---- wasm-bindgen-cli ------------------------------------------------------------
# The version of the `wasm-bindgen` package in Cargo.lock (the one entry
# named exactly that; wasm-bindgen-test pins it with `=`).
want=$(awk '
    $0 == "[[package]]" { name = "" }
    $1 == "name" && $3 == "\"wasm-bindgen\"" { name = "wasm-bindgen" }
    $1 == "version" && name == "wasm-bindgen" { gsub(/"/, "", $3); print $3; exit }
' Cargo.lock)
if [ -z "$want" ]; then
    echo "error: no wasm-bindgen in Cargo.lock (is dak-core's wasm32 dev-dependency on wasm-bindgen-test gone?)" >&2
    exit 1
fi
have=$(wasm-bindgen-test-runner --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" = "$want" ]; then
    step "wasm-bindgen-test-runner $have: installed"
else
    if [ -n "$have" ]; then
        step "wasm-bindgen-test-runner: $have installed, Cargo.lock has $want; installing $want (cargo install, a few minutes)"
    else
        step "wasm-bindgen-test-runner: installing wasm-bindgen-cli $want (cargo install, a few minutes)"
    fi
    if ! cargo install wasm-bindgen-cli --version "$want" --locked --force; then
        # --locked uses the lock file published with wasm-bindgen-cli; a
        # registry mirror that lacks one of its exact versions cannot serve
        # it, and then the newest compatible versions have to do.
        echo "warning: 'cargo install wasm-bindgen-cli --version $want --locked' failed; trying again without --locked" >&2
        cargo install wasm-bindgen-cli --version "$want" --force
    fi
    have=$(wasm-bindgen-test-runner --version 2>/dev/null | awk '{print $2}' || true)
    if [ "$have" != "$want" ]; then
        echo "error: wasm-bindgen-test-runner on PATH is '${have:-missing}', not $want (is ~/.cargo/bin on PATH, ahead of other copies?)" >&2
        exit 1
    fi
fi
