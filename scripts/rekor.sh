#!/usr/bin/env bash
# Builds the rekor-tiles (Rekor v2) server that integration tests run as a
# real transparency log (internal/testrekor), once, from the module in
# test/rekor, and caches it:
#   $PROVENIX_TOOLS_DIR/rekor-tiles-2.3.0/rekor-server
# It is the POSIX (file storage) variant: `rekor-server serve --storage-dir D
# --signer-filepath KEY.pem --hostname ORIGIN --http-port P --grpc-port P2
# --http-metrics-port 0`.
# Usage: scripts/rekor.sh build   build unless the cached binary exists
#        scripts/rekor.sh path    print the cached binary's path
set -euo pipefail

version=2.3.0
dir=${PROVENIX_TOOLS_DIR:-/var/cache/provenix-tools}/rekor-tiles-$version
bin=$dir/rekor-server
root=$(cd "$(dirname "$0")/.." && pwd)

case ${1:-} in
path)
  echo "$bin"
  ;;
build)
  if [ -x "$bin" ]; then
    echo "rekor: using cached $bin" >&2
    exit 0
  fi
  echo "rekor: building rekor-tiles $version from its Go module (~1 min cold) into $dir" >&2
  if ! mkdir -p "$dir" 2>/dev/null || [ ! -w "$dir" ]; then
    echo "rekor: cannot write $dir; run as root or set PROVENIX_TOOLS_DIR to a writable directory (tests read it too)" >&2
    exit 1
  fi
  # Build into a temp dir and rename last, so an interrupted build never
  # leaves a binary that the skip check above would trust.
  tmp=$(mktemp -d "$dir/.build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  cd "$root/test/rekor"
  # GOWORK=off: a go.work above us must not pull this module into the main one.
  export GOWORK=off CGO_ENABLED=0 GOFLAGS="${REKOR_GOFLAGS:--mod=readonly}"
  go build -buildvcs=false -trimpath -ldflags "-s -w" -o "$tmp/rekor-server" .
  mv "$tmp/rekor-server" "$bin"
  echo "rekor: built $bin" >&2
  ;;
*)
  echo "usage: $0 build|path" >&2
  exit 2
  ;;
esac
