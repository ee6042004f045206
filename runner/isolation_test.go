package runner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"

	"codeberg.org/provenix/provenix/internal/testfs"
	"codeberg.org/provenix/provenix/runner/capture"
)

// testPool are job users scripts/install-deps.sh creates (in nix-users).
var testPool = []string{"provenix-job-0", "provenix-job-1", "provenix-job-2"}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("isolation tests run jobs as other users and must run as root (CI does); the job user pool comes from scripts/install-deps.sh test")
	}
}

// sharedDir is a directory every job user may write to (sticky, like /tmp).
func sharedDir(t *testing.T) string {
	t.Helper()
	d := testfs.OpenDir(t)
	if err := os.Chmod(d, 0o1777); err != nil {
		t.Fatal(err)
	}
	return d
}

// running reports whether pid exists and is not a zombie.
func running(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || i+2 >= len(b) || (b[i+2] != 'Z' && b[i+2] != 'X')
}

func pidsIn(t *testing.T, path string) []int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		n, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("%s: %q", path, f)
		}
		out = append(out, n)
	}
	return out
}

// daemonSteps leaves three daemons behind: setsid, double fork, nohup.
func daemonSteps(shared string) string {
	return fmt.Sprintf(`      - name: leave daemons
        run: |
          setsid sh -c 'echo $$ >> %[1]s/pids; exec sleep 300' </dev/null >/dev/null 2>&1 &
          ( trap '' HUP; sh -c 'echo $$ >> %[1]s/pids; exec sleep 300' </dev/null >/dev/null 2>&1 & )
          nohup sh -c 'echo $$ >> %[1]s/pids; exec sleep 300' </dev/null >/dev/null 2>&1 &
          for i in $(seq 100); do [ "$(wc -l < %[1]s/pids)" -ge 3 ] && exit 0; sleep 0.05; done; exit 1
`, shared)
}

// TestLeftoverProcessesKilled: daemons a job starts (setsid, double fork,
// nohup) are gone when it ends, and the job log says how many were
// killed: by the job's cgroup, and without one by the job's own uid.
func TestLeftoverProcessesKilled(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		name string
		mod  func(*Options)
	}{
		{"cgroup", nil},
		{"uid", func(o *Options) { o.JobUsers = testPool[:1]; o.DisableCgroup = true }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, tc.mod)
			if tc.name == "cgroup" && f.runner.cgroups == nil {
				t.Fatal("no writable cgroup v2 hierarchy on this Linux host")
			}
			shared := sharedDir(t)
			payload := "on: push\njobs:\n  j:\n    runs-on: nix\n    steps:\n" + daemonSteps(shared)
			id := f.srv.AddTask(task(t, payload, nil), "nix")
			if got := runOne(t, f); got != runnerv1.Result_RESULT_SUCCESS {
				st, _ := f.srv.Task(id)
				t.Fatalf("result %v\n%s", got, strings.Join(st.LogLines(), "\n"))
			}
			pids := pidsIn(t, filepath.Join(shared, "pids"))
			t.Cleanup(func() {
				for _, p := range pids {
					if running(p) {
						_ = syscallKill(p)
					}
				}
			})
			if len(pids) != 3 {
				t.Fatalf("daemons %v", pids)
			}
			for _, p := range pids {
				if running(p) {
					t.Errorf("daemon %d outlived its job", p)
				}
			}
			st, _ := f.srv.Task(id)
			if log := strings.Join(st.LogLines(), "\n"); !strings.Contains(log, "killed 3 leftover processes of the job") {
				t.Errorf("the job log does not count the leftovers:\n%s", log)
			}
		})
	}
}

