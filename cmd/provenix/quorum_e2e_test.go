package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"codeberg.org/provenix/provenix/attest"
	cachepush "codeberg.org/provenix/provenix/cache-push"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testfs"
	"codeberg.org/provenix/provenix/internal/testlog"
	"codeberg.org/provenix/provenix/nix"
	"codeberg.org/provenix/provenix/queue"
	"codeberg.org/provenix/provenix/up"
)

// qbuilder is one independent builder: its own key, owner, Nix key and
// chroot store.
type qbuilder struct {
	id, owner, store, key, pub, nixKey string
}

// quorumSetup writes a policy requiring 2 agreeing owners (trusted-only
// for nondet-trusted*, quarantine after 2 minority votes) over three
// builders a, b and c.
func quorumSetup(t testing.TB, dataDir string) (up.Paths, []qbuilder) {
	t.Helper()
	p := up.Paths{Dir: dataDir}
	if _, err := up.Init(p); err != nil {
		t.Fatal(err)
	}
	var bs []qbuilder
	var pol strings.Builder
	pol.WriteString(`tenants: [default]
systems: [x86_64-linux, aarch64-linux, x86_64-darwin, aarch64-darwin]
quorum: {min: 2, distinct: owner, on_disagreement: block}
overrides:
  - names: ["nondet-trusted*"]
    quorum: {on_disagreement: trusted-only, trusted: builder-a}
  - names: ["solo-*"]
    quorum: {min: 1}
reputation: {quarantine_after: 2, window: 1h}
builders:
`)
	for _, n := range []string{"a", "b", "c"} {
		b := qbuilder{id: "builder-" + n, owner: "owner-" + n, store: t.TempDir(),
			key: filepath.Join(dataDir, "keys", n+".key"), nixKey: filepath.Join(dataDir, "keys", n+".nix")}
		b.pub = b.key + ".pub"
		if _, err := attest.GenerateKeyFiles(b.key); err != nil {
			t.Fatal(err)
		}
		nk, err := cachepush.GenerateKeyFiles("builder-"+n+"-1", b.nixKey)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&pol, "  - {id: %s, key: keys/%s.key.pub, owner: %s, nix_key: %q}\n", b.id, n, b.owner, nk.String())
		bs = append(bs, b)
	}
	if err := os.WriteFile(p.Policy(), []byte(pol.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return p, bs
}

// quorumStack is the embedded stack under quorumSetup's policy.
func quorumStack(t *testing.T) (string, up.Paths, []qbuilder, *up.Stack) {
	t.Helper()
	dataDir := t.TempDir()
	p, bs := quorumSetup(t, dataDir)
	return dataDir, p, bs, startStack(t, up.Config{DataDir: dataDir})
}

// qbuild runs `provenix build` as builder b against the NATS at natsURL.
func qbuild(t *testing.T, ctx context.Context, natsURL string, p up.Paths, b qbuilder, file, attr string, args ...string) jsonPublished {
	t.Helper()
	all := append([]string{"build", "--json", file, "-A", attr, "--store", b.store, "--key", b.key, "--builder-id", b.id,
		"--nix-key", b.nixKey, "--nats-url", natsURL, "--nats-token-file", p.NATSToken(), "--nix-option", "substituters="}, args...)
	stdout, stderr, code := cli(t, ctx, all...)
	if code != 0 {
		t.Fatalf("build as %s: exit %d\n%s\n%s", b.id, code, stdout, stderr)
	}
	var pubs []jsonPublished
	if err := json.Unmarshal([]byte(stdout), &pubs); err != nil || len(pubs) != 1 || len(pubs[0].Outputs) != 1 {
		t.Fatalf("build --json output %q: %v", stdout, err)
	}
	return pubs[0]
}

// waitVotes waits until the pushers recorded n votes on path.
func waitVotes(t testing.TB, kv cachepush.KV, path string, n int) []cachepush.Vote {
	t.Helper()
	// Generous: under a loaded -race CI run a result can be deferred
	// (the pusher's fair share per builder) for tens of seconds.
	deadline := time.Now().Add(90 * time.Second)
	for {
		votes, err := cachepush.Votes(context.Background(), kv, up.DefaultTenant, path, []string{"builder-a", "builder-b", "builder-c"})
		if err == nil && len(votes) >= n {
			return votes
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d votes on %s, want %d (err %v)", len(votes), path, n, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// requireAbsent checks path is not in the cache, after giving the pusher
// time to finish what it was doing.
func requireAbsent(t *testing.T, cacheURL, path string) {
	t.Helper()
	time.Sleep(300 * time.Millisecond)
	resp, err := http.Get(cacheURL + "/" + cachelayout.NarinfoKey(path))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("%s is in the cache (HTTP %d); it must not be", path, resp.StatusCode)
	}
}

func sigNames(t *testing.T, cacheURL, path string) []string {
	t.Helper()
	ni := waitNarinfo(t, cacheURL, path)
	var names []string
	for _, s := range ni.Signatures {
		names = append(names, s.Name)
	}
	return names
}

func status(t *testing.T, ctx context.Context, dataDir, natsURL string, p up.Paths, path string) string {
	t.Helper()
	stdout, stderr, code := cli(t, ctx, "status", "--json", "--data-dir", dataDir, "--nats-url", natsURL, "--nats-token-file", p.NATSToken(), path)
	if code != 0 {
		t.Fatalf("status: exit %d\n%s\n%s", code, stdout, stderr)
	}
	var st []struct{ Verdict string }
	if err := json.Unmarshal([]byte(stdout), &st); err != nil || len(st) != 1 {
		t.Fatalf("status output %q: %v", stdout, err)
	}
	return st[0].Verdict
}

// TestQuorumAgreement: with quorum 2 the path appears only after the
// second agreeing vote, carries both builders' Sig lines, substitutes, and
// verifies with --quorum 2.
func TestQuorumAgreement(t *testing.T) {
	busybox := requireNix(t)
	ctx := testctx.New(t, 4*time.Minute)
	dataDir, p, bs, stack := quorumStack(t)
	sample := filepath.Join("..", "..", "examples", "hello.nix")
	msg := "--argstr=message=" + uniqueMessage(t)

	a := qbuild(t, ctx, stack.NATSURL(), p, bs[0], sample, "hello", "--arg", "busybox="+busybox, msg)
	path := a.Outputs[0].Path
	waitVotes(t, stack.Conn(), path, 1)
	requireAbsent(t, stack.CacheURL(), path)
	if v := status(t, ctx, dataDir, stack.NATSURL(), p, path); v != cachepush.VerdictPending {
		t.Fatalf("after one vote: %s", v)
	}

	b := qbuild(t, ctx, stack.NATSURL(), p, bs[1], sample, "hello", "--arg", "busybox="+busybox, msg)
	if b.Outputs[0].Path != path || b.Outputs[0].NarSHA256 != a.Outputs[0].NarSHA256 {
		t.Fatalf("builders disagree on a reproducible build: %+v %+v", a, b)
	}
	names := strings.Join(sigNames(t, stack.CacheURL(), path), ",")
	cacheName := strings.SplitN(readPub(t, p.CachePub()), ":", 2)[0]
	for _, want := range []string{cacheName, "builder-a-1", "builder-b-1"} {
		if !strings.Contains(names, want) {
			t.Errorf("narinfo signatures %s lack %s", names, want)
		}
	}
	if _, err := substitute(t, ctx, stack.CacheURL(), readPub(t, p.CachePub()), path); err != nil {
		t.Fatalf("stock nix cannot substitute the agreed path: %v", err)
	}
	verify := func(q string) int {
		_, _, code := cli(t, ctx, "verify", "--data-dir", dataDir, "--cache", stack.CacheURL(), "--cache-key", p.CachePub(),
			"--key", bs[0].id+"="+bs[0].pub, "--key", bs[1].id+"="+bs[1].pub, "--key", bs[2].id+"="+bs[2].pub, "--quorum", q, path)
		return code
	}
	if c := verify("2"); c != 0 {
		t.Fatalf("verify --quorum 2: exit %d", c)
	}
	if c := verify("3"); c != exitFailed {
		t.Fatalf("verify --quorum 3 with two attestations: exit %d, want %d", c, exitFailed)
	}
	if v := status(t, ctx, dataDir, stack.NATSURL(), p, path); v != cachepush.VerdictAgreed {
		t.Fatalf("status after quorum: %s", v)
	}
}

// TestQuorumNondeterministic: a derivation that never builds the same is
// disputed and never published under block, and published from the
// trusted builder, labelled, under trusted-only.
func TestQuorumNondeterministic(t *testing.T) {
	busybox := requireNix(t)
	ctx := testctx.New(t, 4*time.Minute)
	dataDir, p, bs, stack := quorumStack(t)
	disputes := subscribeDisputes(t, stack)
	file := filepath.Join("testdata", "nondet.nix")
	salt := "--argstr=salt=" + uniqueMessage(t)

	for _, name := range []string{"nondet-block", "nondet-trusted"} {
		args := []string{"--arg", "busybox=" + busybox, "--argstr", "name=" + name, salt}
		a := qbuild(t, ctx, stack.NATSURL(), p, bs[0], file, "nondet", args...)
		b := qbuild(t, ctx, stack.NATSURL(), p, bs[1], file, "nondet", args...)
		path := a.Outputs[0].Path
		if a.Outputs[0].NarSHA256 == b.Outputs[0].NarSHA256 {
			t.Fatal("the non-reproducible derivation built the same twice")
		}
		waitVotes(t, stack.Conn(), path, 2)
		switch name {
		case "nondet-block":
			requireAbsent(t, stack.CacheURL(), path)
			if v := status(t, ctx, dataDir, stack.NATSURL(), p, path); v != cachepush.VerdictDisputed {
				t.Fatalf("status: %s, want disputed", v)
			}
			select {
			case d := <-disputes:
				if d.StorePath != path || len(d.NARs) != 2 ||
					strings.Join(d.NARs[a.Outputs[0].NarSHA256], ",") != bs[0].id || strings.Join(d.NARs[b.Outputs[0].NarSHA256], ",") != bs[1].id {
					t.Fatalf("disputed event %+v: want both NARs with their builders", d)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("no disputed event")
			}
		case "nondet-trusted":
			ni := waitNarinfo(t, stack.CacheURL(), path)
			if got := hex.EncodeToString(ni.NarHash.Digest()); got != a.Outputs[0].NarSHA256 {
				t.Fatalf("published NAR %s, want the trusted builder's %s", got, a.Outputs[0].NarSHA256)
			}
			sc := readSidecar(t, stack.CacheURL(), path)
			if sc.Quorum == nil || !sc.Quorum.UnverifiedByQuorum || sc.Quorum.Verdict != cachepush.VerdictTrustedOnly {
				t.Fatalf("sidecar quorum %+v, want trusted-only, unverified by quorum", sc.Quorum)
			}
		}
	}
}

// subscribeDisputes delivers the stack's disputed events until the test
// ends.
func subscribeDisputes(t *testing.T, stack *up.Stack) <-chan cachepush.Dispute {
	t.Helper()
	disputes := make(chan cachepush.Dispute, 16)
	sub, err := stack.Conn().NATS().Subscribe("events."+up.DefaultTenant+"."+cachepush.EventDisputed, func(m *nats.Msg) {
		var d cachepush.Dispute
		if json.Unmarshal(m.Data, &d) == nil {
			disputes <- d
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Unsubscribe() })
	return disputes
}

func readSidecar(t *testing.T, cacheURL, path string) *cachelayout.Provenance {
	t.Helper()
	resp, err := http.Get(cacheURL + "/" + cachelayout.ProvenanceKey(path))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	buf.ReadFrom(resp.Body)
	sc, err := cachelayout.ParseProvenance(buf.Bytes())
	if err != nil {
		t.Fatalf("sidecar: %v\n%s", err, buf.String())
	}
	return sc
}

// lie publishes, as builder c, a signed result for the sample whose NAR it
// altered after building it honestly in its own store.
func lie(t *testing.T, ctx context.Context, conn *queue.Conn, c qbuilder, busybox, msg string) {
	t.Helper()
	n := &nix.Nix{Root: c.store, Options: map[string]string{"substituters": ""}}
	drvs, err := n.Instantiate(ctx, filepath.Join("..", "..", "examples", "hello.nix"), "hello", map[string]string{"busybox": busybox}, map[string]string{"message": msg})
	if err != nil {
		t.Fatal(err)
	}
	outs, err := n.Realise(ctx, drvs[0])
	if err != nil {
		t.Fatal(err)
	}
	infos, err := n.PathInfo(ctx, outs[0])
	if err != nil {
		t.Fatal(err)
	}
	var nar bytes.Buffer
	if err := n.DumpNAR(&nar, infos[0]); err != nil {
		t.Fatal(err)
	}
	forged := bytes.Replace(nar.Bytes(), []byte(msg), []byte(strings.ToUpper(msg)), 1)
	if bytes.Equal(forged, nar.Bytes()) {
		t.Fatal("could not alter the NAR")
	}
	sum := sha256.Sum256(forged)
	d, err := n.ReadDerivation(drvs[0])
	if err != nil {
		t.Fatal(err)
	}
	st, err := attest.NewStatement(&attest.Build{
		DrvPath: drvs[0], System: d.Platform, BuilderID: c.id,
		Installable: attest.Installable{Kind: "drv", Ref: drvs[0]},
		Outputs:     []attest.Output{{Name: "out", Path: outs[0], NarHash: sum, NarSize: uint64(len(forged)), References: infos[0].References}},
	})
	if err != nil {
		t.Fatal(err)
	}
	signer, err := attest.LoadSigner(c.key)
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := attest.Sign(ctx, st, signer)
	if err != nil {
		t.Fatal(err)
	}
	hexSum := hex.EncodeToString(sum[:])
	if _, err := conn.Stage(ctx, queue.StagingKey(hexSum), bytes.NewReader(forged)); err != nil {
		t.Fatal(err)
	}
	// Its own copy of the closure, as a builder stages it: the pusher
	// computes the output path from it.
	reqs, err := n.Requisites(ctx, drvs[0])
	if err != nil {
		t.Fatal(err)
	}
	var export bytes.Buffer
	if err := n.Export(ctx, &export, reqs...); err != nil {
		t.Fatal(err)
	}
	closure := queue.ScopedKey(queue.ClosureKey(drvs[0]), c.id)
	if _, err := conn.Stage(ctx, closure, &export); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.PublishResult(ctx, &queue.Result{Version: queue.ResultVersion, Tenant: up.DefaultTenant, Builder: c.id, DrvPath: drvs[0], System: d.Platform,
		Outputs: []queue.Output{{Name: "out", Path: outs[0], NarHash: hexSum, NarSize: uint64(len(forged)), StagingKey: queue.StagingKey(hexSum)}},
		Bundle:  bundle, Closure: closure}); err != nil {
		t.Fatal(err)
	}
}

// TestQuorumLiar: a builder that signs an altered NAR is outvoted, never
// published, its minority disagreements counted, quarantined after two,
// and its later votes ignored.
func TestQuorumLiar(t *testing.T) {
	busybox := requireNix(t)
	ctx := testctx.New(t, 5*time.Minute)
	dataDir, p, bs, stack := quorumStack(t)
	sample := filepath.Join("..", "..", "examples", "hello.nix")
	a, b, c := bs[0], bs[1], bs[2]

	for round := 1; round <= 3; round++ {
		msg := uniqueMessage(t)
		lie(t, ctx, stack.Conn(), c, busybox, msg)
		pa := qbuild(t, ctx, stack.NATSURL(), p, a, sample, "hello", "--arg", "busybox="+busybox, "--argstr", "message="+msg)
		path := pa.Outputs[0].Path
		waitVotes(t, stack.Conn(), path, 2)
		requireAbsent(t, stack.CacheURL(), path)
		want := cachepush.VerdictDisputed
		if round == 3 {
			want = cachepush.VerdictPending // the quarantined liar no longer counts
		}
		if v := status(t, ctx, dataDir, stack.NATSURL(), p, path); v != want {
			t.Fatalf("round %d after the lie and one honest vote: %s, want %s", round, v, want)
		}
		qbuild(t, ctx, stack.NATSURL(), p, b, sample, "hello", "--arg", "busybox="+busybox, "--argstr", "message="+msg)
		ni := waitNarinfo(t, stack.CacheURL(), path)
		if got := hex.EncodeToString(ni.NarHash.Digest()); got != pa.Outputs[0].NarSHA256 {
			t.Fatalf("round %d: published NAR %s, not the honest %s", round, got, pa.Outputs[0].NarSHA256)
		}
		if names := strings.Join(sigNames(t, stack.CacheURL(), path), ","); strings.Contains(names, "builder-c") {
			t.Fatalf("the liar's signature is on the narinfo: %s", names)
		}
	}

	// Agreements are stored within the pusher's ReputationFlush (a
	// second) of the path's publication: read the records until the
	// honest builder's last one is in, for at most 10 s.
	var byID map[string]cachepush.Reputation
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		stdout, stderr, code := cli(t, ctx, "builders", "--json", "--nats-url", stack.NATSURL(), "--nats-token-file", p.NATSToken())
		if code != 0 {
			t.Fatalf("builders: exit %d\n%s", code, stderr)
		}
		var reps []cachepush.Reputation
		if err := json.Unmarshal([]byte(stdout), &reps); err != nil {
			t.Fatal(err)
		}
		byID = map[string]cachepush.Reputation{}
		for _, r := range reps {
			byID[r.Builder] = r
		}
		if byID[a.id].Agreements >= 3 || time.Now().After(deadline) {
			break
		}
	}
	if r := byID[c.id]; r.Disagreements != 2 || !r.Quarantined {
		t.Errorf("liar's record %+v: want 2 minority disagreements and quarantined", r)
	}
	if r := byID[a.id]; r.Agreements != 3 || r.Disagreements != 0 || r.Quarantined {
		t.Errorf("honest record %+v", r)
	}
	if _, _, code := cli(t, ctx, "builders", "clear", c.id, "--nats-url", stack.NATSURL(), "--nats-token-file", p.NATSToken()); code != 0 {
		t.Fatal("builders clear failed")
	}
	if r, err := cachepush.GetReputation(ctx, stack.Conn(), c.id); err != nil || r.Quarantined {
		t.Errorf("after clear: %+v %v", r, err)
	}
}

// TestQuorumSurvivesCrash: the pusher (with its embedded NATS) is killed
// with SIGKILL between the two votes; after a restart the first vote is
// still there and the path is published exactly once.
func TestQuorumSurvivesCrash(t *testing.T) {
	busybox := requireNix(t)
	ctx := testctx.New(t, 4*time.Minute)
	bin := buildProvenix(t)
	dataDir := t.TempDir()
	p, bs := quorumSetup(t, dataDir)
	start := func() (*exec.Cmd, *up.Runtime) {
		cmd := exec.Command(bin, "up", "--data-dir", dataDir, "--listen", "127.0.0.1:0", "--log-level", "warn")
		var log testlog.Buffer
		cmd.Stdout, cmd.Stderr = &log, &log
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		deadline := time.Now().Add(30 * time.Second)
		for {
			if rt, err := up.ReadRuntime(p); err == nil && rt.PID == cmd.Process.Pid {
				return cmd, rt
			}
			if time.Now().After(deadline) {
				t.Fatalf("provenix up did not start:\n%s", log.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	sample := filepath.Join("..", "..", "examples", "hello.nix")
	msg := "--argstr=message=" + uniqueMessage(t)

	cmd, rt := start()
	pa := qbuild(t, ctx, rt.NATSURL, p, bs[0], sample, "hello", "--arg", "busybox="+busybox, msg)
	path := pa.Outputs[0].Path
	conn, err := queue.Connect(ctx, rt.NATSURL, queue.WithToken(strings.TrimSpace(string(testfs.Read(t, p.NATSToken())))))
	if err != nil {
		t.Fatal(err)
	}
	waitVotes(t, conn, path, 1)
	conn.Close()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()

	_, rt = start()
	qbuild(t, ctx, rt.NATSURL, p, bs[1], sample, "hello", "--arg", "busybox="+busybox, msg)
	waitNarinfo(t, rt.CacheURL, path)
	sc := readSidecar(t, rt.CacheURL, path)
	if len(sc.Bundles) != 2 || sc.Quorum == nil || len(sc.Quorum.Agreeing) != 2 {
		t.Fatalf("sidecar after the crash: %d bundles, quorum %+v", len(sc.Bundles), sc.Quorum)
	}
	nars, _ := filepath.Glob(filepath.Join(p.Cache(), "nar", "*"))
	if len(nars) != 1 {
		t.Fatalf("%d NAR files in the cache, want exactly 1: %v", len(nars), nars)
	}
}

// TestQuorumVolunteer: one `provenix build` and one `provenix volunteer`
// with its own store reach quorum 2 with no further command: the pusher
// asks for a rebuild, the volunteer pulls it, imports the staged closure,
// rebuilds and votes.
func TestQuorumVolunteer(t *testing.T) {
	busybox := requireNix(t)
	ctx := testctx.New(t, 4*time.Minute)
	dataDir, p, bs, stack := quorumStack(t)
	vol := bs[1]
	done := make(chan string, 1)
	go func() {
		stdout, stderr, code := cli(t, ctx, "volunteer", "--once", "--store", vol.store, "--key", vol.key, "--builder-id", vol.id,
			"--nix-key", vol.nixKey, "--nats-url", stack.NATSURL(), "--nats-token-file", p.NATSToken(), "--nix-option", "substituters=")
		done <- fmt.Sprintf("exit %d\n%s\n%s", code, stdout, stderr)
	}()
	sample := filepath.Join("..", "..", "examples", "hello.nix")
	a := qbuild(t, ctx, stack.NATSURL(), p, bs[0], sample, "hello", "--arg", "busybox="+busybox, "--argstr", "message="+uniqueMessage(t))
	path := a.Outputs[0].Path
	select {
	case out := <-done:
		if !strings.HasPrefix(out, "exit 0") {
			t.Fatalf("volunteer: %s", out)
		}
	case <-ctx.Done():
		t.Fatal("the volunteer never took the rebuild request")
	}
	names := strings.Join(sigNames(t, stack.CacheURL(), path), ",")
	if !strings.Contains(names, "builder-a-1") || !strings.Contains(names, "builder-b-1") {
		t.Fatalf("narinfo signatures %s: want the builder's and the volunteer's", names)
	}
	if _, _, code := cli(t, ctx, "verify", "--data-dir", dataDir, "--cache", stack.CacheURL(), "--cache-key", p.CachePub(),
		"--key", bs[0].id+"="+bs[0].pub, "--key", bs[1].id+"="+bs[1].pub, "--quorum", "2", path); code != 0 {
		t.Fatalf("verify --quorum 2: exit %d", code)
	}
	// The volunteer really built in its own store.
	if _, err := os.Stat(filepath.Join(vol.store, path)); err != nil {
		t.Fatalf("the volunteer's store lacks %s: %v", path, err)
	}
}
