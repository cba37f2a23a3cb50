#!/bin/sh
# Stand-in for the installed application's health check: healthy while DIR/status says "ok".
# A real check would ask the running service, for example `curl -fsS localhost:8080/healthz`.
#   healthcheck.sh DIR
set -eu
dir=$1
version=$(cat "$dir/VERSION" 2>/dev/null || echo unknown)
status=$(cat "$dir/status" 2>/dev/null || echo missing)
if [ "$status" != ok ]; then
  echo "app $version is unhealthy: $status"
  exit 1
fi
echo "app $version is healthy"
