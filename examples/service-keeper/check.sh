#!/bin/sh
# Stand-in for `systemctl is-active --quiet UNIT`: the service runs when world/UNIT.state says so.
set -eu
unit=${1:?usage: check.sh UNIT}
case "$unit" in *[!A-Za-z0-9_.@-]*|.*) echo "bad unit name: $unit" >&2; exit 2 ;; esac
state=$(cat "world/$unit.state" 2>/dev/null || echo missing)
echo "$unit: $state"
[ "$state" = running ]
