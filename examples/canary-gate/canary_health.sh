#!/bin/sh
# Stand-in health check of the canary: healthy while its error rate (percent, read from
# world/error_rate, 0 when missing) is at most MAX_ERROR_RATE. A real gate would query the
# service's metrics instead, for example a Prometheus query on its 5xx rate.
#   canary_health.sh MAX_ERROR_RATE
set -eu
max=$1
rate=$(cat world/error_rate 2>/dev/null || echo 0)
for n in "$max" "$rate"; do
  case "$n" in
    ''|*[!0-9.]*|*.*.*) echo "not a rate: '$n'" >&2; exit 2 ;;
  esac
done
if awk -v rate="$rate" -v max="$max" 'BEGIN { exit !(rate > max) }'; then
  echo "error rate ${rate}% is above ${max}%"
  exit 1
fi
echo "error rate ${rate}% (at most ${max}%)"
