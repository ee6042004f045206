#!/usr/bin/env bash
# Builds the Versity S3 Gateway (versitygw) that integration tests run as a
# real S3 server (internal/tests3), once, from the module in test/versitygw
# (a `tool` directive pins github.com/versity/versitygw v1.8.0), and caches it:
#   $PROVENIX_TOOLS_DIR/versitygw-1.8.0/versitygw
# Tests run its POSIX backend: `versitygw --access A --secret S --region R
# --port 127.0.0.1:P posix DIR`.
# Usage: scripts/versitygw.sh build   build unless the cached binary exists
#        scripts/versitygw.sh path    print the cached binary's path
set -euo pipefail

version=1.8.0
dir=${PROVENIX_TOOLS_DIR:-/var/cache/provenix-tools}/versitygw-$version
bin=$dir/versitygw
root=$(cd "$(dirname "$0")/.." && pwd)

case ${1:-} in
path)
  echo "$bin"
  ;;
build)
  if [ -x "$bin" ]; then
    echo "versitygw: using cached $bin" >&2
    exit 0
  fi
  echo "versitygw: building versitygw $version from its Go module (~2 min cold) into $dir" >&2
  if ! mkdir -p "$dir" 2>/dev/null || [ ! -w "$dir" ]; then
    echo "versitygw: cannot write $dir; run as root or set PROVENIX_TOOLS_DIR to a writable directory (tests read it too)" >&2
    exit 1
  fi
  # Build into a temp dir and rename last, so an interrupted build never
  # leaves a binary that the skip check above would trust.
  tmp=$(mktemp -d "$dir/.build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  cd "$root/test/versitygw"
  # GOWORK=off: a go.work above us must not pull this module into the main one.
  export GOWORK=off CGO_ENABLED=0 GOFLAGS="${VERSITYGW_GOFLAGS:--mod=readonly}"
  go build -buildvcs=false -trimpath -ldflags "-s -w -X main.Version=v$version" \
    -o "$tmp/versitygw" github.com/versity/versitygw/cmd/versitygw
  mv "$tmp/versitygw" "$bin"
  echo "versitygw: built $bin" >&2
  ;;
*)
  echo "usage: $0 build|path" >&2
  exit 2
  ;;
esac
