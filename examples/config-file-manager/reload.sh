#!/bin/sh
# Stand-in for `demo-app --check-config FILE && systemctl reload demo-app`: refuses a file
# without a positive number of workers, else logs the reload to world/reloads.log.
set -eu
file=${1:?usage: reload.sh FILE}
workers=$(sed -n 's/^workers = \([0-9][0-9]*\)$/\1/p' "$file")
if [ -z "$workers" ] || [ "$workers" -lt 1 ]; then
  echo "refusing to reload: $file needs workers = N (N >= 1)"
  exit 1
fi
echo "$(date +%s) reloaded with $workers workers" >> world/reloads.log
echo "demo-app reloaded with $workers workers"
