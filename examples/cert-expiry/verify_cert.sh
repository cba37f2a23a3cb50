#!/bin/sh
# Checks a freshly renewed certificate before it counts: signed by the CA, matching its key, and
# valid for more than MIN_DAYS (a renewal that yields a short-lived certificate would otherwise
# renew again at once, forever).
#   verify_cert.sh DIR MIN_DAYS
set -eu
dir=$1
min_days=$2
case "$min_days" in
  ''|*[!0-9]*) echo "MIN_DAYS must be a whole number, not '$min_days'" >&2; exit 2 ;;
esac
cert=$dir/service.crt
key=$dir/service.key
openssl verify -CAfile world/ca/ca.crt "$cert" >/dev/null 2>&1 || { echo "$cert is not signed by the CA"; exit 1; }
cert_pub=$(openssl x509 -noout -pubkey -in "$cert")
key_pub=$(openssl pkey -pubout -in "$key" 2>/dev/null) || { echo "cannot read $key"; exit 1; }
[ "$cert_pub" = "$key_pub" ] || { echo "$cert does not match $key"; exit 1; }
if ! openssl x509 -noout -checkend $((min_days * 86400)) -in "$cert" >/dev/null; then
  echo "$cert expires within $min_days days"
  exit 1
fi
echo "$cert verified"
