package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testfs"
	"codeberg.org/provenix/provenix/internal/testgitea"
	"codeberg.org/provenix/provenix/internal/testlog"
	"codeberg.org/provenix/provenix/internal/testproc"
	"codeberg.org/provenix/provenix/runner/capture"
	"codeberg.org/provenix/provenix/up"
)

// startRunnerDaemon starts `provenix runner daemon` with the given
// provenix/runner settings appended to a base config, and stops it at the
// end of the test (or when stop is called).
func startRunnerDaemon(t *testing.T, bin, dataDir, runDir, name string, capacity int, extra string, p up.Paths, natsURL string) (stop func(), exited <-chan struct{}) {
	t.Helper()
	cfg := fmt.Sprintf(`log:
  level: debug
runner:
  file: %s/.runner
  fetch_interval: 200ms
  report_interval: 200ms
  timeout: 5m
  capacity: %d
  envs:
    NIX_CONFIG: "substituters =\nexperimental-features = nix-command"
host:
  workdir_parent: %s
%s
`, runDir, capacity, filepath.Join(testfs.OpenDir(t), "work"), extra)
	cfg = strings.Replace(cfg, "provenix:\n", fmt.Sprintf("provenix:\n  key: %s\n  nats_url: %s\n  nats_token_file: %s\n", p.BuilderKey(), natsURL, p.NATSToken()), 1)
	cfgPath := filepath.Join(runDir, name+".yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return runRunnerDaemon(t, bin, dataDir, runDir, cfgPath, name, &testlog.Buffer{})
}

// runRunnerDaemon starts `provenix runner daemon --config cfgPath` in
// runDir, its output into log, and stops it at the end of the test (or
// when stop is called), showing its log if the test failed.
func runRunnerDaemon(t *testing.T, bin, dataDir, runDir, cfgPath, name string, log *testlog.Buffer) (stop func(), exited <-chan struct{}) {
	t.Helper()
	d := exec.Command(bin, "--data-dir", dataDir, "runner", "daemon", "--config", cfgPath)
	d.Dir = runDir
	d.Env = append(os.Environ(), "NIX_CONFIG=substituters =\nexperimental-features = nix-command")
	d.Stdout, d.Stderr = log, log
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = d.Wait(); close(done) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		_ = d.Process.Signal(syscall.SIGTERM)
		<-done
		if t.Failed() {
			t.Logf("runner %s log:\n%s", name, log.String())
		}
	}
	t.Cleanup(stop)
	return stop, done
}

