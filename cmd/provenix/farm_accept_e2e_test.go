package main

// The farm's acceptance test (issue 13), on real parts: 'provenix up'
// with NATS over wss://, a 30-derivation graph (testdata/farm30.nix)
// submitted with quorum 2 by a process that knows only the wss:// URL,
// three 'provenix volunteer --farm' processes with their own chroot
// stores, keys and owners (one of them a liar, one killed with SIGKILL
// mid-build) plus an idle 'provenix runner daemon' (provenix.volunteer,
// a fourth owner, the host's Nix), stock nix installing the top from the cache, and a mass
// rebuild of a leaf's dependents.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	cachepush "codeberg.org/provenix/provenix/cache-push"
	"codeberg.org/provenix/provenix/farm"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testlog"
	"codeberg.org/provenix/provenix/internal/testnix"
	"codeberg.org/provenix/provenix/internal/testtls"
	"codeberg.org/provenix/provenix/queue"
	"codeberg.org/provenix/provenix/runner/rpc/rpctest"
	"codeberg.org/provenix/provenix/up"
)

// farmAcceptSlow is how long testdata/farm30.nix's slow derivation
// builds: long enough to kill a volunteer while it does.
const farmAcceptSlow = "12"

// farmWorker is one worker process of the acceptance farm.
type farmWorker struct {
	name string
	b    qbuilder
	// tmp is the worker's TMPDIR: Nix makes its build directories there
	// (nix-build-<name>.drv-N), which shows what it is building.
	tmp  string
	args []string
	log  *testlog.Buffer
	proc *provenixProc
}

func (w *farmWorker) start(t *testing.T) {
	t.Helper()
	cmd := exec.Command(os.Args[0], w.args...)
	// Its own Nix narinfo cache, as on its own machine. Within one worker
	// its farm builds and rebuilds run at once, and Nix 2.8 fails now and
	// then ("executing SQLite statement") when two processes open one
	// cache: the volunteer gives each Nix call a cache of its own
	// (nix.RealiseOptions.PrivateNarinfoCache), which this test relies on
	// (it failed CI without it, with this per-worker cache).
	cmd.Env = append(os.Environ(), envExecMain+"=1", "TMPDIR="+w.tmp, "XDG_CACHE_HOME="+filepath.Join(w.tmp, ".cache"))
	cmd.Stdout, cmd.Stderr = w.log, w.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &provenixProc{cmd: cmd, log: w.log, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() { p.signal(syscall.SIGKILL) })
	w.proc = p
}

// building reports whether Nix builds the derivation named name (its
// build directory exists) in w.
func (w *farmWorker) building(name string) bool {
	m, _ := filepath.Glob(filepath.Join(w.tmp, "nix-build-"+name+".drv-*"))
	return len(m) > 0
}

// provenixProcess runs provenix as a process of its own and returns its
// output and exit code.
func provenixProcess(t *testing.T, ctx context.Context, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Env = append(os.Environ(), envExecMain+"=1")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out.String(), errb.String(), 0
	case errors.As(err, &ee):
		return out.String(), errb.String(), ee.ExitCode()
	}
	t.Fatalf("provenix %v: %v", args, err)
	return "", "", 0
}

