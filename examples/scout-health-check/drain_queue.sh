#!/bin/sh
# Remediation (stand-in for restarting a stuck consumer): the queue drains to 0.
set -eu
mkdir -p world
echo "$(date +%s) drained $(cat world/queue_depth 2>/dev/null || echo '?') messages" >> world/remediation.log
echo 0 > world/queue_depth.tmp
mv world/queue_depth.tmp world/queue_depth
echo "queue drained"
