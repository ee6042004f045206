#!/usr/bin/env bash
# Builds Sigstore's RFC 3161 timestamp authority that integration tests run
# as a real TSA (internal/testtsa), once, from the module in test/tsa, and
# caches it:
#   $PROVENIX_TOOLS_DIR/tsa-2.1.3/timestamp-server
# (v2.1.4 and later need Go 1.27.) test/tsa/main.go serves upstream's REST
# API with the in-memory signer, without upstream's fixed-port (:2112)
# metrics listener; internal/testtsa runs it as `timestamp-server serve
# --host 127.0.0.1 --port P`. Its chain is at /api/v1/timestamp/certchain.
# Usage: scripts/tsa.sh build   build unless the cached binary exists
#        scripts/tsa.sh path    print the cached binary's path
set -euo pipefail

version=2.1.3
dir=${PROVENIX_TOOLS_DIR:-/var/cache/provenix-tools}/tsa-$version
bin=$dir/timestamp-server
root=$(cd "$(dirname "$0")/.." && pwd)

case ${1:-} in
path)
  echo "$bin"
  ;;
build)
  if [ -x "$bin" ]; then
    echo "tsa: using cached $bin" >&2
    exit 0
  fi
  echo "tsa: building timestamp-authority $version from its Go module (~1 min cold) into $dir" >&2
  if ! mkdir -p "$dir" 2>/dev/null || [ ! -w "$dir" ]; then
    echo "tsa: cannot write $dir; run as root or set PROVENIX_TOOLS_DIR to a writable directory (tests read it too)" >&2
    exit 1
  fi
  # Build into a temp dir and rename last, so an interrupted build never
  # leaves a binary that the skip check above would trust.
  tmp=$(mktemp -d "$dir/.build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  cd "$root/test/tsa"
  # GOWORK=off: a go.work above us must not pull this module into the main one.
  export GOWORK=off CGO_ENABLED=0 GOFLAGS="${TSA_GOFLAGS:--mod=readonly}"
  go build -buildvcs=false -trimpath -ldflags "-s -w" -o "$tmp/timestamp-server" .
  mv "$tmp/timestamp-server" "$bin"
  echo "tsa: built $bin" >&2
  ;;
*)
  echo "usage: $0 build|path" >&2
  exit 2
  ;;
esac
