#!/bin/sh
# Succeeds while the simulated container runs the image:tag in manifest.json.
set -eu
image=$(sed -n 's/.*"image"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' manifest.json)
tag=$(sed -n 's/.*"tag"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' manifest.json)
[ -f world/container ] || { echo "not running"; exit 1; }
[ "$(cat world/container)" = "${image}:${tag}" ] || { echo "running $(cat world/container)"; exit 1; }
echo "running ${image}:${tag}"
