#!/usr/bin/env bash
# Makes sure a local PostgreSQL (Debian's `postgresql` package) is running and has a superuser
# role for the calling user, then prints a postgres:// URL over the Unix socket (no password).
# The test suite creates one database per test binary under that role.
#
#   url=$(scripts/local-postgres.sh)
#
# Starts the first cluster with pg_ctlcluster (no systemd needed). Needs root or sudo the
# first time (to start the cluster and create the role).
set -euo pipefail

die() { printf 'local-postgres.sh: error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root (or sudo) to run: $*"; fi
}
as_postgres() { as_root runuser -u postgres -- "$@"; }

command -v pg_lsclusters >/dev/null 2>&1 \
  || die "PostgreSQL is not installed: apt-get install -y postgresql"

read -r version cluster port status _ < <(pg_lsclusters --no-header | head -n 1) \
  || die "no PostgreSQL cluster: pg_createcluster 15 main"
if [ "$status" != "online" ]; then
  printf 'local-postgres.sh: starting PostgreSQL %s/%s\n' "$version" "$cluster" >&2
  # pg_ctlcluster prints notices on standard output ("Removed stale pid file."): they must
  # not end up in the caller's URL.
  as_root pg_ctlcluster "$version" "$cluster" start >&2
fi

socket_dir=/var/run/postgresql
user=$(id -un)
for _ in $(seq 1 50); do
  as_postgres psql -p "$port" -h "$socket_dir" -qAtc 'SELECT 1' >/dev/null 2>&1 && break
  sleep 0.2
done
if [ "$(as_postgres psql -p "$port" -h "$socket_dir" -qAtc "SELECT 1 FROM pg_roles WHERE rolname = '$user'")" != 1 ]; then
  as_postgres psql -p "$port" -h "$socket_dir" -qc "CREATE ROLE \"$user\" SUPERUSER LOGIN" >&2
fi
printf 'postgres://%s@%%2Fvar%%2Frun%%2Fpostgresql:%s/postgres\n' "$user" "$port"
