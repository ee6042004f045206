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
name=tsa
version=2.1.3
subdir=tsa-$version
binary=timestamp-server
module=tsa
cold="~1 min"

build_into() {
  CGO_ENABLED=0 GOFLAGS="${TSA_GOFLAGS:--mod=readonly}" \
    go build -buildvcs=false -trimpath -ldflags "-s -w" -o "$1/timestamp-server" .
}

. "$(dirname "$0")/lib/tool.sh"
tool_main "$@"
