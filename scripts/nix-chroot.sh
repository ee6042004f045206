#!/usr/bin/env bash
# Builds the chroots in which tests run newer Nix than the host's (Debian 12
# ships Nix 2.8): Debian trixie's nix-bin (2.26.x) and forky's (2.34.x), made
# by debootstrap once and cached (~1–1.5 min each):
#   $PROVENIX_TOOLS_DIR/nix-chroot-trixie/   a minbase root with nix-bin and busybox-static
#   $PROVENIX_TOOLS_DIR/nix-chroot-forky/
# A chroot is built in a temporary directory and renamed last, with the stamp
# file etc/provenix-chroot (its `nix --version`) written before the rename, so
# an interrupted build is never trusted and is redone next time.
# internal/testnix mounts proc, /dev and /dev/pts into them when a test runs.
# Usage: scripts/nix-chroot.sh build [SUITE...]  build unless cached (default: trixie forky)
#        scripts/nix-chroot.sh path SUITE        print the chroot's directory
set -euo pipefail

tools=${PROVENIX_TOOLS_DIR:-/var/cache/provenix-tools}
# Debian's mirror, as in this machine's apt sources; override for another mirror.
mirror=${PROVENIX_DEBIAN_MIRROR:-http://deb.debian.org/debian}
stamp=etc/provenix-chroot

# unmount_under DIR: lazily unmount everything mounted under DIR (deepest
# first), so that removing a half-made chroot can never reach the host's
# /dev or /proc through a bind mount left behind.
unmount_under() {
  local d=$1 m
  awk -v d="$d" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/mounts | sort -r |
    while read -r m; do umount -l "$m" || true; done
}

build_one() {
  local suite=$1 dir=$tools/nix-chroot-$1 tmp version
  if [ -s "$dir/$stamp" ]; then
    echo "nix-chroot: using cached $dir ($(cat "$dir/$stamp"))" >&2
    return 0
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "nix-chroot: building $dir needs root (debootstrap, chroot); run: sudo $0 build $suite" >&2
    return 1
  fi
  if ! command -v debootstrap >/dev/null 2>&1 && [ ! -x /usr/sbin/debootstrap ]; then
    echo "nix-chroot: apt-get install debootstrap" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  fi
  mkdir -p "$tools"
  # A half-made chroot (no stamp) from an interrupted run is redone.
  if [ -e "$dir" ]; then
    echo "nix-chroot: removing the incomplete $dir" >&2
    unmount_under "$dir"
    rm -rf --one-file-system "$dir"
  fi
  local t
  for t in "$tools"/.nix-chroot-"$suite".*; do
    [ -e "$t" ] || continue
    unmount_under "$t"
    rm -rf --one-file-system "$t"
  done
  tmp=$(mktemp -d "$tools/.nix-chroot-$suite.XXXXXX")
  echo "nix-chroot: debootstrap $suite with nix-bin into $dir (~1–1.5 min)" >&2
  # There is no debootstrap script for forky yet; trixie's works for both.
  # libdbi-perl: nix-bin needs libdbd-sqlite3-perl, which depends on the
  # virtual perl-dbdabi-94 that debootstrap does not resolve; without it
  # debootstrap retries configuring five times and ends with "Failure while
  # configuring base packages". The Nix binaries work even then, so its
  # status is not trusted either way: `nix --version` inside decides.
  /usr/sbin/debootstrap --variant=minbase --include=nix-bin,busybox-static,libdbi-perl \
    "$suite" "$tmp" "$mirror" /usr/share/debootstrap/scripts/trixie >"$tmp.log" 2>&1 || true
  unmount_under "$tmp"
  # mktemp made it 0700: as the chroot's "/", that would shut out every
  # user but root (the runner's job user among them).
  chmod 755 "$tmp"
  mkdir -p "$tmp/etc/nix"
  # Offline, no build users (root builds through the local store or the
  # chroot's own daemon), and jobs of any user may use the daemon. The
  # sandbox stays on, as on the host: builds into a chroot store need it.
  # The kernel refuses it to a plain chroot(2) (no user namespaces there);
  # internal/testnix enters the root with pivot_root in a mount namespace,
  # where it works. A plain `chroot DIR nix-build` needs --option sandbox false.
  cat >"$tmp/etc/nix/nix.conf" <<'EOF'
build-users-group =
substituters =
sandbox = true
experimental-features = nix-command
allowed-users = *
EOF
  # Nix reads /proc/self/exe: mount proc for the check, then unmount it.
  mount -t proc proc "$tmp/proc"
  trap 'unmount_under "$tmp"' EXIT
  local ok=1
  version=$(chroot "$tmp" nix --version 2>&1) || ok=0
  unmount_under "$tmp"
  trap - EXIT
  if [ $ok = 0 ]; then
    echo "nix-chroot: $suite: nix does not run in the new chroot: $version" >&2
    echo "nix-chroot: debootstrap's log ($tmp.log), last lines:" >&2
    tail -20 "$tmp.log" >&2
    return 1
  fi
  if ! chroot "$tmp" busybox true; then
    echo "nix-chroot: $suite: busybox missing in the new chroot; see $tmp.log" >&2
    return 1
  fi
  echo "$version" >"$tmp/$stamp"
  mv "$tmp" "$dir"
  mv "$tmp.log" "$dir.debootstrap.log"
  echo "nix-chroot: built $dir ($version)" >&2
}

case ${1:-} in
path)
  [ -n "${2:-}" ] || { echo "usage: $0 path SUITE" >&2; exit 2; }
  echo "$tools/nix-chroot-$2"
  ;;
build)
  shift
  [ $# -gt 0 ] || set -- trixie forky
  for s in "$@"; do build_one "$s"; done
  ;;
*)
  echo "usage: $0 build [SUITE...] | path SUITE" >&2
  exit 2
  ;;
esac
