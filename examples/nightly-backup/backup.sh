#!/bin/sh
# "Backs up" the directory named in $1 (relative to the machine directory) into world/backups.
set -eu
mkdir -p world/backups "$1"
stamp=$(date +%Y%m%d%H%M%S)
tar -czf "world/backups/backup-$stamp.tgz" "$1"
echo "backed up $1 to world/backups/backup-$stamp.tgz"
