#!/bin/sh
# Stand-in for a relay driver: `relay.sh on|off` sets the relay, `relay.sh status` checks that it
# answers. Its position is kept in world/relay; while world/relay-stuck exists the relay does not
# answer, so every command fails.
set -eu
mkdir -p world
if [ -e world/relay-stuck ]; then
  echo "relay not responding" >&2
  exit 1
fi
case "${1:-}" in
  on|off)
    printf '%s\n' "$1" > world/relay.new
    mv world/relay.new world/relay
    echo "relay $1"
    ;;
  status)
    echo "relay $(cat world/relay 2>/dev/null || echo unknown)"
    ;;
  *)
    echo "usage: relay.sh on|off|status" >&2
    exit 2
    ;;
esac
