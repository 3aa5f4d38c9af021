#!/usr/bin/env bash
# Builds Dak Web into one directory that `dak server --web DIR` serves:
# the client core for the browser (crates/dak-web, wasm32, through
# wasm-bindgen's `--target web` glue) and the page from web/.
#
#   scripts/web-build.sh [--dev] [--out DIR]
#
#   --dev      the dev profile (what the tests use: it shares its build with
#              scripts/wasm-test.sh); default: release, for people
#   --out DIR  where the bundle goes (default target/web; target/web-dev
#              with --dev; under $CARGO_TARGET_DIR when it is set; a
#              relative DIR is taken from the repository's root)
#
# It installs what it needs first, if missing (scripts/wasm-tools.sh
# --no-browser): the wasm32 target and wasm-bindgen-cli. It prints each
# file's size, gzipped, and the bundle's SHA-256 as the server computes it.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

profile=release
out=
while [ $# -gt 0 ]; do
    case "$1" in
    --dev) profile=dev ;;
    --out)
        [ $# -ge 2 ] || { echo "error: --out needs a directory" >&2; exit 2; }
        out="$2"
        shift
        ;;
    -h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
target=${CARGO_TARGET_DIR:-target}
[ -n "$out" ] || { [ $profile = dev ] && out=$target/web-dev || out=$target/web; }
dir=$([ $profile = dev ] && echo debug || echo release)

cargo_flags=()
case "${CI:-}" in true | 1 | yes) cargo_flags+=(--locked) ;; esac

bindgen_flags=()
if [ $profile = release ]; then
    # What people are served is the same bytes whoever builds this commit
    # with the same toolchain, wherever: the paths panics name are the
    # repository's and the registry's, not this machine's (they replace
    # .cargo/config.toml's wasm32 rustflags, so its flag is repeated), and
    # the function names (0.5 MB, for debuggers) are left out.
    # (The last matching prefix wins: the target directory, where generated
    # code such as dak-proto's lives, may be inside the checkout.)
    cargo_home=${CARGO_HOME:-$HOME/.cargo}
    mkdir -p "$target"
    target_abs=$(cd "$target" && pwd)
    export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="-C debuginfo=line-tables-only --remap-path-prefix=$PWD=/dak --remap-path-prefix=$cargo_home=/cargo --remap-path-prefix=$target_abs=/target"
    bindgen_flags+=(--remove-name-section)
fi

scripts/wasm-tools.sh --no-browser
echo "-- cargo build -p dak-web --target wasm32-unknown-unknown --profile $profile"
cargo build ${cargo_flags[@]+"${cargo_flags[@]}"} -p dak-web --target wasm32-unknown-unknown --profile "$profile"

stage=$(mktemp -d "${TMPDIR:-/tmp}/dak-web.XXXXXX")
trap 'rm -rf "$stage"' EXIT
wasm-bindgen --target web --no-typescript ${bindgen_flags[@]+"${bindgen_flags[@]}"} --out-dir "$stage" \
    "$target/wasm32-unknown-unknown/$dir/dak_web.wasm"
cp web/index.html web/app.js web/worker.js web/i18n.js web/style.css "$stage"/
# The directory is replaced whole; refuse to replace one that is not a
# previous build (a mistyped --out must not delete someone's files).
if [ -e "$out" ] && [ -n "$(ls -A "$out" 2>/dev/null)" ] && [ ! -e "$out/dak_web_bg.wasm" ]; then
    echo "error: $out exists and is not a web client build; not replacing it" >&2
    exit 1
fi
chmod 755 "$stage" # mktemp's 0700 would hide it from a server run as another user
mkdir -p "$(dirname "$out")"
rm -rf "$out"
mv "$stage" "$out"
trap - EXIT

echo "-- $out ($(rustc --version), wasm-bindgen $(wasm-bindgen --version | cut -d' ' -f2))"
total=0
total_gz=0
for f in "$out"/*; do
    size=$(wc -c <"$f" | tr -d ' ')
    gz=$(gzip -9 -c "$f" | wc -c | tr -d ' ')
    total=$((total + size))
    total_gz=$((total_gz + gz))
    printf '  %-22s %9d bytes  %9d gzipped\n' "$(basename "$f")" "$size" "$gz"
done
printf '  %-22s %9d bytes  %9d gzipped\n' total "$total" "$total_gz"
# The bundle hash, as dak-server's web.rs computes it: per file in name
# order, its name's length, name, length and bytes (lengths as u64 LE).
python3 - "$out" <<'PY'
import hashlib, os, struct, sys
d = sys.argv[1]
h = hashlib.sha256()
for name in sorted(os.listdir(d)):
    data = open(os.path.join(d, name), "rb").read()
    h.update(struct.pack("<Q", len(name.encode())) + name.encode())
    h.update(struct.pack("<Q", len(data)) + data)
print("  bundle sha256", h.hexdigest())
PY
