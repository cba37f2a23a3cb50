#!/bin/sh
# Switches the simulated HVAC unit off.
set -eu
mkdir -p world
echo off > world/hvac
echo "$(date +%s) off" >> world/hvac.log
