#!/usr/bin/env bash
# Installs what Provenix's demo and tests need, when it is missing:
#   nix-bin, busybox-static (the sample's builder), nats-server (the
#   external-NATS test) from Debian/Ubuntu packages, and cosign v3.1.3 (the
#   independent bundle verifier) built from the Go module proxy and cached
#   in $(go env GOPATH)/bin, so only the first run pays its ~12 minutes;
#   in test mode also nodejs (JavaScript actions), zstd (the multi-frame
#   NAR check), cron and at (the job user pool's clean-up test), chromium
#   (the farm page's headless browser test), and skopeo, podman and runc
#   (the OCI registry's real clients; runc because crun refuses hosts with
#   mixed cgroup v1/v2 controllers).
#   Test mode also builds Gitea 1.26.4 once (scripts/gitea.sh) for internal/testgitea,
#   and chroots with Debian trixie's and forky's Nix (scripts/nix-chroot.sh).
# Usage: scripts/install-deps.sh [demo|test]   (demo skips nats-server and cosign)
set -euo pipefail
what=${1:-test}

need_pkgs=()
command -v nix-build >/dev/null 2>&1 || need_pkgs+=(nix-bin)
command -v busybox >/dev/null 2>&1 || need_pkgs+=(busybox-static)
# node runs JavaScript actions in the runner's tests.
if [ "$what" = test ] && ! command -v node >/dev/null 2>&1; then need_pkgs+=(nodejs); fi
# zstd checks the multi-frame NARs ingest writes (zstd -t, zstd -l).
if [ "$what" = test ] && ! command -v zstd >/dev/null 2>&1; then need_pkgs+=(zstd); fi
# chromium renders the farm's page in its headless browser test.
if [ "$what" = test ] && ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  need_pkgs+=(chromium)
fi
# The OCI registry's tests pull with skopeo and run images with podman.
if [ "$what" = test ] && ! command -v skopeo >/dev/null 2>&1; then need_pkgs+=(skopeo); fi
if [ "$what" = test ] && ! command -v podman >/dev/null 2>&1; then need_pkgs+=(podman); fi
if [ "$what" = test ] && ! command -v runc >/dev/null 2>&1 && [ ! -x /usr/sbin/runc ]; then need_pkgs+=(runc); fi
# The job user pool's test leaves a crontab and an at job for the pool to
# remove (the daemons need not run).
if [ "$what" = test ] && ! command -v crontab >/dev/null 2>&1; then need_pkgs+=(cron); fi
if [ "$what" = test ] && ! command -v at >/dev/null 2>&1; then need_pkgs+=(at); fi
if [ "$what" = test ] && ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
  need_pkgs+=(nats-server)
fi

if [ ${#need_pkgs[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
      if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
        echo "install-deps: need root or sudo to run: apt-get install -y ${need_pkgs[*]}" >&2; exit 1
      fi
    fi
    echo "install-deps: apt-get install ${need_pkgs[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
  else
    echo "install-deps: missing: ${need_pkgs[*]}. Install them with your package manager:" >&2
    echo "  Nix: https://nixos.org/download (provides nix-build, nix-store)" >&2
    echo "  busybox: a statically linked busybox on PATH" >&2
    echo "  nats-server: https://github.com/nats-io/nats-server/releases" >&2
    exit 1
  fi
fi

if [ "$what" = test ]; then
  gobin=$(go env GOPATH)/bin
  if ! command -v cosign >/dev/null 2>&1 && [ ! -x "$gobin/cosign" ]; then
    echo "install-deps: building cosign v3.1.3 into $gobin (first time only, ~12 min)" >&2
    GOFLAGS= go install github.com/sigstore/cosign/v3/cmd/cosign@v3.1.3
  fi
  # The runner's tests run job steps as an unprivileged user who builds
  # through the Nix daemon (Debian lets only nix-users talk to it).
  if [ "$(uname -s)" = Linux ] && [ "$(id -u)" -eq 0 ]; then
    # provenix-job is the shared job user (provenix.job_user); the pool
    # provenix-job-0..11 gives each running job a user of its own
    # (provenix.job_users). Test packages run in parallel and kill what
    # their pool users leave, so each uses its own: runner 0-2,
    # runner/isolate 3-4, cmd/provenix 5-7 and, for the two tenants of
    # its federation test (TestFederationAgainstTwoGiteas), 8-11.
    for u in provenix-job provenix-job-{0..11}; do
      if ! id "$u" >/dev/null 2>&1; then
        echo "install-deps: creating the job user $u (in nix-users)" >&2
        getent group nix-users >/dev/null || groupadd --system nix-users
        useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin --groups nix-users "$u"
      fi
    done
    if ! nix --extra-experimental-features nix-command store ping --store daemon >/dev/null 2>&1; then
      echo "install-deps: starting nix-daemon" >&2
      mkdir -p /nix/var/nix/daemon-socket
      nohup nix-daemon >/var/log/nix-daemon.log 2>&1 &
    fi
  elif [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: note: the runner's privilege-separation tests need root (jobs run as provenix-job)" >&2
  fi
  # Gitea 1.26.4, the real forge of the runner's integration tests
  # (internal/testgitea), cached in /var/cache/provenix-tools (~8 min once).
  "$(dirname "$0")/gitea.sh" build
  "$(dirname "$0")/rekor.sh" build # rekor-tiles 2.3.0, the real Rekor v2 log of internal/testrekor (~1 min once)
  "$(dirname "$0")/fulcio.sh" build # Fulcio 1.8.5, the real keyless CA of internal/testfulcio (a few min once)
  "$(dirname "$0")/tsa.sh" build # timestamp-authority 2.1.3, the real RFC 3161 TSA of internal/testtsa (~1.5 min once)
  "$(dirname "$0")/versitygw.sh" build # versitygw 1.8.0, the real S3 server of internal/tests3 (~2 min once)
  "$(dirname "$0")/crane.sh" build # crane 0.21.7, the OCI registry's second real client (oci/; ~1 min once)
  # Debian trixie's Nix 2.26 and forky's 2.34 in chroots, for the tests
  # that run under every Nix version (internal/testnix; ~1.5–2.5 min each once).
  if [ "$(uname -s)" = Linux ] && [ "$(id -u)" -eq 0 ]; then
    "$(dirname "$0")/nix-chroot.sh" build
  else
    echo "install-deps: note: the Nix 2.26/2.34 chroots need root on Linux: sudo scripts/nix-chroot.sh build" >&2
  fi
fi
