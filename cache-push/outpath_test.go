package cachepush

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/nix"
	"codeberg.org/provenix/provenix/queue"
	"codeberg.org/provenix/provenix/storepath"
)

// nixCmd runs a host Nix command offline and returns its stdout.
func nixCmd(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	if err := nix.Available(); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "NIX_CONFIG=substituters =\nbuild-users-group =\nexperimental-features = nix-command")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, stderr.String())
	}
	return out
}

// instantiateNamed instantiates (without building) a derivation called
// name that depends on another one, and returns its .drv and output.
func instantiateNamed(t *testing.T, name, msg string) (drv, out string) {
	t.Helper()
	expr := `let mk = n: deps: derivation ({ name = n; system = "x86_64-linux"; builder = "/bin/sh";
	  args = [ "-c" "echo ` + msg + ` > $out" ]; } // deps);
	in mk "` + name + `" { dep = mk "` + name + `-dep" {}; }`
	drv = strings.TrimSpace(string(nixCmd(t, "nix-instantiate", "-E", expr)))
	out = strings.TrimSpace(string(nixCmd(t, "nix-store", "--query", "--outputs", drv)))
	return drv, out
}

// stageClosure stages drv's closure export as a builder does.
func (cf *closureFixture) stageClosure(t *testing.T, drv string) string {
	t.Helper()
	reqs := strings.Fields(string(nixCmd(t, "nix-store", "--query", "--requisites", drv)))
	export := nixCmd(t, "nix-store", append([]string{"--export"}, reqs...)...)
	key := queue.ClosureKey(drv)
	if _, err := cf.conn.Stage(testctx.New(t, 60*time.Second), key, bytes.NewReader(export)); err != nil {
		t.Fatal(err)
	}
	return key
}

// signedResult is builder's signed result saying drv built outPath with
// NAR nar, its closure under closure.
func (cf *closureFixture) signedResult(t *testing.T, builder, drv, outPath string, nar []byte, closure string) (*queue.Result, []byte) {
	t.Helper()
	ctx := testctx.New(t, 60*time.Second)
	out := attest.Output{Name: "out", Path: outPath, NarHash: sha256.Sum256(nar), NarSize: uint64(len(nar))}
	st, err := attest.NewStatement(&attest.Build{DrvPath: drv, System: "x86_64-linux", BuilderID: builder,
		Installable: attest.Installable{Kind: "drv", Ref: drv}, Outputs: []attest.Output{out}})
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := attest.Sign(ctx, st, cf.signers[builder])
	if err != nil {
		t.Fatal(err)
	}
	key := queue.StagingKey(out.NarHashHex())
	if _, err := cf.conn.Stage(ctx, key, bytes.NewReader(nar)); err != nil {
		t.Fatal(err)
	}
	r := &queue.Result{Version: queue.ResultVersion, Tenant: testTenant, Builder: builder, DrvPath: drv, System: "x86_64-linux",
		Outputs: []queue.Output{{Name: "out", Path: out.Path, NarHash: out.NarHashHex(), NarSize: out.NarSize, StagingKey: key}},
		Bundle:  bundle, Closure: closure}
	data, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return r, data
}

