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
name=rekor
version=2.3.0
subdir=rekor-tiles-$version
binary=rekor-server
module=rekor
cold="~1 min"

build_into() {
  CGO_ENABLED=0 GOFLAGS="${REKOR_GOFLAGS:--mod=readonly}" \
    go build -buildvcs=false -trimpath -ldflags "-s -w" -o "$1/rekor-server" .
}

. "$(dirname "$0")/lib/tool.sh"
tool_main "$@"
