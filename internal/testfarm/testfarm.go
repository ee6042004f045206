// Package testfarm submits real build sets for tests of the farm's
// workers (a volunteer, an idle runner): a Nix file's attributes,
// instantiated in a store of their own, their closure staged, and a
// scheduler dispatching them.
package testfarm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/farm"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/nix"
	"codeberg.org/provenix/provenix/queue"
)

// Nobody is a cache that has nothing: every derivation is built.
type Nobody struct{}

// Has implements farm.Cache.
func (Nobody) Has(context.Context, string) (bool, error) { return false, nil }

// Submit instantiates attrs of the Nix expression src (a function of
// busybox, a path, and message, a string: a fresh random one, so Nix
// really builds) in a store of its own, stages their closure and
// submits them as one set of tenant with quorum 1 and maxAttempts, on a
// Nobody cache, after creating the farm's streams. It returns the roots
// (the attributes' .drv paths) and the set.
func Submit(t testing.TB, conn *queue.Conn, tenant, src, busybox string, maxAttempts int, attrs ...string) ([]string, *farm.Submitted) {
	t.Helper()
	ctx := testctx.New(t, 2*time.Minute)
	if err := conn.EnsureFarm(ctx, queue.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "sample.nix")
	if err := os.WriteFile(file, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	m := make([]byte, 8)
	rand.Read(m)
	opts := nix.OfflineOptions()
	opts["sandbox"] = "false"
	submitter := &nix.Nix{Root: t.TempDir(), Options: opts}
	roots, err := farm.Roots(ctx, submitter, []string{file}, farm.RootsOptions{Attrs: attrs,
		Args: map[string]string{"busybox": busybox}, ArgStrs: map[string]string{"message": hex.EncodeToString(m)}})
	if err != nil || len(roots) != len(attrs) {
		t.Fatalf("roots %v: %v", roots, err)
	}
	id := farm.NewSetID()
	closure, err := farm.StageClosure(ctx, conn, submitter, "submitter-1", id, roots)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := farm.Submit(ctx, conn, farm.SubmitOptions{Tenant: tenant, ID: id, Roots: roots, Closure: closure, Cache: Nobody{},
		MaxAttempts: maxAttempts, Read: func(p string) ([]byte, error) { return os.ReadFile(submitter.RealPath(p)) }})
	if err != nil {
		t.Fatal(err)
	}
	return roots, sub
}

// StartScheduler runs a farm scheduler on a Nobody cache until the test
// ends.
func StartScheduler(t testing.TB, conn *queue.Conn) {
	t.Helper()
	sched, err := farm.NewScheduler(farm.SchedulerConfig{Conn: conn, Cache: Nobody{}, ResyncEvery: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := sched.Open(testctx.New(t, time.Minute)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sched.Close(context.Background()) })
}
