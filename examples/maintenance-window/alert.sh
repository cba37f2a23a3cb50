#!/bin/sh
# Stand-in alert (a pager, a chat webhook): appends to world/alerts.log.
set -eu
mkdir -p world
echo "$(date +%s) ${1:-this node} is unhealthy" >> world/alerts.log
echo "alert sent"
