#!/usr/bin/env bash
# Builds the Fulcio certificate authority that integration tests run as a
# real keyless CA (internal/testfulcio), once, from the module in
# test/fulcio, and caches it:
#   $PROVENIX_TOOLS_DIR/fulcio-1.8.5/fulcio
# internal/testfulcio runs it as `fulcio serve --ca ephemeralca
# --config-path CONFIG.json --ct-log-url "" --host 127.0.0.1 --port P
# --grpc-host 127.0.0.1 --grpc-port P2` (see that package).
# Usage: scripts/fulcio.sh build   build unless the cached binary exists
#        scripts/fulcio.sh path    print the cached binary's path
set -euo pipefail

version=1.8.5
dir=${PROVENIX_TOOLS_DIR:-/var/cache/provenix-tools}/fulcio-$version
bin=$dir/fulcio
root=$(cd "$(dirname "$0")/.." && pwd)

case ${1:-} in
path)
  echo "$bin"
  ;;
build)
  if [ -x "$bin" ]; then
    echo "fulcio: using cached $bin" >&2
    exit 0
  fi
  echo "fulcio: building Fulcio $version from its Go module (a few minutes cold) into $dir" >&2
  if ! mkdir -p "$dir" 2>/dev/null || [ ! -w "$dir" ]; then
    echo "fulcio: cannot write $dir; run as root or set PROVENIX_TOOLS_DIR to a writable directory (tests read it too)" >&2
    exit 1
  fi
  # Build into a temp dir and rename last, so an interrupted build never
  # leaves a binary that the skip check above would trust.
  tmp=$(mktemp -d "$dir/.build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  cd "$root/test/fulcio"
  # GOWORK=off: a go.work above us must not pull this module into the main one.
  export GOWORK=off CGO_ENABLED=0 GOFLAGS="${FULCIO_GOFLAGS:--mod=readonly}"
  go build -buildvcs=false -trimpath -ldflags "-s -w" -o "$tmp/fulcio" .
  mv "$tmp/fulcio" "$bin"
  echo "fulcio: built $bin" >&2
  ;;
*)
  echo "usage: $0 build|path" >&2
  exit 2
  ;;
esac
