#!/bin/sh
# A Nagios plugin: how long until CERT expires.
#   check_cert.sh CERT WARN_DAYS CRITICAL_DAYS
# OK (0) with more than WARN_DAYS left, WARNING (1) with fewer, CRITICAL (2) with fewer than
# CRITICAL_DAYS or expired, UNKNOWN (3) when the file is missing or not a certificate.
set -u
cert=$1
warn=$2
crit=$3
for n in "$warn" "$crit"; do
  case "$n" in
    ''|*[!0-9]*) echo "UNKNOWN: thresholds must be whole days, not '$n'"; exit 3 ;;
  esac
done
if [ ! -f "$cert" ]; then
  echo "UNKNOWN: $cert not found"
  exit 3
fi
if ! end=$(openssl x509 -noout -enddate -in "$cert" 2>/dev/null); then
  echo "UNKNOWN: $cert is not a PEM certificate"
  exit 3
fi
end=${end#notAfter=}
if ! end_epoch=$(date -d "$end" +%s 2>/dev/null); then
  echo "UNKNOWN: cannot read the expiry date '$end'"
  exit 3
fi
days_left=$(( (end_epoch - $(date +%s)) / 86400 ))
perf="days_left=${days_left};${warn};${crit};0"
if [ "$days_left" -lt "$crit" ]; then
  echo "CRITICAL: $cert expires in $days_left days ($end)|$perf"
  exit 2
elif [ "$days_left" -lt "$warn" ]; then
  echo "WARNING: $cert expires in $days_left days ($end)|$perf"
  exit 1
fi
echo "OK: $cert expires in $days_left days ($end)|$perf"
exit 0