// TestConcurrentJobsCannotReachEachOther runs a victim and a spy at once
// (capacity 2). The victim holds a secret in its environment, files in
// its work directory and TMPDIR, and even opens its socket directory and
// publishes its socket credential. The spy, another job, can read none of
// it and the runner refuses the credential from it; the runner refuses it
// from any other process too (here the test, as root), and after the
// victim's end the credential leads nowhere.
func TestConcurrentJobsCannotReachEachOther(t *testing.T) {
	requireRoot(t)
	f := newFixture(t, func(o *Options) { o.Capacity = 2; o.JobUsers = testPool[:2] })
	sh := sharedDir(t)
	const secret = "victim-secret-value-7f3a"
	victim := fmt.Sprintf(`on: push
jobs:
  victim:
    runs-on: nix
    steps:
      - name: hold secrets
        env:
          API_KEY: ${{ secrets.API_KEY }}
        run: |
          echo "victim-file-content" > "$PWD/victim.txt"
          echo "victim-tmp-content" > "$TMPDIR/victim-tmp.txt"
          sockdir=$(dirname "$PROVENIX_RUNNER_SOCKET")
          chmod o+x "$(dirname "$sockdir")" "$sockdir"
          chmod 0777 "$PROVENIX_RUNNER_SOCKET"
          id -u > %[1]s/victim-uid
          printf '%%s\n' "$$" "$PWD/victim.txt" "$TMPDIR/victim-tmp.txt" "$PROVENIX_RUNNER_SOCKET" "$PROVENIX_RUNNER_TOKEN" > %[1]s/victim.tmp
          mv %[1]s/victim.tmp %[1]s/victim
          for i in $(seq 1200); do [ -e %[1]s/release ] && exit 0; sleep 0.05; done; exit 1
`, sh)
	spy := fmt.Sprintf(`on: push
jobs:
  spy:
    runs-on: nix
    steps:
      - name: spy
        run: |
          for i in $(seq 1200); do [ -e %[1]s/victim ] && break; sleep 0.05; done
          { read pid; read file; read tmpf; read sock; read tok; } < %[1]s/victim
          r() { if cat "$1" >/dev/null 2>&1; then echo LEAK; else echo SAFE; fi; }
          code=$(curl -s -o /dev/null -w '%%{http_code}' --unix-socket "$sock" -H "Authorization: Bearer $tok" \
            -H 'Content-Type: application/json' -d '{"drvs":["/nix/store/g5s1vk624lv2dj6jhzgdvygm842l9hiv-x.drv"]}' http://runner/v1/attest || true)
          {
            echo "environ $(r /proc/$pid/environ)"
            echo "workdir $(r "$file")"
            echo "tmpdir $(r "$tmpf")"
            echo "socket $code"
            echo "uid $(id -u)"
          } > %[1]s/spy.tmp
          mv %[1]s/spy.tmp %[1]s/spy
`, sh)
	vid := f.srv.AddTask(task(t, victim, map[string]string{"API_KEY": secret}), "nix")
	sid := f.srv.AddTask(task(t, spy, nil), "nix")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.runner.Run(ctx) }()
	defer func() { cancel(); <-done }()

	waitFile(t, filepath.Join(sh, "spy"), 2*time.Minute)
	report, _ := os.ReadFile(filepath.Join(sh, "spy"))
	info := strings.Split(strings.TrimSpace(string(testfs.Read(t, filepath.Join(sh, "victim")))), "\n")
	if len(info) != 5 {
		t.Fatalf("victim info %q", info)
	}
	// The test process replays the victim's credential while the victim
	// runs: it has the token and, as root, reaches the socket; the kernel
	// says it is not the job.
	_, err := (&capture.Client{Socket: info[3], Token: info[4]}).Attest(context.Background(), []string{"/nix/store/g5s1vk624lv2dj6jhzgdvygm842l9hiv-x.drv"})
	if !errors.Is(err, capture.ErrPeer) {
		t.Errorf("replay of the victim's credential by another uid: %v, want %v", err, capture.ErrPeer)
	}
	if err := os.WriteFile(filepath.Join(sh, "release"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer wcancel()
	for _, id := range []int64{vid, sid} {
		st, err := f.srv.WaitTask(wctx, id)
		if err != nil || st.Result != runnerv1.Result_RESULT_SUCCESS {
			t.Fatalf("task %d: %v %v\n%s", id, err, st.Result, strings.Join(st.LogLines(), "\n"))
		}
		if log := strings.Join(st.LogLines(), "\n"); strings.Contains(log, secret) {
			t.Errorf("the secret reached a log:\n%s", log)
		}
	}
	t.Logf("spy report:\n%s", report)
	for _, want := range []string{"environ SAFE", "workdir SAFE", "tmpdir SAFE", "socket 403"} {
		if !strings.Contains(string(report), want+"\n") {
			t.Errorf("spy report lacks %q:\n%s", want, report)
		}
	}
	if vu := strings.TrimSpace(string(testfs.Read(t, filepath.Join(sh, "victim-uid")))); strings.Contains(string(report), "uid "+vu+"\n") {
		t.Errorf("victim and spy ran as the same uid %s", vu)
	}
	// After the victim's end the credential is worthless: no socket.
	rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer rcancel()
	if _, err := (&capture.Client{Socket: info[3], Token: info[4]}).Attest(rctx, []string{"/nix/store/g5s1vk624lv2dj6jhzgdvygm842l9hiv-x.drv"}); err == nil {
		t.Error("replay after the victim ended was accepted")
	}
	if _, err := os.Lstat(info[3]); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("victim's socket still exists: %v", err)
	}
}

