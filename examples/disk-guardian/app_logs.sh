#!/bin/sh
# Stand-in for an application writing logs into the volume: appends 64 KiB to app.log and
# rotates it to app.log.<timestamp> once it reaches 256 KiB.
set -eu
mkdir -p world/volume
log=world/volume/app.log
head -c 65536 /dev/zero | tr '\0' 'x' >> "$log"
if [ "$(wc -c < "$log")" -ge 262144 ]; then
  mv "$log" "world/volume/app.log.$(date +%Y%m%d%H%M%S%N)"
fi
