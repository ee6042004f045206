package main

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testfs"
	"codeberg.org/provenix/provenix/internal/testgitea"
	"codeberg.org/provenix/provenix/internal/testlog"
	"codeberg.org/provenix/provenix/internal/testnats"
	"codeberg.org/provenix/provenix/runner/config"
	"codeberg.org/provenix/provenix/tenant"
)

// fedTenant is one side of the federation test: a forge, a tenant (NATS
// account, pusher, cache) and the job that ran for it.
type fedTenant struct {
	name      string // tenant and connection name: "a" or "b"
	forge     *testgitea.Forge
	dir       string // the tenant's files (tenant add)
	cacheURL  string
	user, pwd string // the tenant's cache reader
	jobUsers  []string

	owner, repo string
	job         testgitea.Job
	log         string // the job's log on its forge
	outPath     string // the store path its job built
}

// file is one of the tenant's files.
func (ft *fedTenant) file(name string) string { return filepath.Join(ft.dir, name) }

// federation is what TestFederationAgainstTwoGiteas set up and saw, for
// the checks that other parts of issue 14 add (see the hooks at its end).
type federation struct {
	natsURL   string
	runnerLog *testlog.Buffer
	tenants   []*fedTenant
}

// TestFederationAgainstTwoGiteas: one runner daemon, registered with two
// real Gitea instances (runner register --connection), serves both with
// capacity 2; each connection has its own tenant: NATS account on one
// nats-server, key, builder id, job users and cache.
//   - a job of each forge runs at once (each waits for the other);
//     their builds do not overlap: the runner attests a path only when
//     no other job ran while the store registered it, since Nix does not
//     record who asked for a build (capture.Windows), so a's job builds
//     before b's starts and b's builds after a's ended;
//   - each job runs as one of its own tenant's job users;
//   - each job's build is published in its own tenant's cache only;
//   - tenant b's job opens its own job directory (every directory from
//     its task directory down to its workspace), socket and a file to
//     everyone; tenant a's job still can read neither b's work directory
//     (nor list its parent), nor b's signing key, nor reach b's signing
//     socket, while it reads its own files (the checks can fail). Only
//     the tenant's work directory parent, searchable by b's job users
//     alone (isolate.RestrictDir), keeps a out of b's open directory.
func TestFederationAgainstTwoGiteas(t *testing.T) {
	busybox := requireRootRunner(t, "provenix-job-8..11")
	ctx := testctx.New(t, 12*time.Minute)
	bin := buildProvenix(t)

	fed := &federation{runnerLog: &testlog.Buffer{}}
	a := &fedTenant{name: "a", jobUsers: []string{"provenix-job-8", "provenix-job-9"}}
	b := &fedTenant{name: "b", jobUsers: []string{"provenix-job-10", "provenix-job-11"}}
	fed.tenants = []*fedTenant{a, b}

	// Two tenants on one nats-server, each with its pusher and cache, as
	// docs/tenants.md sets them up. Their directories are open (0755), so
	// only each file's own mode keeps a job from a key.
	dir := testfs.OpenDir(t)
	var includes strings.Builder
	for _, ft := range fed.tenants {
		ft.dir = filepath.Join(dir, ft.name)
		if o, e, code := cli(t, ctx, "tenant", "add", ft.name, "--dir", ft.dir, "--cache-host", "127.0.0.1", "--max-file", "256MiB"); code != 0 {
			t.Fatalf("tenant add %s: exit %d\n%s\n%s", ft.name, code, o, e)
		}
		if err := os.Chmod(ft.dir, 0o755); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&includes, "  include %q\n", filepath.Join(ft.name, tenant.FileAccount))
	}
	srv := testnats.Start(t, dir, "accounts {\n"+includes.String()+"}\n", false)
	fed.natsURL = srv.URL
	for _, ft := range fed.tenants {
		cacheDir := filepath.Join(dir, "cache-"+ft.name)
		daemon(t, ctx, func(_, stderr string) bool { return strings.Contains(stderr, "cache pusher running") },
			"cache-push", "--nats-url", srv.URL, "--nats-nkey", ft.file("pusher.nk"), "--tenant", ft.name,
			"--policy", ft.file(tenant.FilePolicy), "--cache-key", ft.file(tenant.FileCacheKey), "--dir", cacheDir, "--group", "cache")
		ft.cacheURL = serveTenantCache(t, ctx, cacheDir, ft.file(tenant.FileCacheReaders))
		ft.user, ft.pwd = netrcLogin(t, ft.file(tenant.FileNetrc))
	}

	// Two Gitea instances; the runner registers with each as a connection
	// of one config file, then each connection gets its tenant's block.
	runDir := t.TempDir()
	cfgPath := filepath.Join(runDir, "config.yaml")
	if err := os.WriteFile(cfgPath, []byte("runner:\n  labels: [nix]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, ft := range fed.tenants {
		ft.forge = testgitea.Start(t)
		reg := exec.CommandContext(ctx, bin, "runner", "register", "--no-interactive", "--config", cfgPath, "--connection", ft.name,
			"--instance", ft.forge.URL, "--token", ft.forge.RunnerRegistrationToken(t), "--name", "fed-runner")
		reg.Dir = runDir
		if out, err := reg.CombinedOutput(); err != nil {
			t.Fatalf("runner register --connection %s: %v\n%s", ft.name, err, out)
		}
	}
	registered, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	startFederatedRunner(t, bin, runDir, cfgPath, registered, fed)

	// The jobs. a's builds, then both announce themselves and wait for
	// each other; b's then opens its job directory, socket and a file to
	// everyone and waits for a's report; a's tries b's files, reports and
	// ends; then b's builds.
	sh := testfs.OpenDir(t)
	if err := os.Chmod(sh, 0o1777); err != nil {
		t.Fatal(err)
	}
	sample, err := os.ReadFile(filepath.Join("..", "..", "examples", "hello.nix"))
	if err != nil {
		t.Fatal(err)
	}
	msg := uniqueMessage(t)
	barrier := fmt.Sprintf(`id -un > %[1]s/user-$TENANT
          touch %[1]s/started-$TENANT
          for i in $(seq 1800); do [ -e %[1]s/started-a ] && [ -e %[1]s/started-b ] && break; sleep 0.1; done
          [ -e %[1]s/started-a ] && [ -e %[1]s/started-b ]`, sh)
	build := func(ft *fedTenant, before, after string) string {
		host := strings.TrimPrefix(ft.forge.URL, "http://")
		return fmt.Sprintf(`      - name: build
        run: |
          %[4]s
          git clone -q "http://x-access-token:${{ github.token }}@%[1]s/${{ github.repository }}.git" src
          provenix build src/hello.nix -A hello --arg busybox=%[2]s --argstr message=%[3]q
          times
          %[5]s
`, host, busybox, msg+"-"+ft.name, before, after)
	}
	for _, ft := range fed.tenants {
		ft.owner, ft.repo = ft.forge.CreateRepo(t, "pkgs-"+ft.name)
		ft.forge.PutFile(t, ft.owner, ft.repo, "hello.nix", sample)
	}
	a.forge.PutFile(t, a.owner, a.repo, ".forgejo/workflows/build.yml", []byte(fmt.Sprintf(`on: push
jobs:
  build:
    runs-on: nix
    env:
      TENANT: a
    steps:
%[3]s      - name: meet b
        run: |
          %[2]s
      - name: try b's files
        run: |
          for i in $(seq 3000); do [ -e %[1]s/b-info ] && break; sleep 0.1; done
          { read bdir; read bsock; read btok; } < %[1]s/b-info
          echo own > "$PWD/own.txt"
          r() { if cat "$1" >/dev/null 2>&1; then echo READ; else echo DENIED; fi; }
          l() { if ls "$1" >/dev/null 2>&1; then echo READ; else echo DENIED; fi; }
          code=$(curl -s -o /dev/null -w '%%{http_code}' --unix-socket "$bsock" -H "Authorization: Bearer $btok" \
            -H 'Content-Type: application/json' -d '{"drvs":["/nix/store/g5s1vk624lv2dj6jhzgdvygm842l9hiv-x.drv"]}' http://runner/v1/attest || true)
          {
            echo "own $(r "$PWD/own.txt")"
            echo "own-key-pub $(r %[4]s.pub)"
            echo "workdir $(r "$bdir/b-file.txt")"
            echo "workdir-list $(l "$bdir")"
            echo "tenant-workdirs $(l "$(dirname "$(dirname "$(dirname "$bsock")")")")"
            echo "key $(r %[5]s)"
            echo "socket $code"
          } > %[1]s/a-report.tmp
          mv %[1]s/a-report.tmp %[1]s/a-report
          cat %[1]s/a-report
`, sh, barrier, build(a, ":", "touch "+sh+"/a-built"), a.file(tenant.FileBuilderKey), b.file(tenant.FileBuilderKey))))
	waitForFile(t, filepath.Join(sh, "a-built"), 5*time.Minute, nil)

	b.forge.PutFile(t, b.owner, b.repo, ".forgejo/workflows/build.yml", []byte(fmt.Sprintf(`on: push
jobs:
  build:
    runs-on: nix
    env:
      TENANT: b
    steps:
      - name: meet a
        run: |
          %[2]s
      - name: open up and wait
        run: |
          echo "b-secret-content" > "$PWD/b-file.txt"
          chmod 0644 "$PWD/b-file.txt"
          sockdir=$(dirname "$PROVENIX_RUNNER_SOCKET")
          task=$(dirname "$sockdir")
          d="$PWD"; while [ "$d" != "$task" ] && [ "$d" != / ]; do chmod o+rx "$d"; d=$(dirname "$d"); done
          chmod o+x "$task" "$sockdir"
          chmod 0777 "$PROVENIX_RUNNER_SOCKET"
          printf '%%s\n' "$PWD" "$PROVENIX_RUNNER_SOCKET" "$PROVENIX_RUNNER_TOKEN" > %[1]s/b-info.tmp
          mv %[1]s/b-info.tmp %[1]s/b-info
          for i in $(seq 3000); do [ -e %[1]s/a-report ] && exit 0; sleep 0.1; done; exit 1
%[3]s`, sh, barrier, build(b, fmt.Sprintf("for i in $(seq 3000); do [ -e %[1]s/a-done ] && break; sleep 0.1; done; [ -e %[1]s/a-done ] && sleep 2", sh), ":"))))

	for _, ft := range fed.tenants {
		ft.job = ft.forge.WaitJob(t, ft.owner, ft.repo, 8*time.Minute)
		if ft == a {
			if err := os.WriteFile(filepath.Join(sh, "a-done"), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		ft.log = ft.forge.JobLogs(t, ft.owner, ft.repo, ft.job.ID)
		if ft.job.Conclusion != "success" {
			t.Fatalf("tenant %s's job: %s\n%s", ft.name, ft.job.Conclusion, ft.log)
		}
		m := regexp.MustCompile(`out\s+(/nix/store/[0-9a-z]{32}-provenix-hello)\s`).FindStringSubmatch(ft.log)
		if m == nil {
			t.Fatalf("no output path in tenant %s's log:\n%s", ft.name, ft.log)
		}
		ft.outPath = m[1]
		if !strings.Contains(ft.log, fmt.Sprintf("as builder %q", ft.name+"-runner")) {
			t.Errorf("tenant %s's build was not attested by its own builder:\n%s", ft.name, ft.log)
		}
		ran := strings.TrimSpace(string(testfs.Read(t, filepath.Join(sh, "user-"+ft.name))))
		if !slices.Contains(ft.jobUsers, ran) {
			t.Errorf("tenant %s's job ran as %s, not one of its own job users %v", ft.name, ran, ft.jobUsers)
		}
	}

	report := string(testfs.Read(t, filepath.Join(sh, "a-report")))
	t.Logf("a's report on b's files:\n%s", report)
	for _, want := range []string{"own READ", "own-key-pub READ", "workdir DENIED", "workdir-list DENIED", "tenant-workdirs DENIED", "key DENIED", "socket 000"} {
		if !strings.Contains(report, want+"\n") {
			t.Errorf("a's report lacks %q:\n%s", want, report)
		}
	}

	// Each build in its own tenant's cache only.
	for _, ft := range fed.tenants {
		waitTenantNarinfo(t, ft, ft.outPath)
	}
	for _, c := range []struct{ cache, path *fedTenant }{{a, b}, {b, a}} {
		if got := get(t, c.cache.cacheURL+"/"+cachelayout.NarinfoKey(c.path.outPath), c.cache.user, c.cache.pwd); got != http.StatusNotFound {
			t.Errorf("tenant %s's build in tenant %s's cache: %d, want 404", c.path.name, c.cache.name, got)
		}
	}

	checkFederationUsage(t, fed)
	checkFederationCommitStatus(t, fed)
}

// startFederatedRunner writes the runner's final config (the connections
// as registered, each with its tenant's provenix block) and starts the
// daemon, capacity 2, until the test ends.
func startFederatedRunner(t *testing.T, bin, runDir, cfgPath string, registered *config.Config, fed *federation) {
	t.Helper()
	var conns strings.Builder
	for _, ft := range fed.tenants {
		c, ok := registered.Server.Connections[ft.name]
		if !ok {
			t.Fatalf("register --connection %s wrote no server.connections.%s", ft.name, ft.name)
		}
		fmt.Fprintf(&conns, `    %s:
      url: %s
      uuid: %s
      token: %s
      provenix:
        tenant: %s
        nats_nkey: %s
        key: %s
        builder_id: %s-runner
        job_users: [%s]
`, ft.name, c.URL, c.UUID, c.Token, ft.name, ft.file("runner.nk"), ft.file(tenant.FileBuilderKey), ft.name, strings.Join(ft.jobUsers, ", "))
	}
	cfg := fmt.Sprintf(`log:
  level: debug
runner:
  capacity: 2
  fetch_interval: 200ms
  report_interval: 200ms
  timeout: 5m
  labels: [nix]
  envs:
    NIX_CONFIG: "substituters =\nexperimental-features = nix-command"
host:
  workdir_parent: %s
provenix:
  nats_url: %s
server:
  connections:
%s`, filepath.Join(testfs.OpenDir(t), "work"), fed.natsURL, conns.String())
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	_, done := runRunnerDaemon(t, bin, t.TempDir(), runDir, cfgPath, "federated", fed.runnerLog)
	// Both connections are up before any job is pushed.
	for deadline := time.Now().Add(time.Minute); strings.Count(fed.runnerLog.String(), "declared to the forge") < 2; time.Sleep(100 * time.Millisecond) {
		select {
		case <-done:
			t.Fatalf("the runner exited:\n%s", fed.runnerLog.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the runner did not declare itself to both forges:\n%s", fed.runnerLog.String())
		}
	}
}

// waitTenantNarinfo waits until path is in ft's cache, read as ft's reader.
func waitTenantNarinfo(t *testing.T, ft *fedTenant, path string) {
	t.Helper()
	url := ft.cacheURL + "/" + cachelayout.NarinfoKey(path)
	for deadline := time.Now().Add(time.Minute); get(t, url, ft.user, ft.pwd) != http.StatusOK; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("tenant %s's pusher did not publish %s into its cache", ft.name, path)
		}
	}
}

// checkFederationUsage is the hook for issue 14's accounting (package
// usage): `provenix usage --by tenant` against fed.natsURL should
// attribute to each tenant the CPU seconds its job's steps measured
// (each build step ends with the shell's `times`, in ft.log) within 10%,
// and the bytes built (the NAR sizes of ft.outPath) exactly. Not yet
// written: the accounting is another part of the issue.
func checkFederationUsage(t *testing.T, fed *federation) {
	t.Helper()
}

// checkFederationCommitStatus is the hook for issue 14's verdicts on the
// forge: once each tenant's pusher sets commit statuses through a token
// of its forge, ft.forge should show `provenix/<system>` = success on
// ft.owner/ft.repo's head commit (ft.forge.HeadSHA) for ft.outPath. Not
// yet written: the pusher's statuses are another part of the issue.
func checkFederationCommitStatus(t *testing.T, fed *federation) {
	t.Helper()
}
