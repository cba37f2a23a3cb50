#!/bin/sh
# Stand-in health check: healthy while world/healthy exists.
if [ -e world/healthy ]; then
  echo "healthy"
else
  echo "world/healthy is missing"
  exit 1
fi
