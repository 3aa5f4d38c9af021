#!/usr/bin/env bash
# Makes sure the PostgreSQL and NATS that the cluster-mode tests use are up,
# and the S3-compatible store the media tests use (scripts/garage.sh),
# starting the local ones if they are not. Skips a service whose test URL
# points elsewhere (DAK_TEST_POSTGRES_URL, DAK_TEST_NATS_URL,
# DAK_TEST_S3_ENDPOINT).
set -euo pipefail

wait_port() { # host port seconds
    for _ in $(seq 1 "$3"); do
        if (echo >"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
        sleep 1
    done
    return 1
}

if [ -z "${DAK_TEST_POSTGRES_URL:-}" ]; then
    if wait_port 127.0.0.1 5432 1; then
        echo "PostgreSQL: up on 127.0.0.1:5432"
    else
        echo "PostgreSQL: down; starting it"
        if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
            for version in /etc/postgresql/*; do
                pg_ctlcluster --skip-systemctl-redirect "$(basename "$version")" main start || true
            done
        else
            echo "error: PostgreSQL is not installed; install it (Debian: apt-get install postgresql) or set DAK_TEST_POSTGRES_URL" >&2
            exit 1
        fi
        wait_port 127.0.0.1 5432 30 || { echo "error: PostgreSQL did not come up on 127.0.0.1:5432" >&2; exit 1; }
        echo "PostgreSQL: started"
    fi
else
    echo "PostgreSQL: using DAK_TEST_POSTGRES_URL"
fi

if [ -z "${DAK_TEST_NATS_URL:-}" ]; then
    if wait_port 127.0.0.1 4222 1; then
        echo "NATS: up on 127.0.0.1:4222"
    else
        echo "NATS: down; starting it"
        server=$(command -v nats-server || echo /usr/sbin/nats-server)
        if [ ! -x "$server" ]; then
            echo "error: nats-server is not installed; install it (Debian: apt-get install nats-server) or set DAK_TEST_NATS_URL" >&2
            exit 1
        fi
        mkdir -p /var/lib/nats-server 2>/dev/null || true
        start-stop-daemon --start --oknodo --background --exec "$server" -- \
            -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
        wait_port 127.0.0.1 4222 30 || { echo "error: NATS did not come up on 127.0.0.1:4222" >&2; exit 1; }
        echo "NATS: started"
    fi
else
    echo "NATS: using DAK_TEST_NATS_URL"
fi

"$(dirname "$0")/garage.sh"
