# Shared by scripts/<tool>.sh: build a test tool once from its module in
# test/<module>, cache it under $PROVENIX_TOOLS_DIR, and answer
# `build|path`. The calling script sets, before sourcing this file:
#   name     short name for messages, e.g. rekor
#   version  the release, e.g. 2.3.0
#   subdir   cache subdirectory, e.g. rekor-tiles-2.3.0
#   binary   the binary's file name
#   module   the directory under test/ holding its go.mod
#   cold     a hint of the cold build time, e.g. "~1 min"
# and defines build_into TMP, which builds $binary (and any files it needs)
# into TMP from inside test/$module with GOWORK=off.
set -euo pipefail

dir=${PROVENIX_TOOLS_DIR:-/var/cache/provenix-tools}/$subdir
bin=$dir/$binary
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

tool_main() {
  case ${1:-} in
  path)
    echo "$bin"
    ;;
  build)
    if [ -x "$bin" ]; then
      echo "$name: using cached $bin" >&2
      return 0
    fi
    echo "$name: building $name $version from its Go module ($cold cold) into $dir" >&2
    if ! mkdir -p "$dir" 2>/dev/null || [ ! -w "$dir" ]; then
      echo "$name: cannot write $dir; run as root or set PROVENIX_TOOLS_DIR to a writable directory (tests read it too)" >&2
      return 1
    fi
    # Build into a temp dir and rename last, so an interrupted build never
    # leaves a binary that the skip check above would trust.
    tmp=$(mktemp -d "$dir/.build.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    cd "$root/test/$module"
    # GOWORK=off: a go.work above us must not pull this module into the main one.
    export GOWORK=off
    build_into "$tmp"
    mv "$tmp/$binary" "$bin"
    echo "$name: built $bin" >&2
    ;;
  *)
    echo "usage: $0 build|path" >&2
    return 2
    ;;
  esac
}
