package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"code.gitea.io/sdk/gitea"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testfs"
	"codeberg.org/provenix/provenix/internal/testgitea"
	"codeberg.org/provenix/provenix/internal/testlog"
	"codeberg.org/provenix/provenix/internal/testnats"
	"codeberg.org/provenix/provenix/runner/config"
	"codeberg.org/provenix/provenix/tenant"
	"codeberg.org/provenix/provenix/usage"
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
	sha         string // the commit its job ran for
}

// file is one of the tenant's files.
func (ft *fedTenant) file(name string) string { return filepath.Join(ft.dir, name) }

// federation is what TestFederationAgainstTwoGiteas set up and saw, for
// the checks that other parts of issue 14 add (see the hooks at its end).
type federation struct {
	bin, busybox string
	natsURL      string
	runnerLog    *testlog.Buffer
	tenants      []*fedTenant
	since        time.Time // before any job ran

	// The disputed path: tenant a's job also builds a non-reproducible
	// derivation that a's policy needs two builders for, and a hostile
	// builder trusted in a's policy (a second key) builds it too.
	salt         string
	disputedPath string // built by a's job
	hostileKey   string
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
//     alone (isolate.RestrictDir), keeps a out of b's open directory;
//   - `provenix usage`, with each tenant's credentials, bills each
//     tenant the CPU its steps measured and the NAR bytes its job built
//     (checkFederationUsage);
//   - each tenant's pusher shows its verdict on its own forge, and a
//     hostile builder's dispute turns a's commit to failure
//     (checkFederationCommitStatus).
func TestFederationAgainstTwoGiteas(t *testing.T) {
	busybox := requireRootRunner(t, "provenix-job-8..11")
	ctx := testctx.New(t, 12*time.Minute)
	bin := buildProvenix(t)

	fed := &federation{bin: bin, busybox: busybox, runnerLog: &testlog.Buffer{}, salt: uniqueMessage(t)}
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
	// Tenant a's policy also trusts a second builder, the hostile one,
	// and wants two builders to agree on the derivations named
	// fed-disputed*: a's job builds one, the hostile builder another NAR
	// of it (checkFederationCommitStatus).
	fed.hostileKey = a.file("hostile.key")
	if _, err := attest.GenerateKeyFiles(fed.hostileKey); err != nil {
		t.Fatal(err)
	}
	policy := string(testfs.Read(t, a.file(tenant.FilePolicy))) + `  - {id: a-hostile, key: hostile.key.pub}
overrides:
  - names: ["fed-disputed*"]
    quorum: {min: 2, on_disagreement: block}
`
	if err := os.WriteFile(a.file(tenant.FilePolicy), []byte(policy), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := testnats.Start(t, dir, "accounts {\n"+includes.String()+"}\n", false)
	fed.natsURL = srv.URL
	// Two Gitea instances; each tenant's pusher sets commit statuses on
	// its own forge only, with a token of that forge (docs/forges.md),
	// linking to its own cache.
	for _, ft := range fed.tenants {
		ft.forge = testgitea.Start(t)
	}
	for _, ft := range fed.tenants {
		cacheDir := filepath.Join(dir, "cache-"+ft.name)
		if err := os.MkdirAll(cacheDir, 0o755); err != nil {
			t.Fatal(err)
		}
		ft.cacheURL = serveTenantCache(t, ctx, cacheDir, ft.file(tenant.FileCacheReaders))
		ft.user, ft.pwd = netrcLogin(t, ft.file(tenant.FileNetrc))
		if err := os.WriteFile(ft.file("forge.token"), []byte(ft.forge.Token+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		forges := fmt.Sprintf("cache_url: %s\nforges:\n  - {url: %q, token_file: %q, builders: [%q], repos: [%q]}\n",
			ft.cacheURL, ft.forge.URL, ft.file("forge.token"), ft.name+"-runner", ft.forge.AdminUser+"/*")
		if err := os.WriteFile(ft.file("forges.yaml"), []byte(forges), 0o600); err != nil {
			t.Fatal(err)
		}
		daemon(t, ctx, func(_, stderr string) bool { return strings.Contains(stderr, "cache pusher running") },
			"cache-push", "--nats-url", srv.URL, "--nats-nkey", ft.file("pusher.nk"), "--tenant", ft.name,
			"--policy", ft.file(tenant.FilePolicy), "--cache-key", ft.file(tenant.FileCacheKey), "--vsa-key", ft.file(tenant.FileVSAKey), "--dir", cacheDir, "--group", "cache",
			"--forges", ft.file("forges.yaml"))
	}

	// The runner registers with each Gitea as a connection of one config
	// file, then each connection gets its tenant's block.
	runDir := t.TempDir()
	cfgPath := filepath.Join(runDir, "config.yaml")
	if err := os.WriteFile(cfgPath, []byte("runner:\n  labels: [nix]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, ft := range fed.tenants {
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
	// Every step ends with the shell's `times` (its own CPU and its
	// waited-for children's), which checkFederationUsage sums; the build
	// step also burns CPU in the job itself, as the builds run in the Nix
	// daemon, outside the job's cgroup (docs/usage.md).
	build := func(ft *fedTenant, before, extra, after string) string {
		host := strings.TrimPrefix(ft.forge.URL, "http://")
		return fmt.Sprintf(`      - name: build
        run: |
          trap times EXIT
          %[4]s
          git clone -q "http://x-access-token:${{ github.token }}@%[1]s/${{ github.repository }}.git" src
          provenix build src/hello.nix -A hello --arg busybox=%[2]s --argstr message=%[3]q
          %[6]s
          i=0; while [ $i -lt %[7]d ]; do i=$((i+1)); done
          %[5]s
`, host, busybox, msg+"-"+ft.name, before, after, extra, fedBurnLoops)
	}
	for _, ft := range fed.tenants {
		ft.owner, ft.repo = ft.forge.CreateRepo(t, "pkgs-"+ft.name)
		ft.forge.PutFile(t, ft.owner, ft.repo, "hello.nix", sample)
	}
	a.forge.PutFile(t, a.owner, a.repo, "nondet.nix", testfs.Read(t, filepath.Join("testdata", "nondet.nix")))
	buildDisputed := fmt.Sprintf("provenix build src/nondet.nix -A nondet --arg busybox=%s --argstr name=%s --argstr salt=%q",
		busybox, fedDisputedName, fed.salt)
	a.forge.PutFile(t, a.owner, a.repo, ".forgejo/workflows/build.yml", []byte(fmt.Sprintf(`on: push
jobs:
  build:
    runs-on: nix
    env:
      TENANT: a
    steps:
%[3]s      - name: meet b
        run: |
          trap times EXIT
          %[2]s
      - name: try b's files
        run: |
          trap times EXIT
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
`, sh, barrier, build(a, ":", buildDisputed, "touch "+sh+"/a-built"), a.file(tenant.FileBuilderKey), b.file(tenant.FileBuilderKey))))
	waitForFile(t, filepath.Join(sh, "a-built"), 5*time.Minute, func() error {
		return a.forge.JobFailed(t, a.owner, a.repo)
	})

	b.forge.PutFile(t, b.owner, b.repo, ".forgejo/workflows/build.yml", []byte(fmt.Sprintf(`on: push
jobs:
  build:
    runs-on: nix
    env:
      TENANT: b
    steps:
      - name: meet a
        run: |
          trap times EXIT
          %[2]s
      - name: open up and wait
        run: |
          trap times EXIT
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
%[3]s`, sh, barrier, build(b, fmt.Sprintf("for i in $(seq 3000); do [ -e %[1]s/a-done ] && break; sleep 0.1; done; [ -e %[1]s/a-done ] && sleep 2", sh), ":", ":"))))

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
		if ft == a {
			m := regexp.MustCompile(`out\s+(/nix/store/[0-9a-z]{32}-` + fedDisputedName + `)\s`).FindStringSubmatch(ft.log)
			if m == nil {
				t.Fatalf("no %s output in tenant a's log:\n%s", fedDisputedName, ft.log)
			}
			fed.disputedPath = m[1]
		}
		ft.sha = ft.forge.HeadSHA(t, ft.owner, ft.repo)
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

	checkFederationUsage(t, ctx, fed)
	checkFederationCommitStatus(t, ctx, fed)
}

// fedDisputedName is the name of the derivation that a's job and the
// hostile builder build differently.
const fedDisputedName = "fed-disputed"

// fedBurnLoops makes each build step burn about 2 s of CPU in the job's
// own shell, as runner's TestUsageOfAJob does.
const fedBurnLoops = 400000

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

// checkFederationUsage: `provenix usage --by tenant`, run with each
// tenant's pusher credentials (one NATS account per run, as an operator
// bills each tenant), attributes to the tenant the CPU seconds its job's
// steps measured (the sum of every step's `times`: the shell's own and
// its children's) within 10%, and the bytes built (the NAR sizes, in the
// host's store, of every output the job's log says the runner attested)
// exactly; `--by repo` names the tenant's repository on its own forge.
func checkFederationUsage(t *testing.T, ctx context.Context, fed *federation) {
	t.Helper()
	timesLine := regexp.MustCompile(`(?m)(\d+)m(\d+(?:\.\d+)?)s (\d+)m(\d+(?:\.\d+)?)s\s*$`)
	attested := regexp.MustCompile(`provenix: attested (/nix/store/\S+\.drv) \(`)
	for _, ft := range fed.tenants {
		var measured float64
		lines := timesLine.FindAllStringSubmatch(ft.log, -1)
		for _, m := range lines {
			for _, i := range []int{1, 3} {
				mins, _ := strconv.ParseFloat(m[i], 64)
				sec, _ := strconv.ParseFloat(m[i+1], 64)
				measured += 60*mins + sec
			}
		}
		// Three steps, two lines each (the shell, its children).
		if len(lines) != 6 {
			t.Fatalf("tenant %s's log has %d lines of times, want 6:\n%s", ft.name, len(lines), ft.log)
		}
		if measured < 1 {
			t.Fatalf("tenant %s's steps burnt only %.3f s: too little to compare", ft.name, measured)
		}
		var built int64
		drvs := attested.FindAllStringSubmatch(ft.log, -1)
		for _, m := range drvs {
			for _, out := range strings.Fields(nixStore(t, ctx, "-q", "--outputs", m[1])) {
				n, err := strconv.ParseInt(strings.TrimSpace(nixStore(t, ctx, "-q", "--size", out)), 10, 64)
				if err != nil {
					t.Fatal(err)
				}
				built += n
			}
		}
		if len(drvs) == 0 || built == 0 {
			t.Fatalf("nothing attested in tenant %s's log:\n%s", ft.name, ft.log)
		}

		// The runner records a job once its outputs are attested, which
		// may be just after the forge saw the job end.
		var row *usage.Row
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			row = fedUsageRow(t, ctx, fed, ft, usage.ByTenant, ft.name)
			if row != nil && row.Jobs > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("provenix usage shows no job of tenant %s: %+v", ft.name, row)
			}
		}
		t.Logf("tenant %s: the steps measured %.3f s CPU, usage records %.3f s; bytes built %d (want %d, %d derivations); wall %.1f s",
			ft.name, measured, row.CPUSeconds, row.BytesBuilt, built, len(drvs), row.WallSeconds)
		if row.Jobs != 1 {
			t.Errorf("tenant %s: %d jobs recorded, want 1", ft.name, row.Jobs)
		}
		if d := row.CPUSeconds - measured; d < -measured/10 || d > measured/10 {
			t.Errorf("tenant %s: recorded CPU %.3f s, its steps' own times %.3f s: more than 10%% apart", ft.name, row.CPUSeconds, measured)
		}
		if row.BytesBuilt != built {
			t.Errorf("tenant %s: bytes built %d, want %d (the NAR sizes of the attested outputs)", ft.name, row.BytesBuilt, built)
		}

		repo := strings.TrimPrefix(ft.forge.URL, "http://") + "/" + ft.owner + "/" + ft.repo
		if r := fedUsageRow(t, ctx, fed, ft, usage.ByRepo, repo); r == nil || r.Jobs != 1 || r.Tenant != ft.name {
			t.Errorf("provenix usage --by repo as tenant %s: row %q is %+v, want its one job", ft.name, repo, r)
		}
	}
}

// fedUsageRow runs `provenix usage --since 1h --by by --json --tenant T`
// with ft's pusher credentials (which may read usage.T.> only, hence
// --tenant) and returns the row of key, or nil. Every row must be ft's
// own.
func fedUsageRow(t *testing.T, ctx context.Context, fed *federation, ft *fedTenant, by usage.By, key string) *usage.Row {
	t.Helper()
	cmd := exec.CommandContext(ctx, fed.bin, "usage", "--since", "1h", "--by", string(by), "--json", "--tenant", ft.name,
		"--nats-url", fed.natsURL, "--nats-nkey", ft.file("pusher.nk"), "--data-dir", t.TempDir())
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("provenix usage --by %s as tenant %s: %v\n%s", by, ft.name, err, stderr.String())
	}
	var rep usage.Report
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("provenix usage --json: %v\n%s", err, out)
	}
	if rep.Refused != 0 {
		t.Errorf("provenix usage as tenant %s refused %d records", ft.name, rep.Refused)
	}
	var found *usage.Row
	for i, r := range rep.Rows {
		if r.Tenant != ft.name {
			t.Errorf("provenix usage with tenant %s's credentials shows tenant %s's row %+v", ft.name, r.Tenant, r)
		}
		if r.Key == key {
			found = &rep.Rows[i]
		}
	}
	return found
}

// nixStore runs nix-store on the host's store and returns its output.
func nixStore(t *testing.T, ctx context.Context, args ...string) string {
	t.Helper()
	out, err := exec.CommandContext(ctx, "nix-store", args...).Output()
	if err != nil {
		t.Fatalf("nix-store %v: %v", args, err)
	}
	return string(out)
}

// checkFederationCommitStatus: each tenant's pusher, with a token of its
// own forge, shows on the commit its job ran for `provenix/<system>` =
// success with the quorum count and a link to the provenance in its own
// cache. Then a hostile builder, trusted by a's policy, publishes another
// NAR of the fed-disputed derivation that a's job built and a's policy
// needs two builders for: the dispute turns a's commit to failure (the
// runner's vote names that commit), while b's commit stays success.
func checkFederationCommitStatus(t *testing.T, ctx context.Context, fed *federation) {
	t.Helper()
	sys, err := exec.CommandContext(ctx, "nix-instantiate", "--eval", "-E", "builtins.currentSystem").Output()
	if err != nil {
		t.Fatal(err)
	}
	context_ := "provenix/" + strings.Trim(strings.TrimSpace(string(sys)), `"`)
	agree := regexp.MustCompile(`^(\d+ paths published; [^:]+: )?1 of 1 independent builders agree$`)
	for _, ft := range fed.tenants {
		st := ft.forge.WaitStatus(t, ft.owner, ft.repo, ft.sha, context_, gitea.StatusSuccess, time.Minute)
		t.Logf("tenant %s's forge: %s = %s %q → %s", ft.name, context_, st.State, st.Description, st.TargetURL)
		if !agree.MatchString(st.Description) || !strings.HasPrefix(st.TargetURL, ft.cacheURL+"/") {
			t.Errorf("tenant %s's forge: status %q → %q, want the quorum count and a link into its cache %s", ft.name, st.Description, st.TargetURL, ft.cacheURL)
		}
		if !strings.Contains(st.Description, "paths published") && st.TargetURL != ft.cacheURL+"/"+cachelayout.ProvenanceKey(ft.outPath) {
			t.Errorf("tenant %s's forge: status links to %q, want the provenance of %s", ft.name, st.TargetURL, ft.outPath)
		}
	}

	a, b := fed.tenants[0], fed.tenants[1]
	stdout, stderr, code := cli(t, ctx, "build", "--json", filepath.Join("testdata", "nondet.nix"), "-A", "nondet",
		"--store", t.TempDir(), "--key", fed.hostileKey, "--builder-id", "a-hostile",
		"--nats-url", fed.natsURL, "--nats-nkey", a.file("admin.nk"), "--tenant", a.name, "--nix-option", "substituters=",
		"--arg", "busybox="+fed.busybox, "--argstr", "name="+fedDisputedName, "--argstr", "salt="+fed.salt)
	var pubs []jsonPublished
	if code != 0 || json.Unmarshal([]byte(stdout), &pubs) != nil || len(pubs) != 1 || len(pubs[0].Outputs) != 1 {
		t.Fatalf("the hostile build: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if pubs[0].Outputs[0].Path != fed.disputedPath {
		t.Fatalf("the hostile builder built %s, a's job %s", pubs[0].Outputs[0].Path, fed.disputedPath)
	}
	st := a.forge.WaitStatus(t, a.owner, a.repo, a.sha, context_, gitea.StatusFailure, time.Minute)
	t.Logf("tenant a's forge after the hostile build: %s = %s %q", context_, st.State, st.Description)
	if want := regexp.MustCompile(`^1 of \d+ paths disputed; ` + fedDisputedName + `: 2 builders gave 2 different answers$`); !want.MatchString(st.Description) || st.TargetURL != "" {
		t.Errorf("tenant a's forge after the dispute: %q → %q", st.Description, st.TargetURL)
	}
	if st := b.forge.Status(t, b.owner, b.repo, b.sha, context_); st == nil || st.State != gitea.StatusSuccess {
		t.Errorf("tenant b's forge after a's dispute: %+v, want still success", st)
	}
	if code := get(t, a.cacheURL+"/"+cachelayout.NarinfoKey(fed.disputedPath), a.user, a.pwd); code != http.StatusNotFound {
		t.Errorf("the disputed path in a's cache: %d, want 404", code)
	}
}
