#!/bin/sh
# Stand-in for the web application: `app.sh start WORLD` refuses to start without the database
# (WORLD/db.running) and records WORLD/app.running; `stop` removes it; `status` succeeds while
# it runs.
set -eu
world=$2
mkdir -p "$world"
case "$1" in
  start)
    [ -f "$world/db.running" ] || { echo "cannot connect to the database" >&2; exit 1; }
    date +%s > "$world/app.running"
    echo "web application started"
    ;;
  stop)
    rm -f "$world/app.running"
    echo "web application stopped"
    ;;
  status)
    [ -f "$world/app.running" ] || { echo "web application is not running"; exit 1; }
    echo "web application is running"
    ;;
  *)
    echo "usage: app.sh start|stop|status WORLD" >&2
    exit 2
    ;;
esac