// TestFarmAccept: see the file's comment. The figures (builds, disputes,
// wall time) are logged.
func TestFarmAccept(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the farm's acceptance test runs a runner daemon as root; run it as root (CI does)")
	}
	bb := testnix.Busybox(t)
	requireNixDaemon(t)
	ctx := testctx.New(t, 4*time.Minute)
	start := time.Now()
	bin := buildProvenix(t)
	dataDir := t.TempDir()
	p, bs := quorumSetup(t, dataDir)
	// Quorum 2 of distinct owners, as quorumSetup writes it; a builder
	// is quarantined after 3 answers in the minority. The idle runner
	// (below) is a fourth builder: the data directory's builder key, its
	// own owner.
	const runnerName, runnerOwner = "farm-runner", "owner-d"
	runnerID := "forgejo-runner:" + runnerName
	pol, err := os.ReadFile(p.Policy())
	if err != nil {
		t.Fatal(err)
	}
	pol = bytes.Replace(pol, []byte("quarantine_after: 2"), []byte("quarantine_after: 3"), 1)
	pol = fmt.Appendf(pol, "  - {id: %q, key: keys/builder.pub, owner: %s}\n", runnerID, runnerOwner)
	if err := os.WriteFile(p.Policy(), pol, 0o644); err != nil {
		t.Fatal(err)
	}
	cert := testtls.Write(t)
	rt, _ := runUpCLI(t, dataDir, "--websocket-listen", "127.0.0.1:0",
		"--websocket-tls-cert", cert.CertFile, "--websocket-tls-key", cert.KeyFile)
	if !strings.HasPrefix(rt.WebSocketURL, "wss://") {
		t.Fatalf("no wss:// URL: %+v", rt)
	}
	token, err := os.ReadFile(p.NATSToken())
	if err != nil {
		t.Fatal(err)
	}
	conn, err := queue.Connect(ctx, rt.NATSURL, queue.WithToken(strings.TrimSpace(string(token))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	pub := readPub(t, p.CachePub())
	// Only the wss:// URL, its CA, the token and the cache's URL and key:
	// the data directory of these processes is empty, so they find no
	// up.json (and no nats:// URL) in it.
	remote := func(args ...string) []string {
		return append(args, "--data-dir", t.TempDir(), "--nats-url", rt.WebSocketURL, "--nats-ca", cert.CertFile,
			"--nats-token-file", p.NATSToken())
	}

	// The workers: three volunteers with their own stores, keys and
	// owners; c is the liar (its sandbox holds /provenix-liar, which
	// every derivation of the graph appends to its output).
	liarFile := filepath.Join(t.TempDir(), "liar")
	if err := os.WriteFile(liarFile, []byte("I was built by the liar\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var workers []*farmWorker
	for i, b := range bs {
		args := []string{"volunteer", "--farm", "--data-dir", dataDir, "--store", b.store, "--key", b.key, "--builder-id", b.id,
			"--nix-key", b.nixKey, "--owner", b.owner, "--nats-url", rt.NATSURL, "--nats-token-file", p.NATSToken(),
			"--ack-wait", "6s", "--log-level", "info",
			"--nix-option", "substituters=" + rt.CacheURL, "--nix-option", "trusted-public-keys=" + pub,
			"--nix-option", "narinfo-cache-negative-ttl=0", "--nix-option", "narinfo-cache-positive-ttl=0",
			"--nix-option", "extra-platforms=aarch64-linux"}
		if i == 2 {
			args = append(args, "--nix-option", "extra-sandbox-paths=/provenix-liar="+liarFile)
		}
		workers = append(workers, &farmWorker{name: b.id, b: b, tmp: t.TempDir(), args: args, log: &testlog.Buffer{}})
	}
	honestA, honestB, liar := workers[0], workers[1], workers[2]
	for _, w := range workers {
		w.start(t)
	}
	// The idle runner daemon: registered with a forge that has no job for
	// it, it builds for the farm (provenix.volunteer) with the host's Nix,
	// substituting the inputs others built from the cache.
	forge := rpctest.New(t)
	runDir := t.TempDir()
	reg := exec.CommandContext(ctx, bin, "runner", "register", "--no-interactive",
		"--instance", forge.URL, "--token", rpctest.DefaultRegistrationToken, "--name", runnerName, "--labels", "nix")
	reg.Dir = runDir
	if out, err := reg.CombinedOutput(); err != nil {
		t.Fatalf("runner register: %v\n%s", err, out)
	}
	stopRunner, _ := startRunnerDaemon(t, bin, dataDir, runDir, "idle", 1, fmt.Sprintf(`provenix:
  volunteer: true
  owner: %s
  farm_ack_wait: 6s
  nix_options:
    substituters: %s
    trusted-public-keys: %q
    narinfo-cache-negative-ttl: "0"
    narinfo-cache-positive-ttl: "0"
    extra-platforms: aarch64-linux
`, runnerOwner, rt.CacheURL, pub), p, rt.NATSURL)
	t.Cleanup(func() {
		if t.Failed() {
			for _, w := range workers {
				t.Logf("%s's log:\n%s", w.name, w.log.String())
			}
		}
	})

	// Submitted over wss:// with quorum 2.
	nixFile, err := filepath.Abs(filepath.Join("testdata", "farm30.nix"))
	if err != nil {
		t.Fatal(err)
	}
	salt := uniqueMessage(t)
	graphArgs := []string{nixFile, "-A", "top", "--arg", "busybox", bb, "--argstr", "salt=" + salt, "--argstr", "slowSeconds=" + farmAcceptSlow}
	stdout, stderr, code := provenixProcess(t, ctx, remote(append([]string{"submit", "--quorum", "2", "--json",
		"--cache", rt.CacheURL, "--cache-key", p.CachePub()}, graphArgs...)...)...)
	if code != 0 {
		t.Fatalf("submit over wss: exit %d\n%s\n%s", code, stdout, stderr)
	}
	var sub farm.Submitted
	if err := json.Unmarshal([]byte(stdout), &sub); err != nil || sub.Set.Size != 30 || sub.Set.Quorum != 2 || sub.Skipped != 0 {
		t.Fatalf("submitted %s: %v", stdout, err)
	}
	id := sub.Set.ID
	t.Logf("set %s submitted over %s: %d derivations, %d ready", id, rt.WebSocketURL, sub.Set.Size, sub.Ready)

	// Fault: the volunteer building the slow derivation is killed with
	// SIGKILL mid-build; its request is redelivered and built by another.
	slowDrv := drvNamed(t, ctx, sub.Set.Roots[0], "fa-slow")
	// Who claims fa-slow's replicas: each builder's claim in the farm's
	// bucket (claim.<set>.<drv hash>.<scope>, see farm/claim.go).
	claims := func() ([]farm.Claim, error) { return farm.ReadClaims(ctx, conn, id, slowDrv) }
	t.Cleanup(func() {
		if t.Failed() {
			c, err := claims()
			t.Logf("fa-slow's claims at the end: %+v (%v)", c, err)
			if st, err := farm.GetStatus(ctx, conn, id); err == nil {
				for _, d := range st.Derivations {
					if d.DrvPath == slowDrv {
						t.Logf("fa-slow's state at the end: %+v", *d)
					}
				}
			}
		}
	})
	heldBy := func() []farm.Claim {
		c, err := claims()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	// A volunteer building a replica of it: not a rebuild the pushers
	// asked for (after the liar's dispute), and the runner or the liar
	// may hold both first replicas (then a dispute dispatches a third).
	var victim *farmWorker
	waitUntil(t, ctx, 60*time.Second, "a volunteer building a replica of fa-slow", func() bool {
		c, err := claims()
		if err != nil {
			return false
		}
		for _, w := range workers[:2] {
			if w.building("fa-slow") && slices.ContainsFunc(c, func(c farm.Claim) bool { return c.Builder == w.name }) {
				victim = w
				return true
			}
		}
		return false
	})
	var others []*farmWorker
	for _, w := range workers {
		if w != victim {
			others = append(others, w)
		}
	}
	var victimReplica = -1
	for _, c := range heldBy() {
		if c.Builder == victim.name {
			victimReplica = c.Replica
		}
	}
	if victimReplica < 0 {
		t.Fatalf("%s builds fa-slow but holds no replica of it: %+v", victim.name, heldBy())
	}
	if err := victim.proc.signal(syscall.SIGKILL); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("kill -9 %s: %v", victim.name, err)
	}
	killedAt := time.Now()
	t.Logf("killed %s (pid %d) while it built fa-slow (replica %d)", victim.name, victim.proc.cmd.Process.Pid, victimReplica)
	// Another builder takes the replica over once its AckWait has passed
	// (farm's TestWorkerLostMidBuild tests that alone). Here fa-slow may
	// also be decided before that by others: every pending vote asks the
	// volunteers for a rebuild, and one already building it then skips
	// the replica (it would add no vote). Then the replica is not needed
	// any more.
	var takenBy string
	decided := false
	waitUntil(t, ctx, 60*time.Second, "the killed volunteer's replica taken over, or fa-slow decided without it", func() bool {
		for _, c := range heldBy() {
			if c.Replica == victimReplica && c.Builder != victim.name {
				takenBy = c.Builder
				return true
			}
		}
		st, err := farm.GetStatus(ctx, conn, id)
		if err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(st.Derivations, func(d *farm.State) bool { return d.DrvPath == slowDrv })
		decided = i >= 0 && st.Derivations[i].Status == farm.Done
		return decided
	})
	if decided {
		t.Logf("fa-slow decided by others %s after the kill, before its replica %d was taken over", time.Since(killedAt).Round(time.Millisecond), victimReplica)
	} else {
		t.Logf("fa-slow replica %d taken over by %s %s after the kill", victimReplica, takenBy, time.Since(killedAt).Round(time.Millisecond))
	}
	// The killed volunteer's machine comes back (same store, key and
	// owner): with the liar disputing every build, the set needs three
	// owners.
	victim.log.Write([]byte("---- restarted after SIGKILL ----\n"))
	victim.start(t)

	// farm status --watch over wss:// follows the set to its end.
	stdout, stderr, code = provenixProcess(t, ctx, remote("farm", "status", "--watch", "--json", id)...)
	if code != 0 {
		t.Fatalf("farm status --watch: exit %d\n%s\n%s", code, lastLines(stdout, 3), stderr)
	}
	disputedSeen := 0
	dec := json.NewDecoder(strings.NewReader(stdout))
	for {
		var pr farm.Progress
		if err := dec.Decode(&pr); err != nil {
			break
		}
		disputedSeen = max(disputedSeen, pr.Disputed)
	}
	built := time.Since(start)
	stdout, stderr, code = provenixProcess(t, ctx, remote("farm", "status", "--json", id)...)
	var st farm.SetStatus
	if err := json.Unmarshal([]byte(stdout), &st); code != 0 || err != nil || st.Counts[farm.Done] != 30 || !st.Finished() {
		t.Fatalf("farm status --json: exit %d, %v\n%s\n%s", code, err, lastLines(stdout, 20), stderr)
	}
	disputes, replicas, refused := 0, 0, 0
	for _, d := range st.Derivations {
		disputes += d.Disputes
		replicas += len(d.Attempts)
		refused += len(d.Failures)
		for _, f := range d.Failures {
			// Only the liar's results are refused (and built again by
			// another): once it is quarantined, or when its vote comes
			// after the honest two agreed (a minority answer, conflict).
			if f.Builder != liar.name || (f.Rejected != cachepush.ReasonQuarantined && f.Rejected != cachepush.ReasonConflict) {
				t.Errorf("%s: failure %+v", d.DrvPath, f)
			}
		}
	}
	t.Logf("set done after %s: %d replicas dispatched, %d disputes, at most %d disputed at once, %d results of the liar refused",
		built.Round(time.Second), replicas, disputes, disputedSeen, refused)
	if disputes == 0 {
		t.Errorf("no dispute recorded (%d seen by farm status --watch): the liar built nothing?", disputedSeen)
	}
	// The killed replica's request was built by the one that took it.
	// When the liar took it, its result may have been refused before the
	// path was decided: then the replica went, as a later attempt, to an
	// honest builder, and that one built it.
	final := takenBy
	if c := heldBy(); decided {
		final = "" // nobody built it: the votes below must decide fa-slow
	} else if takenBy == liar.name {
		i := slices.IndexFunc(c, func(c farm.Claim) bool { return c.Replica == victimReplica })
		if i < 0 || c[i].Builder != liar.name && c[i].Attempt < 2 {
			t.Errorf("fa-slow's claims at the end %+v: replica %d neither the liar's nor a later attempt's", c, victimReplica)
		} else {
			final = c[i].Builder
		}
	} else if !slices.ContainsFunc(c, func(c farm.Claim) bool { return c.Replica == victimReplica && c.Builder == takenBy }) {
		t.Errorf("fa-slow's claims at the end %+v: replica %d not with %s", c, victimReplica, takenBy)
	}
	slowOut := outputOf(t, ctx, slowDrv)
	ids := []string{bs[0].id, bs[1].id, bs[2].id, runnerID}
	votes, err := cachepush.Votes(ctx, conn, up.DefaultTenant, slowOut, ids)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(votes, func(v cachepush.Vote) bool { return v.Builder == final }) {
		// Its build is withdrawn, rightly, when fa-slow is decided first
		// by others (a replica the liar's dispute added, a rebuild a
		// pusher asked for): then two others agree on a published NAR.
		agree := map[string]int{}
		for _, v := range votes {
			if v.Builder != liar.name {
				agree[v.Answer()]++
			}
		}
		if len(sigNames(t, rt.CacheURL, slowOut)) == 0 || slices.Max(append(slices.Collect(maps.Values(agree)), 0)) < 2 {
			t.Errorf("votes on fa-slow %+v: none by %s, who built the killed replica, and no two others agree on a published NAR", votes, final)
		} else {
			t.Logf("fa-slow was decided by others before anyone finished the killed replica (taken over by %q, its build withdrawn): votes %v", final, agree)
		}
	}

	// Lie: no narinfo carries the liar's signature, its reputation fell,
	// the honest ones' did not.
	drvs := closureDrvs(t, ctx, sub.Set.Roots[0])
	if len(drvs) != 30 {
		t.Fatalf("%d derivations in the top's closure", len(drvs))
	}
	for _, d := range drvs {
		out := outputOf(t, ctx, d)
		for _, s := range sigNames(t, rt.CacheURL, out) {
			if strings.HasPrefix(s, liar.name) {
				t.Errorf("%s carries the liar's signature %s", out, s)
			}
		}
	}
	stdout, stderr, code = cli(t, ctx, "builders", "--json", "--nats-url", rt.NATSURL, "--nats-token-file", p.NATSToken())
	var reps []cachepush.Reputation
	if err := json.Unmarshal([]byte(stdout), &reps); code != 0 || err != nil {
		t.Fatalf("builders --json: exit %d, %v\n%s", code, err, stderr)
	}
	rep := map[string]cachepush.Reputation{}
	for _, r := range reps {
		rep[r.Builder] = r
	}
	if r := rep[liar.name]; r.Disagreements < 3 || r.Agreements != 0 || !r.Quarantined {
		t.Errorf("the liar's reputation %+v: want 3 disagreements or more, no agreement, quarantined", r)
	}
	// Its operator is told why, in its own log.
	if l := liar.log.String(); !strings.Contains(l, "this builder is quarantined and takes no builds") || !strings.Contains(l, "your builds disagreed with others'") {
		t.Errorf("the liar's log does not tell its operator it is quarantined, and why:\n%s", l)
	}
	for _, w := range []*farmWorker{honestA, honestB} {
		if r := rep[w.name]; r.Disagreements != 0 || r.Agreements == 0 {
			t.Errorf("%s's reputation %+v: want agreements only", w.name, r)
		}
	}
	// The idle runner is an honest builder too.
	if r := rep[runnerID]; r.Disagreements != 0 || r.Agreements == 0 {
		t.Errorf("the runner %s's reputation %+v: want agreements only", runnerID, r)
	}
	t.Logf("reputations: %s %d/%d, %s %d/%d, runner %s %d/%d, liar %s %d/%d (agreements/disagreements)", honestA.name, rep[honestA.name].Agreements,
		rep[honestA.name].Disagreements, honestB.name, rep[honestB.name].Agreements, rep[honestB.name].Disagreements,
		runnerID, rep[runnerID].Agreements, rep[runnerID].Disagreements, liar.name, rep[liar.name].Agreements, rep[liar.name].Disagreements)

	// farm stats and the /farm leaderboard show it.
	stdout, stderr, code = provenixProcess(t, ctx, remote("farm", "stats", "--json")...)
	var stats farm.Stats
	if err := json.Unmarshal([]byte(stdout), &stats); code != 0 || err != nil {
		t.Fatalf("farm stats --json: exit %d, %v\n%s", code, err, stderr)
	}
	tally := map[string]farm.Tally{}
	builds := 0
	for _, b := range stats.Builders {
		tally[b.Builder] = b
		builds += b.Builds
	}
	if l := tally[liar.name]; l.Builds == 0 || l.Disagreements == 0 || l.AgreementRate() != 0 || !l.Quarantined {
		t.Errorf("farm stats for the liar %+v", l)
	}
	for _, w := range []*farmWorker{honestA, honestB} {
		if h := tally[w.name]; h.Builds == 0 || h.AgreementRate() != 1 || h.CPUSeconds <= 0 {
			t.Errorf("farm stats for %s %+v", w.name, h)
		}
	}
	// The idle runner built some of the set, under its own owner.
	if r := tally[runnerID]; r.Builds == 0 || r.Owner != runnerOwner || r.AgreementRate() != 1 {
		t.Errorf("farm stats for the runner %s %+v: want builds, owner %s, all agreeing", runnerID, r, runnerOwner)
	}
	t.Logf("farm stats: %d builds reported (%s %d, %s %d, runner %s %d, %s %d)", builds, honestA.name, tally[honestA.name].Builds,
		honestB.name, tally[honestB.name].Builds, runnerID, tally[runnerID].Builds, liar.name, tally[liar.name].Builds)
	resp, err := http.Get(rt.CacheURL + up.FarmPath)
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(page), "set-"+id) || !strings.Contains(string(page), "30 done") {
		t.Errorf("GET /farm: %d, no finished set %s\n%s", resp.StatusCode, id, page)
	}
	if row := pageRow(string(page), `<tr class="builder">`, liar.name); !strings.Contains(row, `<td class="num agree">0%</td>`) || !strings.Contains(row, "quarantined") {
		t.Errorf("/farm's row of the liar shows no 0%% agreement or no quarantine: %s", row)
	}
	if row := pageRow(string(page), `<tr class="builder">`, honestA.name); !strings.Contains(row, `<td class="num agree">100%</td>`) {
		t.Errorf("/farm's row of %s shows no 100%% agreement: %s", honestA.name, row)
	}

	// Stock nix installs the top from the cache into an empty store.
	topOut := outputOf(t, ctx, sub.Set.Roots[0])
	client, err := substitute(t, ctx, rt.CacheURL, pub, topOut)
	if err != nil {
		t.Fatalf("stock nix did not install %s from the cache: %v", topOut, err)
	}
	b, err := os.ReadFile(client.RealPath(topOut))
	if err != nil || !strings.HasPrefix(string(b), "fa-top "+salt) || strings.Contains(string(b), "liar") {
		t.Errorf("top's output %q, %v", b, err)
	}
	// Each output holds its inputs': the top's names all 30.
	for _, d := range drvs {
		name := strings.TrimSuffix(filepath.Base(d)[33:], ".drv")
		if !strings.Contains(string(b), name+" "+salt+"\n") {
			t.Errorf("top's output lacks %s:\n%s", name, b)
		}
	}

	// Mass rebuild: the leaf chain-01 is upgraded (leafVersion 2); its
	// dependents, and only they, need building (with the new leaf).
	for _, w := range workers {
		w.proc.signal(syscall.SIGTERM)
	}
	stopRunner()
	massArgs := []string{nixFile, "-A", "top", "--arg", "busybox", bb, "--argstr", "salt=" + salt, "--argstr", "slowSeconds=" + farmAcceptSlow,
		"--argstr", "leafVersion=2"}
	leaf := instantiate(t, ctx, append(slices.Clone(massArgs[:1]), append([]string{"-A", "chain-01"}, massArgs[3:]...)...))
	top2 := instantiate(t, ctx, massArgs)
	if slices.Contains(drvs, leaf) {
		t.Fatalf("leafVersion did not change chain-01: %s", leaf)
	}
	want := dependentsByNix(t, ctx, top2, leaf)
	stdout, stderr, code = provenixProcess(t, ctx, remote(append([]string{"submit", "--quorum", "2", "--json", "--no-closure",
		"--cache", rt.CacheURL, "--cache-key", p.CachePub(), "--dependents-of", leaf}, massArgs...)...)...)
	var mass farm.Submitted
	if err := json.Unmarshal([]byte(stdout), &mass); code != 0 || err != nil {
		t.Fatalf("submit --dependents-of: exit %d, %v\n%s\n%s", code, err, stdout, stderr)
	}
	if got := slices.Sorted(slices.Values(mass.Set.Roots)); !slices.Equal(got, want) {
		t.Errorf("mass rebuild of %s submitted\n%v\nwant its dependents\n%v", leaf, got, want)
	}
	mst, err := farm.GetStatus(ctx, conn, mass.Set.ID)
	if err != nil {
		t.Fatal(err)
	}
	var toBuild []string
	for _, d := range mst.Derivations {
		if !d.Skipped {
			toBuild = append(toBuild, d.DrvPath)
		}
	}
	slices.Sort(toBuild)
	wantBuild := slices.Sorted(slices.Values(append(slices.Clone(want), leaf)))
	if !slices.Equal(toBuild, wantBuild) {
		t.Errorf("mass rebuild builds\n%v\nwant the dependents and the new leaf\n%v", toBuild, wantBuild)
	}
	t.Logf("mass rebuild of chain-01: %d dependents submitted, %d derivations in the set, %d in the cache already",
		len(mass.Set.Roots), mass.Set.Size, mass.Skipped)
	if _, stderr, code := provenixProcess(t, ctx, remote("farm", "cancel", mass.Set.ID)...); code != 0 {
		t.Errorf("farm cancel: exit %d\n%s", code, stderr)
	}
	t.Logf("TestFarmAccept took %s", time.Since(start).Round(time.Second))
}

// waitUntil polls cond every 50 ms until it holds, or fails the test.
func waitUntil(t *testing.T, ctx context.Context, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("no %s after %s", what, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func instantiate(t *testing.T, ctx context.Context, args []string) string {
	t.Helper()
	var nixArgs []string
	for _, a := range args {
		// provenix takes --argstr NAME=VALUE; nix-instantiate NAME VALUE.
		if n, v, ok := strings.Cut(a, "="); ok && !strings.HasPrefix(a, "/") {
			nixArgs = append(nixArgs, n, v)
			continue
		}
		nixArgs = append(nixArgs, a)
	}
	out, err := exec.CommandContext(ctx, "nix-instantiate", nixArgs...).Output()
	if err != nil {
		t.Fatalf("nix-instantiate %v: %v", nixArgs, err)
	}
	return strings.TrimSpace(string(out))
}

// closureDrvs are the .drv files of drv's closure, by stock nix.
func closureDrvs(t *testing.T, ctx context.Context, drv string) []string {
	t.Helper()
	out, err := exec.CommandContext(ctx, "nix-store", "-qR", drv).Output()
	if err != nil {
		t.Fatalf("nix-store -qR %s: %v", drv, err)
	}
	var drvs []string
	for _, l := range strings.Fields(string(out)) {
		if strings.HasSuffix(l, ".drv") {
			drvs = append(drvs, l)
		}
	}
	slices.Sort(drvs)
	return drvs
}

// dependentsByNix are the derivations of top's closure whose own closure
// holds leaf, leaf aside: computed by stock nix, not by the farm.
func dependentsByNix(t *testing.T, ctx context.Context, top, leaf string) []string {
	t.Helper()
	var out []string
	for _, d := range closureDrvs(t, ctx, top) {
		if d != leaf && slices.Contains(closureDrvs(t, ctx, d), leaf) {
			out = append(out, d)
		}
	}
	return out
}

func drvNamed(t *testing.T, ctx context.Context, top, name string) string {
	t.Helper()
	for _, d := range closureDrvs(t, ctx, top) {
		if strings.HasSuffix(d, "-"+name+".drv") {
			return d
		}
	}
	t.Fatalf("no %s in %s's closure", name, top)
	return ""
}

func outputOf(t *testing.T, ctx context.Context, drv string) string {
	t.Helper()
	out, err := exec.CommandContext(ctx, "nix-store", "-q", "--outputs", drv).Output()
	if err != nil {
		t.Fatalf("nix-store -q --outputs %s: %v", drv, err)
	}
	return strings.TrimSpace(string(out))
}

// pageRow is the table row of page starting with open that names name.
func pageRow(page, open, name string) string {
	for _, r := range strings.Split(page, open)[1:] {
		r, _, _ = strings.Cut(r, "</tr>")
		if strings.Contains(r, ">"+name+"<") {
			return r
		}
	}
	return ""
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(l[max(0, len(l)-n):], "\n")
}
