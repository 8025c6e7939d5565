#!/bin/sh
# Creates the secret files an overlay's secretGenerator reads, in deploy/k8s/overlays/OVERLAY/secrets/
# (git-ignored, mode 0600). Keys are made once and never overwritten: the Noise key must stay the
# same for as long as the tailnet lives (clients pin it). The database password and the relays'
# certificate are yours: pass them, or put the files there yourself.
#   deploy/k8s/make-secrets.sh single [--postgres-password-file F] [--derp-cert F --derp-key F]
set -eu
usage() { echo "usage: $0 OVERLAY [--postgres-password-file FILE] [--derp-cert FILE --derp-key FILE]" >&2; exit 2; }
[ $# -ge 1 ] || usage
overlay=$1; shift
dir=$(dirname "$0")/overlays/$overlay
[ -f "$dir/kustomization.yaml" ] || { echo "Error: no overlay $dir" >&2; exit 1; }
pgfile= cert= key=
while [ $# -gt 0 ]; do
  case $1 in
    --postgres-password-file) [ $# -ge 2 ] || usage; pgfile=$2; shift 2 ;;
    --derp-cert) [ $# -ge 2 ] || usage; cert=$2; shift 2 ;;
    --derp-key) [ $# -ge 2 ] || usage; key=$2; shift 2 ;;
    *) usage ;;
  esac
done
umask 077
mkdir -p "$dir/secrets"
s=$dir/secrets
hex32() { od -An -tx1 -N32 /dev/urandom | tr -d ' \n'; }
[ -s "$s/noise_private.key" ] || printf 'privkey:%s' "$(hex32)" > "$s/noise_private.key"
[ -s "$s/mesh_key" ] || printf '%s' "$(hex32)" > "$s/mesh_key"
[ -z "$pgfile" ] || cp "$pgfile" "$s/postgres_password"
[ -z "$cert" ] || cp "$cert" "$s/derp.crt"
[ -z "$key" ] || cp "$key" "$s/derp.key"
missing=
for f in postgres_password derp.crt derp.key; do [ -s "$s/$f" ] || missing="$missing $f"; done
if [ -n "$missing" ]; then
  echo "$s: still missing:$missing (the overlay renders once they are there)" >&2
  exit 1
fi
echo "$s: ready"
