package local

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"

	"codeberg.org/provenix/provenix/cache-push/store"
)

// TestBatchRoundsShare: the commits that arrive while a round flushes
// share the next rounds, whatever their number: the first commit's round,
// then one round that flushes all the others' files (and the first's
// rename), then one for their renames.
func TestBatchRoundsShare(t *testing.T) {
	synctest.Test(t, testBatchRoundsShare)
}

func testBatchRoundsShare(t *testing.T) {
	first := make(chan struct{})
	release := make(chan struct{})
	var flushes atomic.Int32
	s, err := New(filepath.Join(t.TempDir(), "cache"), withBatch(func(files []*item, dirs []string) ([]error, []error) {
		if flushes.Add(1) == 1 {
			close(first)
			<-release // the first round flushes until all others wait
		}
		return flushEach(files, dirs)
	}))
	if err != nil {
		t.Fatal(err)
	}
	put := func(i int) {
		key := fmt.Sprintf("%d.narinfo", i)
		if err := store.Put(t.Context(), s, key, strings.NewReader(key)); err != nil {
			t.Error(err)
		}
	}
	var wg sync.WaitGroup
	wg.Go(func() { put(0) })
	<-first
	const waiters = 63
	for i := range waiters {
		wg.Go(func() { put(i + 1) })
	}
	synctest.Wait() // every waiter queued behind the first round
	close(release)
	wg.Wait()
	if n := flushes.Load(); n != 3 {
		t.Errorf("1 + %d commits of one stage took %d rounds, want 3", waiters, n)
	}
	for i := range waiters + 1 {
		if _, err := s.Stat(t.Context(), fmt.Sprintf("%d.narinfo", i)); err != nil {
			t.Error(err)
		}
	}
}

// TestBatchFlushFailsAlone: a file the flush could not make durable fails
// its own commit, and keeps its later stages invisible; the other commits
// of the round go on.
func TestBatchFlushFailsAlone(t *testing.T) {
	errDisk := errors.New("disk error")
	s, err := New(filepath.Join(t.TempDir(), "cache"), withBatch(func(files []*item, dirs []string) ([]error, []error) {
		fileErrs, dirErrs := flushEach(files, dirs)
		for i, it := range files {
			if it.key == "nar/bad.nar.zst" {
				fileErrs[i] = errDisk
			}
		}
		return fileErrs, dirErrs
	}))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := map[string]error{}
	var mu sync.Mutex
	for _, name := range []string{"bad", "good1", "good2", "good3"} {
		wg.Go(func() {
			var objs []store.Object
			for _, key := range []string{"nar/" + name + ".nar.zst", name + ".narinfo"} {
				o, err := store.Write(t.Context(), s, key, strings.NewReader(key))
				if err != nil {
					t.Error(err)
					return
				}
				objs = append(objs, o)
			}
			err := s.CommitGroup(t.Context(), objs[:1], objs[1:])
			mu.Lock()
			errs[name] = err
			mu.Unlock()
		})
	}
	wg.Wait()
	if !errors.Is(errs["bad"], errDisk) {
		t.Errorf("commit with a file the flush failed: %v, want %v", errs["bad"], errDisk)
	}
	for _, key := range []string{"nar/bad.nar.zst", "bad.narinfo"} {
		if _, err := s.Stat(t.Context(), key); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("%s of the failed commit: Stat = %v, want ErrNotFound", key, err)
		}
	}
	for _, name := range []string{"good1", "good2", "good3"} {
		if errs[name] != nil {
			t.Errorf("%s: %v", name, errs[name])
		}
		if _, err := s.Stat(t.Context(), name+".narinfo"); err != nil {
			t.Error(err)
		}
	}
	if ents, _ := os.ReadDir(s.tmp); len(ents) != 0 {
		t.Errorf("temporary files left: %v", ents)
	}
}

