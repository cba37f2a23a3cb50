#!/bin/sh
# Frees space in DIR by removing rotated logs (app.log.*); the live app.log is kept. Fails when
# there is nothing to remove: the machine then moves to `critical` for a human to look at.
#   cleanup.sh DIR
set -eu
dir=$1
removed=0
for old in "$dir"/app.log.*; do
  [ -f "$old" ] || continue
  rm -f -- "$old"
  echo "removed $old"
  removed=$((removed + 1))
done
if [ "$removed" -eq 0 ]; then
  echo "nothing to clean up in $dir"
  exit 1
fi
