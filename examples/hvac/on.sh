#!/bin/sh
# Switches the simulated HVAC unit on.
set -eu
mkdir -p world
echo on > world/hvac
echo "$(date +%s) on" >> world/hvac.log