// TestBatchDirFlushFails: a directory the flush could not make durable
// fails the commits that renamed into it, and keeps their later stages
// invisible; a commit that renamed elsewhere goes on.
func TestBatchDirFlushFails(t *testing.T) {
	errDisk := errors.New("disk error")
	var s *Store
	s, err := New(filepath.Join(t.TempDir(), "cache"), withBatch(func(files []*item, dirs []string) ([]error, []error) {
		fileErrs, dirErrs := flushEach(files, dirs)
		for i, d := range dirs {
			if d == filepath.Join(s.Dir(), "nar") {
				dirErrs[i] = errDisk
			}
		}
		return fileErrs, dirErrs
	}))
	if err != nil {
		t.Fatal(err)
	}
	write := func(key string) store.Object {
		o, err := store.Write(t.Context(), s, key, strings.NewReader(key))
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	nar, info := write("nar/x.nar.zst"), write("x.narinfo")
	side, info2 := write("y.provenance.json"), write("y.narinfo")
	var wg sync.WaitGroup
	var errNar, errSide error
	wg.Go(func() { errNar = s.CommitGroup(t.Context(), []store.Object{nar}, []store.Object{info}) })
	wg.Go(func() { errSide = s.CommitGroup(t.Context(), []store.Object{side}, []store.Object{info2}) })
	wg.Wait()
	if !errors.Is(errNar, errDisk) {
		t.Errorf("commit renamed into a directory the flush failed: %v, want %v", errNar, errDisk)
	}
	if _, err := s.Stat(t.Context(), "x.narinfo"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("narinfo after its NAR's directory failed to flush: Stat = %v, want ErrNotFound", err)
	}
	if errSide != nil {
		t.Errorf("commit into the root only: %v", errSide)
	}
	if _, err := s.Stat(t.Context(), "y.narinfo"); err != nil {
		t.Error(err)
	}
	if ents, _ := os.ReadDir(s.tmp); len(ents) != 0 {
		t.Errorf("temporary files left: %v", ents)
	}
}

// TestBatchStuckFlushStaysInItsStore: a flush that does not return holds
// up only the commits of its own store; another store's commits, which
// have their own rounds, go on. Once it returns, its commit completes and
// the rounds' goroutines end (synctest.Test fails on one left blocked).
func TestBatchStuckFlushStaysInItsStore(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		stuck := make(chan struct{})
		release := make(chan struct{})
		slow, err := New(filepath.Join(t.TempDir(), "slow"), withBatch(func(files []*item, dirs []string) ([]error, []error) {
			select {
			case <-stuck:
			default:
				close(stuck)
				<-release
			}
			return flushEach(files, dirs)
		}))
		if err != nil {
			t.Fatal(err)
		}
		fast := newTestStore(t)
		done := make(chan error, 1)
		go func() { done <- store.Put(t.Context(), slow, "slow.narinfo", strings.NewReader("slow")) }()
		<-stuck
		for i := range 4 {
			key := fmt.Sprintf("%d.narinfo", i)
			if err := store.Put(t.Context(), fast, key, strings.NewReader(key)); err != nil {
				t.Fatalf("commit to another store while one flush is stuck: %v", err)
			}
		}
		synctest.Wait()
		select {
		case err := <-done:
			t.Fatalf("commit returned during its stuck flush: %v", err)
		default:
		}
		close(release)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
}

// TestItemsOpenOrder: the items of a commit carry the order their files
// were opened in, whatever the order of the commit (flushFS syncs through
// the oldest of a round).
func TestItemsOpenOrder(t *testing.T) {
	s := newTestStore(t)
	first, err := s.Create(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer first.Abort()
	second, err := s.Create(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer second.Abort()
	b, err := second.(*pending).take("b.narinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer b.f.Close()
	a, err := first.(*pending).take("a.narinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer a.f.Close()
	if a.seq == 0 || a.seq >= b.seq {
		t.Errorf("opened first: seq %d; second: %d", a.seq, b.seq)
	}
}
