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
name=fulcio
version=1.8.5
subdir=fulcio-$version
binary=fulcio
module=fulcio
cold="a few minutes"

build_into() {
  CGO_ENABLED=0 GOFLAGS="${FULCIO_GOFLAGS:--mod=readonly}" \
    go build -buildvcs=false -trimpath -ldflags "-s -w" -o "$1/fulcio" .
}

. "$(dirname "$0")/lib/tool.sh"
tool_main "$@"
