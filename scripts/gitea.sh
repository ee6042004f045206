#!/usr/bin/env bash
# Builds the Gitea binary that integration tests run as a real forge
# (internal/testgitea), once, from the module in test/gitea, and caches it:
#   $PROVENIX_TOOLS_DIR/gitea-1.26.4/gitea        the binary (sqlite via cgo)
#   $PROVENIX_TOOLS_DIR/gitea-1.26.4/{options,templates,public}
# The module zip has no generated bindata, so the binary is built without the
# bindata tag and reads these asset dirs from disk; testgitea points
# [server] STATIC_ROOT_PATH at this directory.
# Usage: scripts/gitea.sh build   build unless the cached binary exists
#        scripts/gitea.sh path    print the cached binary's path
name=gitea
version=1.26.4
subdir=gitea-$version
binary=gitea
module=gitea
cold="~6 min"

build_into() {
  # The sqlite tags need cgo, as in Gitea's own Makefile.
  CGO_ENABLED=1 GOFLAGS="${GITEA_GOFLAGS:--mod=readonly}" \
    go build -buildvcs=false -trimpath \
    -tags 'sqlite sqlite_unlock_notify' \
    -ldflags "-s -w -X main.Version=$version" \
    -o "$1/gitea" .
  # The asset dirs go beside the binary; they are replaced before the
  # binary, which is moved into place last.
  local moddir d
  moddir=$(GOFLAGS="${GITEA_GOFLAGS:--mod=readonly}" go list -m -f '{{.Dir}}' code.gitea.io/gitea)
  for d in options templates public; do
    cp -R "$moddir/$d" "$1/$d"
  done
  chmod -R u+w "$1" # the module cache is read-only; let rm -rf clean up later
  for d in options templates public; do
    rm -rf "${dir:?}/$d"
    mv "$1/$d" "$dir/$d"
  done
}

. "$(dirname "$0")/lib/tool.sh"
tool_main "$@"
