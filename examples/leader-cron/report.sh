#!/bin/sh
# The hourly job, run by one node per hour. Called while holding the governor's only slot, so
# reading and writing the shared record cannot race with another node. Usage: report.sh IDENTITY
set -eu
identity=${1:?usage: report.sh IDENTITY}
shared=world/shared
hour=$(date -u +%Y-%m-%dT%H)
mkdir -p "$shared"
if [ -f "$shared/last_run" ] && [ "$(cut -d' ' -f1 "$shared/last_run")" = "$hour" ]; then
  echo "skipped: the $hour report was made by $(cut -d' ' -f2 "$shared/last_run")"
  exit 0
fi
echo "$hour report made by $identity" >> "$shared/reports.log"
echo "$hour $identity" > "$shared/last_run.tmp"
mv "$shared/last_run.tmp" "$shared/last_run"
echo "made the $hour report"
