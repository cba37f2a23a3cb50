#!/bin/sh
# A Nagios plugin (stand-in): the depth of a message queue, read from world/queue_depth.
# Usage: check_queue.sh -w WARN -c CRIT. Exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
warn=100
crit=500
while [ $# -gt 0 ]; do
  case "$1" in
    -w) warn=${2:-}; shift 2 ;;
    -c) crit=${2:-}; shift 2 ;;
    *) echo "QUEUE UNKNOWN - unexpected argument $1"; exit 3 ;;
  esac
done
is_number() { case "$1" in ''|*[!0-9]*) return 1 ;; esac; }
is_number "$warn" && is_number "$crit" || { echo "QUEUE UNKNOWN - thresholds must be numbers"; exit 3; }
depth=$(cat world/queue_depth 2>/dev/null) || { echo "QUEUE UNKNOWN - world/queue_depth not found"; exit 3; }
is_number "$depth" || { echo "QUEUE UNKNOWN - depth is not a number"; exit 3; }
perf="depth=$depth;$warn;$crit;0"
if [ "$depth" -ge "$crit" ]; then
  echo "QUEUE CRITICAL - $depth messages|$perf"; exit 2
elif [ "$depth" -ge "$warn" ]; then
  echo "QUEUE WARNING - $depth messages|$perf"; exit 1
fi
echo "QUEUE OK - $depth messages|$perf"
