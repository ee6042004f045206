package builder

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/internal/testkey"
	"codeberg.org/provenix/provenix/internal/testnix"
	"codeberg.org/provenix/provenix/nix"
	"codeberg.org/provenix/provenix/queue"
)

// memQueue is a Publisher that keeps what it got.
type memQueue struct {
	mu      sync.Mutex
	staged  map[string][]byte
	results []*queue.Result
	// failStage fails Stage of this key after reading all of it.
	failStage string
	// cutStage cuts this many Stage calls short, as a broker restart
	// does: part of the stream read, then the connection lost.
	cutStage   int
	stageCalls int
}

func (m *memQueue) Stage(_ context.Context, key string, r io.Reader) (queue.StagedInfo, error) {
	m.mu.Lock()
	m.stageCalls++
	cut := m.stageCalls <= m.cutStage
	m.mu.Unlock()
	if cut {
		if _, err := io.ReadFull(r, make([]byte, 64)); err != nil {
			return queue.StagedInfo{}, err
		}
		return queue.StagedInfo{}, fmt.Errorf("chunk 0: %w", nats.ErrDisconnected)
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return queue.StagedInfo{}, err
	}
	if key == m.failStage {
		return queue.StagedInfo{}, errors.New("staging refused")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.staged == nil {
		m.staged = map[string][]byte{}
	}
	m.staged[key] = b
	return queue.StagedInfo{Key: key, Size: uint64(len(b))}, nil
}

func (m *memQueue) PublishResult(_ context.Context, r *queue.Result) (bool, error) {
	if _, err := r.Encode(); err != nil {
		return false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.results = append(m.results, r)
	return false, nil
}

func offline() map[string]string {
	o := nix.OfflineOptions()
	o["sandbox"] = "false"
	return o
}

// helloTarget is examples/hello.nix with busybox bb and a message unique
// to the test, the salt and the time, so that Nix really builds it.
func helloTarget(t testing.TB, bb, salt string) Target {
	return Target{
		Installable: attest.Installable{Kind: KindFile, File: "../examples/hello.nix", Attr: "hello"},
		Args:        map[string]string{"busybox": bb},
		ArgStrs:     map[string]string{"message": t.Name() + salt + time.Now().String()},
	}
}

// testSigner signs with a new key.
func testSigner(t testing.TB) *attest.Signer {
	t.Helper()
	s, _ := testkey.Signer(t)
	return s
}

// TestStageClosures builds the sample in a chroot store and publishes it
// with StageClosures: the result names the closure, whose export another
// store imports and builds to the same output.
func TestStageClosures(t *testing.T) {
	bb := testnix.Busybox(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	signer := testSigner(t)
	q := &memQueue{}
	b := &Builder{
		Nix: &nix.Nix{Root: t.TempDir(), Options: offline()}, Queue: q, Signer: signer,
		BuilderID: "test-builder", Tenant: "t1", StageClosures: true,
	}
	tg := helloTarget(t, bb, "")
	pubs, err := b.Build(ctx, tg)
	if err != nil || len(pubs) != 1 {
		t.Fatalf("Build: %v %v", pubs, err)
	}
	drv := pubs[0].DrvPath
	if len(q.results) != 1 || q.results[0].Closure != queue.ScopedKey(queue.ClosureKey(drv), "test-builder") {
		t.Fatalf("result closure %q, want %q", q.results[0].Closure, queue.ScopedKey(queue.ClosureKey(drv), "test-builder"))
	}
	exp, ok := q.staged[queue.ScopedKey(queue.ClosureKey(drv), "test-builder")]
	if !ok {
		t.Fatal("closure not staged")
	}
	other := &nix.Nix{Root: t.TempDir(), Options: offline()}
	imported, err := other.Import(ctx, bytes.NewReader(exp))
	if err != nil {
		t.Fatal(err)
	}
	if len(imported) != 2 { // the .drv and the busybox source
		t.Fatalf("imported %v", imported)
	}
	outs, err := other.RealiseWith(ctx, nix.RealiseOptions{NoSubstitute: true}, drv)
	if err != nil || len(outs) != 1 || outs[0] != pubs[0].Outputs[0].Path {
		t.Fatalf("rebuild from the closure: %v %v", outs, err)
	}

	// Without StageClosures nothing is staged besides the NAR; a closure
	// that cannot be staged fails Publish, and nothing is published.
	b.StageClosures = false
	q2 := &memQueue{}
	b.Queue = q2
	if _, err := b.Publish(ctx, drv, tg, time.Now(), time.Now()); err != nil {
		t.Fatal(err)
	}
	if q2.results[0].Closure != "" || len(q2.staged) != 1 {
		t.Fatalf("without StageClosures: closure %q, %d staged", q2.results[0].Closure, len(q2.staged))
	}
	b.StageClosures = true
	q3 := &memQueue{failStage: queue.ScopedKey(queue.ClosureKey(drv), "test-builder")}
	b.Queue = q3
	if _, err := b.Publish(ctx, drv, tg, time.Now(), time.Now()); err == nil || len(q3.results) != 0 {
		t.Fatalf("publish with a failing closure stage: %v, %d results", err, len(q3.results))
	}
	// A .drv the store lacks has no closure to stage.
	bad := &Builder{Nix: b.Nix, Queue: &memQueue{}}
	if _, _, err := bad.stageClosure(ctx, "/nix/store/00000000000000000000000000000000-missing.drv"); err == nil {
		t.Fatal("closure of a missing .drv staged")
	}
}

// TestStageRetries: a NAR upload cut by the broker is retried from a fresh
// dump and the result published with the whole NAR; a refusal is not
// retried.
func TestStageRetries(t *testing.T) {
	bb := testnix.Busybox(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	signer := testSigner(t)
	q := &memQueue{cutStage: 2}
	b := &Builder{Nix: &nix.Nix{Root: t.TempDir(), Options: offline()}, Queue: q, Signer: signer, BuilderID: "test-builder", Tenant: "t1"}
	tg := helloTarget(t, bb, "")
	pubs, err := b.Build(ctx, tg)
	if err != nil || len(pubs) != 1 {
		t.Fatalf("Build with two cut uploads: %v %v", pubs, err)
	}
	out := pubs[0].Outputs[0]
	nar := q.staged[queue.ScopedKey(queue.StagingKey(out.NarHashHex()), "test-builder")]
	if q.stageCalls != 3 || len(q.results) != 1 || sha256.Sum256(nar) != out.NarHash {
		t.Fatalf("%d uploads, %d results, staged NAR sha256 %x; want 3, 1, %x", q.stageCalls, len(q.results), sha256.Sum256(nar), out.NarHash)
	}

	q2 := &memQueue{failStage: queue.ScopedKey(queue.StagingKey(out.NarHashHex()), "test-builder")}
	b.Queue = q2
	if _, err := b.Publish(ctx, pubs[0].DrvPath, tg, time.Now(), time.Now()); err == nil || q2.stageCalls != 1 || len(q2.results) != 0 {
		t.Fatalf("refused upload: %v after %d uploads, %d results; want an error after 1 upload", err, q2.stageCalls, len(q2.results))
	}
}

// TestBuildTargets: the targets are built in order and each result handed
// on; a target that fails stops the rest; an error of the callback stops
// it too and is returned.
func TestBuildTargets(t *testing.T) {
	bb := testnix.Busybox(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	q := &memQueue{}
	b := &Builder{Nix: &nix.Nix{Root: t.TempDir(), Options: offline()}, Queue: q, Signer: testSigner(t), BuilderID: "test-builder", Tenant: "t1"}
	hello := func(msg string) Target {
		return helloTarget(t, bb, msg)
	}
	missing := Target{Installable: attest.Installable{Kind: KindDrv, Ref: "/nix/store/00000000000000000000000000000000-missing.drv"}}
	var got []string
	each := func(p Published) error { got = append(got, p.DrvPath); return nil }
	if err := b.BuildTargets(ctx, []Target{hello("a"), hello("b")}, each); err != nil || len(got) != 2 || got[0] == got[1] || len(q.results) != 2 {
		t.Fatalf("two targets: %v, handed %v, %d published", err, got, len(q.results))
	}
	got = nil
	if err := b.BuildTargets(ctx, []Target{hello("c"), missing, hello("d")}, each); err == nil || len(got) != 1 || len(q.results) != 3 {
		t.Fatalf("a failing target: %v, handed %v, %d published; want an error after one", err, got, len(q.results))
	}
	stop := errors.New("disk full")
	calls := 0
	err := b.BuildTargets(ctx, []Target{hello("e"), hello("f")}, func(Published) error { calls++; return stop })
	if !errors.Is(err, stop) || calls != 1 || len(q.results) != 4 {
		t.Fatalf("a failing callback: %v after %d calls, %d published", err, calls, len(q.results))
	}
}