// TestRunnerIsolationAgainstGitea runs three jobs of three repositories at
// once on one runner (capacity 3, a pool of three job users) against a
// real Gitea, and a cache whose policy requires isolation:
//   - the victim builds and holds a secret, files in its work directory
//     and TMPDIR, leaves setsid and double-forked daemons, and even opens
//     its socket directory and leaks its socket credential;
//   - the spy reads none of it, and the runner refuses the leaked
//     credential from it (another uid) and from the test (root), and
//     after the victim's end from anyone;
//   - the three jobs run as three uids; the daemons are gone with the job;
//   - the victim's build is published under require_isolation, and the
//     same policy refuses a build from a runner without isolation.
func TestRunnerIsolationAgainstGitea(t *testing.T) {
	busybox := requireRootRunner(t, "provenix-job-N")
	ctx := testctx.New(t, 10*time.Minute)
	bin := buildProvenix(t)
	forge := testgitea.Start(t)

	const runnerName = "iso-runner"
	builderID := "forgejo-runner:" + runnerName
	var pusherLog testlog.Buffer
	stack := startRunnerStack(t, builderID, "require_isolation: [uid, cgroup]\n",
		up.Config{DataDir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(&pusherLog, nil))})
	p := stack.Paths()
	dataDir := p.Dir

	runDir := t.TempDir()
	reg := exec.CommandContext(ctx, bin, "runner", "register", "--no-interactive",
		"--instance", forge.URL, "--token", forge.RunnerRegistrationToken(t), "--name", runnerName, "--labels", "nix")
	reg.Dir = runDir
	if out, err := reg.CombinedOutput(); err != nil {
		t.Fatalf("runner register: %v\n%s", err, out)
	}
	stopIsolated, exited := startRunnerDaemon(t, bin, dataDir, runDir, "isolated", 3,
		"provenix:\n  job_users: [\"provenix-job-{5..7}\"]\n", p, stack.NATSURL())

	sh := testfs.OpenDir(t)
	if err := os.Chmod(sh, 0o1777); err != nil {
		t.Fatal(err)
	}
	sample, err := os.ReadFile(filepath.Join("..", "..", "examples", "hello.nix"))
	if err != nil {
		t.Fatal(err)
	}
	host := strings.TrimPrefix(forge.URL, "http://")
	msg := uniqueMessage(t)
	const secret = "gitea-victim-secret-5c1d"
	// Each job announces itself, then waits until all three run: they
	// really are concurrent.
	barrier := fmt.Sprintf(`id -u > %[1]s/uid-$JOBNAME
          touch %[1]s/started-$JOBNAME
          for i in $(seq 1200); do [ "$(ls %[1]s | grep -c '^started-')" -ge 3 ] && break; sleep 0.1; done`, sh)
	vOwner, vRepo := forge.CreateRepo(t, "victim")
	forge.SetSecret(t, vOwner, vRepo, "API_KEY", secret)
	forge.PutFile(t, vOwner, vRepo, "hello.nix", sample)
	forge.PutFile(t, vOwner, vRepo, ".forgejo/workflows/build.yml", []byte(fmt.Sprintf(`on: push
jobs:
  victim:
    runs-on: nix
    env:
      JOBNAME: victim
    steps:
      - name: build
        run: |
          git clone -q "http://x-access-token:${{ github.token }}@%[2]s/${{ github.repository }}.git" src
          provenix build src/hello.nix -A hello --arg busybox=%[3]s --argstr message=%[4]q
      - name: daemons
        run: |
          setsid sh -c 'echo $$ >> %[1]s/daemons; exec sleep 300' </dev/null >/dev/null 2>&1 &
          ( trap '' HUP; sh -c 'echo $$ >> %[1]s/daemons; exec sleep 300' </dev/null >/dev/null 2>&1 & )
          for i in $(seq 100); do [ "$(wc -l < %[1]s/daemons)" -ge 2 ] && break; sleep 0.05; done
      - name: hold secrets
        env:
          API_KEY: ${{ secrets.API_KEY }}
        run: |
          %[5]s
          echo "victim-file-content" > "$PWD/victim.txt"
          echo "victim-tmp-content" > "$TMPDIR/victim-tmp.txt"
          sockdir=$(dirname "$PROVENIX_RUNNER_SOCKET")
          chmod o+x "$(dirname "$sockdir")" "$sockdir"
          chmod 0777 "$PROVENIX_RUNNER_SOCKET"
          printf '%%s\n' "$$" "$PWD/victim.txt" "$TMPDIR/victim-tmp.txt" "$PROVENIX_RUNNER_SOCKET" "$PROVENIX_RUNNER_TOKEN" > %[1]s/victim.tmp
          mv %[1]s/victim.tmp %[1]s/victim
          for i in $(seq 3000); do [ -e %[1]s/release ] && exit 0; sleep 0.1; done; exit 1
`, sh, host, busybox, msg, barrier)))

	sOwner, sRepo := forge.CreateRepo(t, "spy")
	forge.PutFile(t, sOwner, sRepo, ".forgejo/workflows/spy.yml", []byte(fmt.Sprintf(`on: push
jobs:
  spy:
    runs-on: nix
    env:
      JOBNAME: spy
    steps:
      - name: spy
        run: |
          %[2]s
          for i in $(seq 3000); do [ -e %[1]s/victim ] && break; sleep 0.1; done
          { read pid; read file; read tmpf; read sock; read tok; } < %[1]s/victim
          r() { if cat "$1" >/dev/null 2>&1; then echo LEAK; else echo SAFE; fi; }
          code=$(curl -s -o /dev/null -w '%%{http_code}' --unix-socket "$sock" -H "Authorization: Bearer $tok" \
            -H 'Content-Type: application/json' -d '{"drvs":["/nix/store/g5s1vk624lv2dj6jhzgdvygm842l9hiv-x.drv"]}' http://runner/v1/attest || true)
          {
            echo "environ $(r /proc/$pid/environ)"
            echo "workdir $(r "$file")"
            echo "tmpdir $(r "$tmpf")"
            echo "socket $code"
          } > %[1]s/spy.tmp
          mv %[1]s/spy.tmp %[1]s/spy
`, sh, barrier)))

	tOwner, tRepo := forge.CreateRepo(t, "third")
	forge.PutFile(t, tOwner, tRepo, ".forgejo/workflows/third.yml", []byte(fmt.Sprintf(`on: push
jobs:
  third:
    runs-on: nix
    env:
      JOBNAME: third
    steps:
      - run: |
          %[1]s
`, barrier)))

	waitForFile(t, filepath.Join(sh, "spy"), 5*time.Minute, func() error {
		select {
		case <-exited:
			return errors.New("the runner exited")
		default:
			return nil
		}
	})
	info := strings.Split(strings.TrimSpace(string(testfs.Read(t, filepath.Join(sh, "victim")))), "\n")
	if len(info) != 5 {
		t.Fatalf("victim info %q", info)
	}
	// The test (root, so past the socket's file mode) replays the leaked
	// credential while the victim runs.
	drv := "/nix/store/g5s1vk624lv2dj6jhzgdvygm842l9hiv-x.drv"
	if _, err := (&capture.Client{Socket: info[3], Token: info[4]}).Attest(ctx, []string{drv}); !errors.Is(err, capture.ErrPeer) {
		t.Errorf("replay of the victim's credential by root: %v, want %v", err, capture.ErrPeer)
	}
	if err := os.WriteFile(filepath.Join(sh, "release"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	logs := map[string]string{}
	for _, r := range [][2]string{{vOwner, vRepo}, {sOwner, sRepo}, {tOwner, tRepo}} {
		job := forge.WaitJob(t, r[0], r[1], 5*time.Minute)
		logs[r[1]] = forge.JobLogs(t, r[0], r[1], job.ID)
		if job.Conclusion != "success" {
			t.Fatalf("%s: job %s\n%s", r[1], job.Conclusion, logs[r[1]])
		}
		if strings.Contains(logs[r[1]], secret) {
			t.Errorf("%s: the secret reached the log", r[1])
		}
	}
	report := string(testfs.Read(t, filepath.Join(sh, "spy")))
	t.Logf("spy report:\n%s", report)
	for _, want := range []string{"environ SAFE", "workdir SAFE", "tmpdir SAFE", "socket 403"} {
		if !strings.Contains(report, want+"\n") {
			t.Errorf("spy report lacks %q:\n%s", want, report)
		}
	}
	uids := map[string]bool{}
	for _, j := range []string{"victim", "spy", "third"} {
		uids[strings.TrimSpace(string(testfs.Read(t, filepath.Join(sh, "uid-"+j))))] = true
	}
	if len(uids) != 3 {
		t.Errorf("three concurrent jobs ran as uids %v", uids)
	}
	for _, f := range strings.Fields(string(testfs.Read(t, filepath.Join(sh, "daemons")))) {
		pid, _ := strconv.Atoi(f)
		if processRunning(pid) {
			t.Errorf("daemon %d outlived the victim's job", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if !regexp.MustCompile(`killed [2-9] leftover processes of the job`).MatchString(logs[vRepo]) {
		t.Errorf("the victim's log does not count its leftover processes:\n%s", logs[vRepo])
	}
	rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
	defer rcancel()
	if _, err := (&capture.Client{Socket: info[3], Token: info[4]}).Attest(rctx, []string{drv}); err == nil {
		t.Error("replay after the victim's job ended was accepted")
	}

	// The victim's build carries [uid, cgroup]: published under the policy.
	out := regexp.MustCompile(`out\s+(/nix/store/[0-9a-z]{32}-provenix-hello)\s`).FindStringSubmatch(logs[vRepo])
	if out == nil {
		t.Fatalf("no output path in the victim's log:\n%s", logs[vRepo])
	}
	waitNarinfo(t, stack.CacheURL(), out[1])

	// The same runner, without isolation: its build is refused.
	stopIsolated()
	startRunnerDaemon(t, bin, dataDir, runDir, "shared", 1, "provenix:\n  job_user: provenix-job\n  no_cgroup: true\n", p, stack.NATSURL())
	lOwner, lRepo := forge.CreateRepo(t, "legacy")
	forge.PutFile(t, lOwner, lRepo, "hello.nix", sample)
	forge.PutFile(t, lOwner, lRepo, ".forgejo/workflows/build.yml", []byte(fmt.Sprintf(`on: push
jobs:
  build:
    runs-on: nix
    steps:
      - run: |
          git clone -q "http://x-access-token:${{ github.token }}@%[1]s/${{ github.repository }}.git" src
          provenix build src/hello.nix -A hello --arg busybox=%[2]s --argstr message=%[3]q
`, host, busybox, msg+"-shared")))
	job := forge.WaitJob(t, lOwner, lRepo, 5*time.Minute)
	llog := forge.JobLogs(t, lOwner, lRepo, job.ID)
	if job.Conclusion != "success" || !strings.Contains(llog, "outputs, step) as builder") {
		t.Fatalf("shared-user job %s:\n%s", job.Conclusion, llog)
	}
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(pusherLog.String(), "build isolation missing"); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the pusher did not refuse the build without isolation:\n%s", pusherLog.String())
		}
	}
	lout := regexp.MustCompile(`out\s+(/nix/store/[0-9a-z]{32}-provenix-hello)\s`).FindStringSubmatch(llog)
	if lout == nil {
		t.Fatalf("no output path in the log:\n%s", llog)
	}
	resp, err := http.Get(stack.CacheURL() + "/" + cachelayout.NarinfoKey(lout[1]))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("the build without isolation was published: %s", resp.Status)
	}
}

// requireRootRunner checks what the end-to-end tests of a root runner
// with jobs as the given users need (root, Nix and its daemon, curl) and
// returns the sample's busybox.
func requireRootRunner(t *testing.T, jobUsers string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("%s runs the runner as root with jobs as %s; run it as root (CI does) after scripts/install-deps.sh test", t.Name(), jobUsers)
	}
	busybox := requireNix(t)
	requireNixDaemon(t)
	testproc.Tool(t, "curl", "apt-get install curl")
	return busybox
}

// waitForFile waits until path exists, for up to timeout. It gives up
// at once when stopped (nil: never) says the file cannot come any more,
// and says why: the runner exited, or the job that was to write the
// file failed (with its log).
func waitForFile(t *testing.T, path string, timeout time.Duration, stopped func() error) {
	t.Helper()
	checked := time.Now()
	for deadline := time.Now().Add(timeout); ; time.Sleep(100 * time.Millisecond) {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if stopped != nil && time.Since(checked) > time.Second {
			checked = time.Now()
			if err := stopped(); err != nil {
				t.Fatalf("waiting for %s: %v", path, err)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not appear within %v", path, timeout)
		}
	}
}

// processRunning reports whether pid exists and is not a zombie.
func processRunning(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || i+2 >= len(b) || (b[i+2] != 'Z' && b[i+2] != 'X')
}
