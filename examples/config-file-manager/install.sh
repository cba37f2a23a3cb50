#!/bin/sh
# Stand-in for installing the application's package: creates its configuration directory.
set -eu
mkdir -p world/etc
echo "demo-app installed"