// TestOutputPathSquat reproduces issue 11's finding 6: with a quorum of
// 2 and an override of 1 for "*-docs", one builder claims
// /nix/store/<H>-evil-docs, H being the hash part of an honest
// derivation's output <H>-real. Each way of claiming it (under the
// honest derivation, under a derivation of its own called evil-docs,
// without a closure) is refused as "output-path"; then two builders
// agreeing on <H>-real publish it.
func TestOutputPathSquat(t *testing.T) {
	cf := newClosureFixture(t, "quorum: {min: 2}\noverrides:\n  - names: [\"*-docs\"]\n    quorum: {min: 1}\n", 3,
		func(c *Config) { c.UncheckedOutputPathsUnsafe = false })
	ctx := testctx.New(t, 60*time.Second)
	msg := "squat-" + time.Now().Format("150405.000000000")
	realDrv, realOut := instantiateNamed(t, "real", msg)
	base := path.Base(realOut)
	squat := storepath.Dir + "/" + base[:32] + "-evil-docs"
	realClosure := cf.stageClosure(t, realDrv)
	evilDrv, _ := instantiateNamed(t, "evil-docs", msg)
	evilClosure := cf.stageClosure(t, evilDrv)
	evil := narOf(t, "evil")

	for _, attack := range []struct{ name, drv, closure string }{
		{"honest derivation", realDrv, realClosure},
		{"own derivation", evilDrv, evilClosure},
		{"no closure", evilDrv, ""},
	} {
		r, data := cf.signedResult(t, "b0", attack.drv, squat, evil, attack.closure)
		err := cf.pusher.Process(ctx, subject(r), data, r.MsgID())
		if !errors.Is(err, ErrRejected) || !errors.Is(err, queue.ErrPermanent) {
			t.Fatalf("%s: squatting result: %v", attack.name, err)
		}
		if !strings.Contains(err.Error(), "("+ReasonOutputPath+")") {
			t.Fatalf("%s: rejected for another reason: %v", attack.name, err)
		}
		if cf.isVisible(t, squat) {
			t.Fatalf("%s: %s published", attack.name, squat)
		}
	}
	honest := narOf(t, "honest "+msg)
	for _, b := range []string{"b1", "b2"} {
		r, data := cf.signedResult(t, b, realDrv, realOut, honest, realClosure)
		cf.process(t, r, data)
	}
	if !cf.isVisible(t, realOut) {
		t.Fatalf("%s not published after 2 agreeing votes", realOut)
	}
	// Both paths share <H>.narinfo: it must name the honest one.
	b, err := store.ReadAll(ctx, cf.store, cachelayout.NarinfoKey(realOut), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	ni, err := narinfo.Parse(bytes.NewReader(b))
	if err != nil || ni.StorePath != realOut {
		t.Fatalf("narinfo of %s: %v %v", realOut, ni, err)
	}
	// Remembered: the next vote needs no closure read.
	if cf.pusher.drvs.Needs(realDrv) {
		t.Fatal("the computed derivation was not remembered")
	}
}

// gatedStaging counts the opens of one key and holds the first until
// released, so that other readers have time to arrive.
type gatedStaging struct {
	Staging
	key     string
	release chan struct{}
	mu      sync.Mutex
	opens   int
	first   chan struct{}
}

func (g *gatedStaging) OpenStaged(ctx context.Context, key string) (io.ReadCloser, queue.StagedInfo, error) {
	if key == g.key {
		g.mu.Lock()
		g.opens++
		n := g.opens
		g.mu.Unlock()
		if n == 1 {
			close(g.first)
		}
		<-g.release
	}
	return g.Staging.OpenStaged(ctx, key)
}

// TestClosureReadShared: results of one closure that arrive together
// read its export once; each is still checked against the derivation.
// Before, each result that found its derivation not yet computed read
// (and parsed) the whole export itself.
func TestClosureReadShared(t *testing.T) {
	gate := &gatedStaging{release: make(chan struct{}), first: make(chan struct{})}
	cf := newClosureFixture(t, "quorum: {min: 3}\n", 3, func(c *Config) {
		c.UncheckedOutputPathsUnsafe = false
		gate.Staging = c.Staging
		c.Staging = gate
	})
	msg := "shared-" + time.Now().Format("150405.000000000")
	drv, out := instantiateNamed(t, "shared", msg)
	gate.key = cf.stageClosure(t, drv)
	nar := narOf(t, msg)
	errs := make(chan error, 4)
	var wg sync.WaitGroup
	for _, b := range []string{"b0", "b1", "b2"} {
		r, data := cf.signedResult(t, b, drv, out, nar, gate.key)
		wg.Go(func() { errs <- cf.pusher.Process(testctx.New(t, 60*time.Second), subject(r), data, r.MsgID()) })
	}
	// A result claiming another output of the same derivation waits for
	// the same read and is refused by it.
	r, data := cf.signedResult(t, "b0", drv, storepath.Dir+"/"+path.Base(out)[:32]+"-squat", narOf(t, "squat"), gate.key)
	wg.Go(func() { errs <- cf.pusher.Process(testctx.New(t, 60*time.Second), subject(r), data, r.MsgID()) })
	<-gate.first
	// Without sharing, the other results open the export meanwhile.
	time.Sleep(500 * time.Millisecond)
	close(gate.release)
	wg.Wait()
	close(errs)
	var refused int
	for err := range errs {
		switch {
		case err == nil:
		case errors.Is(err, ErrOutputPath):
			refused++
		default:
			t.Fatalf("Process: %v", err)
		}
	}
	if refused != 1 {
		t.Fatalf("%d results refused for their output path, want the squatting one", refused)
	}
	if gate.opens != 1 {
		t.Fatalf("the closure export was opened %d times by 4 results arriving together", gate.opens)
	}
	if !cf.isVisible(t, out) {
		t.Fatalf("%s not published after 3 agreeing votes", out)
	}
}
