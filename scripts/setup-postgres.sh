#!/usr/bin/env bash
# Installs PostgreSQL's server binaries from Debian's packages for the tests and benchmarks of
# the shared store (`log.backend = "postgres"`). Nothing is started here: each test starts its
# own throwaway cluster (initdb in a temporary directory, as an unprivileged user, on a free
# loopback port) and removes it when done (triage_testkit::postgres). Serving on the embedded
# file log needs none of this.
# Idempotent: does nothing when an initdb is already under /usr/lib/postgresql.
set -euo pipefail
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || [ -x "${TRIAGE_PG_BIN:-/nonexistent}/initdb" ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "setup: PostgreSQL is missing and installing it needs root: apt-get install postgresql (or set TRIAGE_PG_BIN to a directory holding initdb, pg_ctl and postgres)" >&2
  exit 1
fi
echo "setup: installing PostgreSQL from Debian's packages" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq postgresql >/dev/null
# The package starts a cluster of its own; the tests never use it.
if command -v pg_ctlcluster >/dev/null; then
  for conf in /etc/postgresql/*/main; do
    [ -d "$conf" ] && pg_ctlcluster "$(basename "$(dirname "$conf")")" main stop 2>/dev/null || true
  done
fi
echo "setup: postgresql ready" >&2
