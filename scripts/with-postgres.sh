#!/usr/bin/env bash
# Run a command with a throwaway PostgreSQL cluster on a free local port, exported as
# TOKENLEDGER_TEST_POSTGRES_URL; the cluster is removed afterwards.
# Usage: scripts/with-postgres.sh make test
set -euo pipefail

find_bin() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/initdb" ] && { echo "$dir"; return 0; }
  done
  return 1
}

if ! PGBIN=$(find_bin); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing PostgreSQL from Debian's packages" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    PGBIN=$(find_bin)
  else
    echo "PostgreSQL is not installed (apt-get install postgresql)" >&2
    exit 1
  fi
fi

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
WORK=$(mktemp -d /tmp/tokenledger-pg.XXXXXX)
chmod 755 "$WORK"
RUN=()
if [ "$(id -u)" = 0 ]; then
  # PostgreSQL refuses to run as root: run the cluster as the packages' postgres user.
  id postgres >/dev/null 2>&1 || useradd --system --home "$WORK" postgres
  chown postgres "$WORK"
  RUN=(runuser -u postgres --)
fi

cleanup() {
  "${RUN[@]}" "$PGBIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

"${RUN[@]}" "$PGBIN/initdb" -D "$WORK/data" -U tokenledger -A trust -E UTF8 --no-locale >/dev/null
"${RUN[@]}" "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/log" -w -o \
  "-p $PORT -k $WORK -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
  start >/dev/null
"$PGBIN/createdb" -h 127.0.0.1 -p "$PORT" -U tokenledger tokenledger_test

export TOKENLEDGER_TEST_POSTGRES_URL="postgresql://tokenledger@127.0.0.1:$PORT/tokenledger_test"
echo "PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') at $TOKENLEDGER_TEST_POSTGRES_URL" >&2
"$@"
