#!/bin/sh
# Air is good when world/temperature (default 20) is at or below hvac.json's target.
set -eu
temperature=20
[ -f world/temperature ] && temperature=$(cat world/temperature)
target=$(sed -n 's/.*"target"[[:space:]]*:[[:space:]]*\([0-9][0-9]*\).*/\1/p' hvac.json)
echo "temperature ${temperature}, target ${target:-unset}"
[ -n "$target" ] && [ "$temperature" -le "$target" ]
