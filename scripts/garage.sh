#!/usr/bin/env bash
# Makes sure the S3-compatible object store that the media tests use is up:
# Garage (https://garagehq.deuxfleurs.fr), one node on loopback, with a
# bucket and a key for the tests. Installs Garage from crates.io the first
# time (`cargo install garage`, about 20 minutes on two cores; later runs
# find it in ~/.cargo/bin). Why Garage: docs/OPERATIONS.md, "Media".
#
#   scripts/garage.sh            # start (or find) it, then print its settings
#
# Skipped when DAK_TEST_S3_ENDPOINT points elsewhere (then give
# DAK_TEST_S3_BUCKET, DAK_TEST_S3_KEY_ID and DAK_TEST_S3_SECRET too).
set -euo pipefail

GARAGE_VERSION=2.5.0
# The test key and bucket: fixed, so the tests need no state from here.
KEY_ID=GK0dac0000000000000000001
SECRET=dac0000000000000000000000000000000000000000000000000000000000001
BUCKET=dak-test-media
S3_PORT=3900
RPC_PORT=3901

if [ -n "${DAK_TEST_S3_ENDPOINT:-}" ]; then
    echo "S3: using DAK_TEST_S3_ENDPOINT"
    exit 0
fi

wait_port() { # host port seconds
    for _ in $(seq 1 "$3"); do
        if (echo >"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
        sleep 1
    done
    return 1
}

export PATH="$HOME/.cargo/bin:$PATH"
if ! garage --version 2>/dev/null | grep -q "$GARAGE_VERSION"; then
    echo "S3: installing Garage $GARAGE_VERSION from crates.io (once; about 20 minutes on two cores)"
    cargo install garage --locked --version "$GARAGE_VERSION" --quiet
fi

dir="${DAK_GARAGE_DIR:-$HOME/.cache/dak-garage}"
config="$dir/garage.toml"
mkdir -p "$dir/meta" "$dir/data"
if [ ! -f "$config" ]; then
    cat >"$config" <<EOF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$RPC_PORT"
rpc_public_addr = "127.0.0.1:$RPC_PORT"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$S3_PORT"
root_domain = ".s3.garage.localhost"
EOF
fi
g() { garage -c "$config" "$@"; }

if wait_port 127.0.0.1 "$S3_PORT" 1; then
    echo "S3: Garage up on 127.0.0.1:$S3_PORT"
else
    echo "S3: Garage down; starting it"
    nohup garage -c "$config" server >"$dir/garage.log" 2>&1 &
    wait_port 127.0.0.1 "$S3_PORT" 30 || {
        echo "error: Garage did not come up on 127.0.0.1:$S3_PORT; see $dir/garage.log" >&2
        exit 1
    }
fi

# One node with a role, then the key and the bucket; each step once.
for _ in $(seq 1 30); do
    g status >/dev/null 2>&1 && break
    sleep 1
done
if g status 2>/dev/null | grep -q "NO ROLE ASSIGNED"; then
    node=$(g node id -q | cut -d@ -f1)
    g layout assign -z dc1 -c 1G "$node" >/dev/null
    version=$(g layout show 2>/dev/null | sed -n 's/.*apply --version \([0-9]*\).*/\1/p' | head -1)
    g layout apply --version "${version:-1}" >/dev/null
fi
if ! g key info "$KEY_ID" >/dev/null 2>&1; then
    g key import --yes -n dak-test "$KEY_ID" "$SECRET" >/dev/null
fi
if ! g bucket info "$BUCKET" >/dev/null 2>&1; then
    g bucket create "$BUCKET" >/dev/null
fi
g bucket allow --read --write --owner "$BUCKET" --key "$KEY_ID" >/dev/null
echo "S3: bucket $BUCKET on http://127.0.0.1:$S3_PORT ready"
