#!/usr/bin/env bash
# Builds the Versity S3 Gateway (versitygw) that integration tests run as a
# real S3 server (internal/tests3), once, from the module in test/versitygw
# (a `tool` directive pins github.com/versity/versitygw v1.8.0), and caches it:
#   $PROVENIX_TOOLS_DIR/versitygw-1.8.0/versitygw
# Tests run its POSIX backend: `versitygw --access A --secret S --region R
# --port 127.0.0.1:P posix DIR`.
# Usage: scripts/versitygw.sh build   build unless the cached binary exists
#        scripts/versitygw.sh path    print the cached binary's path
name=versitygw
version=1.8.0
subdir=versitygw-$version
binary=versitygw
module=versitygw
cold="~2 min"

build_into() {
  CGO_ENABLED=0 GOFLAGS="${VERSITYGW_GOFLAGS:--mod=readonly}" \
    go build -buildvcs=false -trimpath -ldflags "-s -w -X main.Version=v$version" \
    -o "$1/versitygw" github.com/versity/versitygw/cmd/versitygw
}

. "$(dirname "$0")/lib/tool.sh"
tool_main "$@"
