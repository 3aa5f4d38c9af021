#!/usr/bin/env bash
# Builds the dak binary (release) and the web client (scripts/web-build.sh,
# into target/web), and runs the server with both: the WebSocket and the
# web client on one listener, https://127.0.0.1:7443/ by default.
#
#   scripts/run-server.sh [SERVER ARGS...]
#
# Arguments go to `dak server`; `dak server --help` lists them. The server
# keeps its data in ./dak-data (relative to where you run this) by default.
# DAK_NO_WEB=1 skips the web client (its build needs the wasm32 target and
# wasm-bindgen-cli, which scripts/wasm-tools.sh installs the first time).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        cat >&2 <<'MSG'
Rust is installed but cargo is not on your PATH. Run

    . "$HOME/.cargo/env"

(or open a new terminal), then run this script again.
MSG
    else
        cat >&2 <<'MSG'
cargo (the Rust toolchain) was not found. Install it with rustup:

    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh
    . "$HOME/.cargo/env"

(see https://rustup.rs for other platforms), then run this script again.
MSG
    fi
    exit 1
fi

# Rust links through the system C compiler, and SQLite and ring compile C.
if ! command -v cc >/dev/null 2>&1 && ! command -v gcc >/dev/null 2>&1 &&
    ! command -v clang >/dev/null 2>&1; then
    cat >&2 <<'MSG'
No C compiler found (cc, gcc or clang); building Dak needs one. Install one:

    Debian/Ubuntu:  sudo apt-get install build-essential
    Fedora:         sudo dnf install gcc
    macOS:          xcode-select --install
MSG
    exit 1
fi

echo "==> building dak (release; the first build takes a few minutes)" >&2
cargo build --release -p dak --manifest-path "$root/Cargo.toml"

target="${CARGO_TARGET_DIR:-$root/target}"
# cargo reads a relative CARGO_TARGET_DIR against the current directory.
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac
bin="$target/release/dak"
web=()
if [ "${DAK_NO_WEB:-}" != 1 ]; then
    echo "==> building the web client (release; scripts/web-build.sh)" >&2
    "$root/scripts/web-build.sh" --out "$target/web" >&2
    web=(--web "$target/web")
fi
echo "==> starting: $bin server ${web[*]} $*" >&2
exec "$bin" server ${web[@]+"${web[@]}"} "$@"
