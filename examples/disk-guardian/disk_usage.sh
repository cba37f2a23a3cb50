#!/bin/sh
# Prints how full a directory is against a pretend capacity, in Choria's metric JSON:
#   disk_usage.sh DIR CAPACITY_KIB
# A real volume would use `df --output=pcent,avail MOUNTPOINT` instead.
set -eu
dir=$1
capacity_kib=$2
case "$capacity_kib" in
  ''|*[!0-9]*|0) echo "capacity must be a positive number of KiB, not '$capacity_kib'" >&2; exit 2 ;;
esac
mkdir -p "$dir"
used_kib=$(du -sk "$dir" | cut -f1)
awk -v used="$used_kib" -v cap="$capacity_kib" 'BEGIN {
  printf "{\"metrics\": {\"used_kib\": %d, \"capacity_kib\": %d, \"used_percent\": %.1f}}\n", used, cap, used * 100 / cap
}'
