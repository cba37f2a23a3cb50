#!/bin/sh
# Stand-in for an ACME client or an internal CA: issues DIR/service.crt and DIR/service.key for
# COMMON_NAME, valid DAYS days, signed by a throw-away CA kept in world/ca (created on first
# use). The new pair replaces the old one only once both are complete.
# `touch world/ca/offline` makes the CA unreachable, to try the failure path.
#   renew_cert.sh DIR COMMON_NAME DAYS
set -eu
dir=$1
cn=$2
days=$3
case "$days" in
  ''|*[!0-9]*|0) echo "DAYS must be a positive whole number, not '$days'" >&2; exit 2 ;;
esac
case "$cn" in
  *[!A-Za-z0-9.-]*|'') echo "COMMON_NAME must be a host name, not '$cn'" >&2; exit 2 ;;
esac
umask 077
ca=world/ca
mkdir -p "$ca" "$dir"
if [ -e "$ca/offline" ]; then
  echo "cannot reach the CA: $ca/offline exists" >&2
  exit 1
fi
if [ ! -f "$ca/ca.crt" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -subj "/CN=machinery cookbook stand-in CA" -keyout "$ca/ca.key.new" -out "$ca/ca.crt.new" 2>/dev/null
  mv "$ca/ca.key.new" "$ca/ca.key"
  mv "$ca/ca.crt.new" "$ca/ca.crt"
fi
work=$(mktemp -d "$dir/.renew.XXXXXX")
trap 'rm -rf "$work"' EXIT
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$cn" \
  -keyout "$work/service.key" -out "$work/service.csr" 2>/dev/null
openssl x509 -req -in "$work/service.csr" -CA "$ca/ca.crt" -CAkey "$ca/ca.key" -CAcreateserial \
  -days "$days" -out "$work/service.crt" 2>/dev/null
chmod 644 "$work/service.crt"
# The key first: a reader that sees the new certificate always finds its key.
mv "$work/service.key" "$dir/service.key"
mv "$work/service.crt" "$dir/service.crt"
echo "issued $dir/service.crt for $cn, valid $days days"
