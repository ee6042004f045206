#!/usr/bin/env bash
# Builds the Gitea binary that integration tests run as a real forge
# (internal/testforge), once, from the module in test/gitea, and caches it:
#   $PROVENIX_TOOLS_DIR/gitea-1.26.4/gitea        the binary (sqlite via cgo)
#   $PROVENIX_TOOLS_DIR/gitea-1.26.4/{options,templates,public}
# The module zip has no generated bindata, so the binary is built without the
# bindata tag and reads these asset dirs from disk; testforge points
# [server] STATIC_ROOT_PATH at this directory.
# Usage: scripts/gitea.sh build   build unless the cached binary exists
#        scripts/gitea.sh path    print the cached binary's path
set -euo pipefail

version=1.26.4
dir=${PROVENIX_TOOLS_DIR:-/var/cache/provenix-tools}/gitea-$version
bin=$dir/gitea
root=$(cd "$(dirname "$0")/.." && pwd)

case ${1:-} in
path)
  echo "$bin"
  ;;
build)
  if [ -x "$bin" ]; then
    echo "gitea: using cached $bin" >&2
    exit 0
  fi
  echo "gitea: building Gitea $version from its Go module (~8 min cold) into $dir" >&2
  if ! mkdir -p "$dir" 2>/dev/null || [ ! -w "$dir" ]; then
    echo "gitea: cannot write $dir; run as root or set PROVENIX_TOOLS_DIR to a writable directory (tests read it too)" >&2
    exit 1
  fi
  # Build into a temp dir and rename last, so an interrupted build never
  # leaves a binary that the skip check above would trust.
  tmp=$(mktemp -d "$dir/.build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  cd "$root/test/gitea"
  # GOWORK=off: a go.work above us must not pull this module into the main
  # one. The sqlite tags need cgo, as in Gitea's own Makefile.
  export GOWORK=off CGO_ENABLED=1 GOFLAGS="${GITEA_GOFLAGS:--mod=readonly}"
  go build -buildvcs=false -trimpath \
    -tags 'sqlite sqlite_unlock_notify' \
    -ldflags "-s -w -X main.Version=$version" \
    -o "$tmp/gitea" .
  moddir=$(go list -m -f '{{.Dir}}' code.gitea.io/gitea)
  for d in options templates public; do
    cp -R "$moddir/$d" "$tmp/$d"
  done
  chmod -R u+w "$tmp" # the module cache is read-only; let rm -rf clean up later
  for d in options templates public; do
    rm -rf "${dir:?}/$d"
    mv "$tmp/$d" "$dir/$d"
  done
  mv "$tmp/gitea" "$bin"
  echo "gitea: built $bin" >&2
  ;;
*)
  echo "usage: $0 build|path" >&2
  exit 2
  ;;
esac
