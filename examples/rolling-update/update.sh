#!/bin/sh
# Stand-in update: installs the version named in release.json (records it in
# world/installed_version), then checks the node is healthy with it. Does nothing when that
# version is already installed; fails when world/break exists.
set -eu
version=$(sed -n 's/.*"version"[[:space:]]*:[[:space:]]*"\([A-Za-z0-9._-]*\)".*/\1/p' release.json)
[ -n "$version" ] || { echo "release.json names no version"; exit 1; }
mkdir -p world
if [ "$(cat world/installed_version 2>/dev/null)" = "$version" ]; then
  echo "already at $version"
  exit 0
fi
echo "$(date +%s) updating to $version" >> world/updates.log
sleep 1  # the install and restart
if [ -e world/break ]; then
  echo "health check failed after updating to $version"
  exit 1
fi
echo "$version" > world/installed_version.tmp
mv world/installed_version.tmp world/installed_version
echo "$(date +%s) updated to $version" >> world/updates.log
echo "updated to $version"
