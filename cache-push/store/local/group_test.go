package local

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cache-push/store/storetest"
)

// Without group commit the store keeps the contract too.
func TestConformanceWithoutGroupCommit(t *testing.T) {
	runConformance(t, WithoutGroupCommit())
}

// One syncfs per round keeps the contract too.
func TestConformanceFilesystemFlush(t *testing.T) {
	runConformance(t, WithFilesystemFlush())
}

func runConformance(t *testing.T, opts ...Option) {
	storetest.Run(t, func(t *testing.T) store.Store { return newTestStore(t, opts...) })
}

// TestGroupCommitShares: Commits running at the same time each return
// with their object in place (how many rounds they share depends on
// timing; TestBatchRoundsShare checks the sharing).
func TestGroupCommitShares(t *testing.T) {
	t.Run("batch", func(t *testing.T) {
		s := newTestStore(t)
		testGroupCommitShares(t, s)
		s.batch.mu.Lock()
		t.Logf("%d commits in %d rounds", groupWriters, s.batch.rounds)
		s.batch.mu.Unlock()
	})
	t.Run("alone", func(t *testing.T) {
		testGroupCommitShares(t, newTestStore(t, WithoutGroupCommit()))
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

// TestCommitGroupRefusedLeavesNothing: an object CommitGroup refuses
// before committing (an invalid key, a write that failed) is finished
// like the others of its group: its descriptor closed and its temporary
// file removed.
func TestCommitGroupRefusedLeavesNothing(t *testing.T) {
	s := newTestStore(t)
	good, err := store.Write(t.Context(), s, "nar/x.nar.zst", strings.NewReader("nar"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := s.Create(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	f := p.(*pending).f
	bad := store.Object{Pending: p, Key: "../escape"}
	if err := s.CommitGroup(t.Context(), []store.Object{good}, []store.Object{bad}); err == nil {
		t.Fatal("CommitGroup with an invalid key succeeded")
	}
	if f.fd >= 0 {
		t.Errorf("refused object's descriptor %d left open", f.fd)
	}
	if ents, _ := os.ReadDir(s.tmp); len(ents) != 0 {
		t.Errorf("%d temporary files left", len(ents))
	}
	if _, err := s.Stat(t.Context(), "nar/x.nar.zst"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("object of a refused group: Stat = %v, want ErrNotFound", err)
	}
}