// TestPoolThreeJobsThreeUIDs: with capacity 3, three jobs running at once
// run as three different users; each leaves a daemon, and when the users
// are handed out again no process of the last round is alive.
func TestPoolThreeJobsThreeUIDs(t *testing.T) {
	requireRoot(t)
	f := newFixture(t, func(o *Options) { o.Capacity = 3; o.JobUsers = testPool })
	sh := sharedDir(t)
	job := func(round, n int) string {
		return fmt.Sprintf(`on: push
jobs:
  j:
    runs-on: nix
    steps:
      - run: |
          touch %[1]s/started-%[2]d-%[3]d
          for i in $(seq 1200); do [ "$(ls %[1]s | grep -c '^started-%[2]d-')" -ge 3 ] && break; sleep 0.05; done
          ps -o pid=,stat=,comm= -u "$(id -u)" > %[1]s/ps-%[2]d-%[3]d
          awk '$2 !~ /^Z/ {print $1}' %[1]s/ps-%[2]d-%[3]d > %[1]s/seen-%[2]d-%[3]d
          setsid sh -c 'echo $$ > %[1]s/daemon-%[2]d-%[3]d; exec sleep 300' </dev/null >/dev/null 2>&1 &
          id -u > %[1]s/uid-%[2]d-%[3]d
          for i in $(seq 100); do [ -s %[1]s/daemon-%[2]d-%[3]d ] && exit 0; sleep 0.05; done; exit 1
`, sh, round, n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.runner.Run(ctx) }()
	defer func() { cancel(); <-done }()
	var daemons []int
	for round := 0; round < 2; round++ {
		var ids []int64
		for n := 0; n < 3; n++ {
			ids = append(ids, f.srv.AddTask(task(t, job(round, n), nil), "nix"))
		}
		wctx, wcancel := context.WithTimeout(context.Background(), 2*time.Minute)
		for _, id := range ids {
			st, err := f.srv.WaitTask(wctx, id)
			if err != nil || st.Result != runnerv1.Result_RESULT_SUCCESS {
				wcancel()
				t.Fatalf("round %d task %d: %v %v\n%s", round, id, err, st.Result, strings.Join(st.LogLines(), "\n"))
			}
		}
		wcancel()
		uids := map[string]bool{}
		for n := 0; n < 3; n++ {
			uids[strings.TrimSpace(string(testfs.Read(t, filepath.Join(sh, fmt.Sprintf("uid-%d-%d", round, n)))))] = true
			seen := pidsIn(t, filepath.Join(sh, fmt.Sprintf("seen-%d-%d", round, n)))
			for _, d := range daemons {
				if slices.Contains(seen, d) {
					t.Errorf("round %d job %d: its uid still ran process %d of the round before (saw %v: %s)", round, n, d, seen, testfs.Read(t, filepath.Join(sh, fmt.Sprintf("ps-%d-%d", round, n))))
				}
			}
		}
		if len(uids) != 3 {
			t.Fatalf("round %d: three concurrent jobs ran as %v", round, uids)
		}
		daemons = daemons[:0]
		for n := 0; n < 3; n++ {
			daemons = append(daemons, pidsIn(t, filepath.Join(sh, fmt.Sprintf("daemon-%d-%d", round, n)))...)
		}
		for _, d := range daemons {
			if running(d) {
				t.Errorf("round %d: daemon %d outlived its job", round, d)
			}
		}
	}
}

func waitFile(t *testing.T, path string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not appear within %v", path, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// outsideTmp is a directory jobs can reach that is not under /tmp or
// /var/tmp, which a job's own /tmp covers: a work directory for jobs
// with a private /tmp.
func outsideTmp(t *testing.T) string {
	t.Helper()
	work, err := os.MkdirTemp("/run", "provenix-test-work-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(work) })
	if err := os.Chmod(work, 0o755); err != nil {
		t.Fatal(err)
	}
	return work
}

// TestPrivateTmp: a job's /tmp and /var/tmp are its own — it sees
// nothing of the host's, and what it writes there stays out of the
// host's and goes with the job.
func TestPrivateTmp(t *testing.T) {
	requireRoot(t)
	work := outsideTmp(t)
	f := newFixture(t, func(o *Options) { o.JobUsers = testPool[:1]; o.WorkdirParent = filepath.Join(work, "work") })
	if !f.runner.privateTmp {
		t.Fatal("no mount namespace for jobs on this Linux host")
	}
	hostFile, err := os.CreateTemp("/tmp", "host-visible-*")
	if err != nil {
		t.Fatal(err)
	}
	hostFile.Close()
	t.Cleanup(func() { os.Remove(hostFile.Name()) })
	if err := os.Chmod(hostFile.Name(), 0o644); err != nil {
		t.Fatal(err)
	}
	mark := fmt.Sprintf("job-wrote-%d", time.Now().UnixNano())
	payload := fmt.Sprintf(`on: push
jobs:
  j:
    runs-on: nix
    steps:
      - run: |
          if [ -e %[1]s ]; then echo "SEES-$((1+1))-HOST"; fi
          echo x > /tmp/%[2]s
          echo x > /var/tmp/%[2]s
          echo "tmp is $(stat -c '%%U %%a' /tmp)"
          [ -z "$(ls -A /tmp/ | grep -v '^job-wrote-')" ] || echo "SEES-$((2+2))-OTHERS"
`, hostFile.Name(), mark)
	id := f.srv.AddTask(task(t, payload, nil), "nix")
	if got := runOne(t, f); got != runnerv1.Result_RESULT_SUCCESS {
		st, _ := f.srv.Task(id)
		t.Fatalf("result %v\n%s", got, strings.Join(st.LogLines(), "\n"))
	}
	st, _ := f.srv.Task(id)
	log := strings.Join(st.LogLines(), "\n")
	if strings.Contains(log, "SEES-2-HOST") || strings.Contains(log, "SEES-4-OTHERS") {
		t.Errorf("the job saw the host's /tmp:\n%s", log)
	}
	if !strings.Contains(log, "tmp is "+testPool[0]+" 700") {
		t.Errorf("the job's /tmp is not its own, mode 0700:\n%s", log)
	}
	for _, d := range []string{"/tmp", "/var/tmp"} {
		if _, err := os.Lstat(filepath.Join(d, mark)); !errors.Is(err, os.ErrNotExist) {
			os.Remove(filepath.Join(d, mark))
			t.Errorf("the job's file reached the host's %s: %v", d, err)
		}
	}
}
