#!/usr/bin/env bash
# Builds crane, go-containerregistry's registry client, that the OCI
# front-end's tests pull images with (oci/), once, from the module in
# test/crane, and caches it:
#   $PROVENIX_TOOLS_DIR/crane-0.21.7/crane
# Usage: scripts/crane.sh build   build unless the cached binary exists
#        scripts/crane.sh path    print the cached binary's path
name=crane
version=0.21.7
subdir=crane-$version
binary=crane
module=crane
cold="~1 min"

build_into() {
  CGO_ENABLED=0 GOFLAGS="${CRANE_GOFLAGS:--mod=readonly}" \
    go build -buildvcs=false -trimpath -ldflags "-s -w" -o "$1/crane" .
}

. "$(dirname "$0")/lib/tool.sh"
tool_main "$@"
