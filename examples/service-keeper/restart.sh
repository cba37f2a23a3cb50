#!/bin/sh
# Stand-in for `systemctl restart UNIT && systemctl is-active --quiet UNIT`: "starts" the service
# by writing world/UNIT.state, unless world/UNIT.broken exists (a service that will not start).
set -eu
unit=${1:?usage: restart.sh UNIT}
case "$unit" in *[!A-Za-z0-9_.@-]*|.*) echo "bad unit name: $unit" >&2; exit 2 ;; esac
mkdir -p world
echo "$(date +%s) restart" >> "world/$unit.log"
if [ -e "world/$unit.broken" ]; then
  echo "$unit failed to start"
  exit 1
fi
echo running > "world/$unit.state.tmp"
mv "world/$unit.state.tmp" "world/$unit.state"
echo "$unit restarted"
