#!/usr/bin/env bash
# Installs schemathesis (from PyPI, pinned) in a virtual environment at
# target/schemathesis, if it is not there yet: tests/bot.rs runs it against
# a live `dak bot serve` to test the API against its OpenAPI document.
#
#   scripts/schemathesis.sh     # prints the path of the schemathesis command
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
version=4.32.5
venv=target/schemathesis
if [ -x "$venv/bin/schemathesis" ] && "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$version"; then
    echo "$venv/bin/schemathesis"
    exit 0
fi
if ! python3 -m venv --help >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get install -y --no-install-recommends python3-venv >&2
    else
        echo "error: python3's venv module is missing (Debian: apt-get install python3-venv)" >&2
        exit 1
    fi
fi
rm -rf "$venv"
python3 -m venv "$venv" >&2
"$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version" >&2
echo "$venv/bin/schemathesis"
