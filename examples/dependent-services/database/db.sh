#!/bin/sh
# Stand-in for a database service: `db.sh start WORLD` "starts" it by creating WORLD/db.running
# (failing while WORLD/db.broken exists), `db.sh status WORLD` succeeds while it runs.
# Remove WORLD/db.running to simulate a crash.
set -eu
world=$2
mkdir -p "$world"
case "$1" in
  start)
    if [ -e "$world/db.broken" ]; then
      echo "database does not start: $world/db.broken exists" >&2
      exit 1
    fi
    date +%s > "$world/db.running"
    echo "database started"
    ;;
  status)
    [ -f "$world/db.running" ] || { echo "database is not running"; exit 1; }
    echo "database is running"
    ;;
  *)
    echo "usage: db.sh start|status WORLD" >&2
    exit 2
    ;;
esac
