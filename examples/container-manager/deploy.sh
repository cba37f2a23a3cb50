#!/bin/sh
# "Deploys" the container in manifest.json: records image:tag in world/container.
set -eu
image=$(sed -n 's/.*"image"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' manifest.json)
tag=$(sed -n 's/.*"tag"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' manifest.json)
if [ -z "$image" ] || [ -z "$tag" ]; then
  echo "manifest.json needs an image and a tag" >&2
  exit 1
fi
mkdir -p world
echo "${image}:${tag}" > world/container
echo "deployed ${image}:${tag}"
