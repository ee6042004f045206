package local

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"

	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cache-push/store/storetest"
)

// TestDirSyncsShare: the Commits that renamed into a directory while its
// fsync ran share the next one.
func TestDirSyncsShare(t *testing.T) {
	// In a bubble, synctest.Wait returns once every waiter is blocked
	// behind the running fsync: no sleep that a loaded machine outruns.
	synctest.Test(t, testDirSyncsShare)
}

func testDirSyncsShare(t *testing.T) {
	dir := t.TempDir()
	first := make(chan struct{})
	release := make(chan struct{})
	var calls atomic.Int32
	g := &dirSyncs{fsync: func(d string) error {
		if calls.Add(1) == 1 {
			close(first)
			<-release // the first fsync runs until all others wait
		}
		return syncDir(d)
	}}
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := g.sync(dir); err != nil {
			t.Error(err)
		}
	})
	<-first
	const waiters = 63
	for range waiters {
		wg.Go(func() {
			if err := g.sync(dir); err != nil {
				t.Error(err)
			}
		})
	}
	// Let them all queue behind the running fsync.
	synctest.Wait()
	g.mu.Lock()
	d := g.m[dir]
	g.mu.Unlock()
	d.mu.Lock()
	if d.started != 1 {
		t.Errorf("%d fsyncs started while the first ran", d.started-1)
	}
	d.mu.Unlock()
	close(release)
	wg.Wait()
	if g.count != 2 {
		t.Errorf("1 + %d syncs of one directory ran %d fsyncs, want 2: the first, and one for all that came while it ran", waiters, g.count)
	}
}

// Without group commit the store keeps the contract too.
func TestConformanceWithoutGroupCommit(t *testing.T) {
	runConformance(t, WithoutGroupCommit())
}

// The group commit before batch.go keeps the contract too.
func TestConformanceSharedDirSyncs(t *testing.T) {
	runConformance(t, withSharedDirSyncs())
}

// One syncfs per round keeps the contract too.
func TestConformanceFilesystemFlush(t *testing.T) {
	runConformance(t, WithFilesystemFlush())
}

func runConformance(t *testing.T, opts ...Option) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := New(filepath.Join(t.TempDir(), "cache"), opts...)
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

// TestGroupCommitShares: Commits running at the same time each return
// with their object in place (how many directory fsyncs they share
// depends on timing; TestDirSyncsShare checks the sharing).
func TestGroupCommitShares(t *testing.T) {
	t.Run("batch", func(t *testing.T) {
		s := newTestStore(t)
		testGroupCommitShares(t, s)
		s.batch.mu.Lock()
		t.Logf("%d commits in %d rounds", groupWriters, s.batch.rounds)
		s.batch.mu.Unlock()
	})
	t.Run("shared", func(t *testing.T) {
		s, err := New(filepath.Join(t.TempDir(), "cache"), withSharedDirSyncs())
		if err != nil {
			t.Fatal(err)
		}
		testGroupCommitShares(t, s)
		s.group.mu.Lock()
		t.Logf("%d commits, %d directory fsyncs", groupWriters, s.group.count)
		s.group.mu.Unlock()
	})
}

// groupWriters is how many writers TestGroupCommitShares runs at once.
const groupWriters = 64

func testGroupCommitShares(t *testing.T, s *Store) {
	const writers = groupWriters
	var ready, wg sync.WaitGroup
	ready.Add(writers)
	start := make(chan struct{})
	errs := make(chan error, writers)
	for i := range writers {
		wg.Go(func() {
			key := fmt.Sprintf("nar/%d.nar.zst", i)
			p, err := s.Create(t.Context())
			ready.Done()
			if err != nil {
				errs <- err
				return
			}
			defer p.Abort()
			p.Write([]byte(key))
			<-start
			if err := p.Commit(t.Context(), key); err != nil {
				errs <- err
				return
			}
			// Durable and visible when Commit returns.
			b, err := os.ReadFile(filepath.Join(s.Dir(), filepath.FromSlash(key)))
			if err == nil && string(b) != key {
				err = fmt.Errorf("%s holds %q", key, b)
			}
			errs <- err
		})
	}
	ready.Wait()
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if ents, _ := os.ReadDir(s.tmp); len(ents) != 0 {
		t.Errorf("%d temporary files left", len(ents))
	}
}

// TestCommitGroupStageFails: a stage that fails on disk (here a file
// named like the nar directory) keeps the next stage (the narinfo)
// invisible, also while other writers' commits succeed.
func TestCommitGroupStageFails(t *testing.T) {
	s := newTestStore(t)
	if err := os.WriteFile(filepath.Join(s.Dir(), "nar"), []byte("in the way"), 0o644); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			info := fmt.Sprintf("ok%d.narinfo", i)
			if err := store.Put(t.Context(), s, info, strings.NewReader(info)); err != nil {
				t.Error(err)
			}
		})
	}
	nar, err := store.Write(t.Context(), s, "nar/x.nar.zst", strings.NewReader("nar"))
	if err != nil {
		t.Fatal(err)
	}
	info, err := store.Write(t.Context(), s, "x.narinfo", strings.NewReader("info"))
	if err != nil {
		t.Fatal(err)
	}
	err = s.CommitGroup(t.Context(), []store.Object{nar}, []store.Object{info})
	if !errors.Is(err, syscall.ENOTDIR) {
		t.Errorf("CommitGroup under a file = %v, want ENOTDIR", err)
	}
	wg.Wait()
	if _, err := s.Stat(t.Context(), "x.narinfo"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("narinfo of a failed group: Stat = %v, want ErrNotFound", err)
	}
	for i := range 8 {
		if _, err := s.Stat(t.Context(), fmt.Sprintf("ok%d.narinfo", i)); err != nil {
			t.Error(err)
		}
	}
	if ents, _ := os.ReadDir(s.tmp); len(ents) != 0 {
		t.Errorf("%d temporary files left", len(ents))
	}
}
