#!/bin/sh
# The test stack's stand-in for the `postgres` image's docker-entrypoint.sh (tests/cluster/images.py),
# as far as the chart's trial mode uses it: on an empty $PGDATA, initdb with $POSTGRES_USER as the
# superuser and $POSTGRES_PASSWORD (scram-sha-256 over TCP), create $POSTGRES_DB; then run the server.
# IPv4 only: the node agent's Service proxies hold IPv6 addresses of the host (docs/testing.md).
set -eu
: "${PGDATA:?PGDATA is not set}"
user="${POSTGRES_USER:-postgres}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is not set}"
    mkdir -p "$PGDATA"
    chmod 700 "$PGDATA"
    pwfile="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    initdb -D "$PGDATA" -U "$user" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "$pwfile"
    printf 'host all all all scram-sha-256\n' >> "$PGDATA/pg_hba.conf"
    db="${POSTGRES_DB:-$user}"
    if [ "$db" != postgres ]; then
        pg_ctl -D "$PGDATA" -o "-c listen_addresses= -c unix_socket_directories=/var/run/postgresql" -w start >/dev/null
        createdb -h /var/run/postgresql -U "$user" "$db"
        pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    fi
fi
if [ "${1:-}" = postgres ]; then
    shift
    exec postgres -D "$PGDATA" -c listen_addresses=0.0.0.0 -c unix_socket_directories=/var/run/postgresql "$@"
fi
exec "$@"
