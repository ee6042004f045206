package local

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"path/filepath"
	"slices"
	"sync"
)

// Batched durability. Every commit must be durable before it returns:
// the data of its files before their renames, the renames of a stage
// (the directories' entries) before the next stage's. Each of these
// flushes waits for a journal commit of the filesystem, and each costs a
// blocking system call on a thread of its own, with the scheduling that
// goes with it. So a store's commits are flushed by one goroutine, in
// rounds that serve every commit in flight at once:
//
//	flush ─ rename ─ flush ─ rename ─ flush ...
//
// A round's flush makes durable what was written and renamed before it
// started: the data of every file of every commit that arrived since the
// previous flush, and the renames made since then. After it, each commit
// whose stage it covered renames its next stage, or is done; each commit
// that arrived renames its first stage. So a commit of S stages waits
// for S+1 flushes, each shared with every commit in flight, whatever
// their number; the old way (group.go) cost each commit a flush of its
// own files and one of each directory per stage.
//
// The stage order holds (every object of a stage durable before any of
// the next becomes visible), and each commit returns only once its
// objects are durable, as before: only who pays for the flushes changes.
// A commit that fails (its ctx done, a rename refused, a flush error for
// its files or directories) fails alone; the others go on. A round
// starts as soon as the previous one ends: a lone commit waits for
// nobody.

// batcher runs the rounds of one Store.
type batcher struct {
	mu      sync.Mutex
	arrived []*request // waiting for the next flush
	running bool       // a goroutine runs rounds until no commit waits
	// rounds counts the rounds run, for tests that check commits share
	// them.
	rounds int
	// flush makes durable the data of files (closing each) and the
	// entries of dirs; it returns the error of each (nil: durable).
	flush func(files []*item, dirs []string) (fileErrs, dirErrs []error)
}

// commit queues r for the next round and returns its outcome once it is
// durable or failed. The rounds run on a goroutine started for them,
// which ends as soon as no commit waits: it belongs to the commits
// waiting.
func (b *batcher) commit(s *Store, r *request) error {
	r.done = make(chan struct{})
	b.mu.Lock()
	b.arrived = append(b.arrived, r)
	if !b.running {
		b.running = true
		go b.run(s)
	}
	b.mu.Unlock()
	<-r.done
	return r.err
}

// run runs rounds until no commit waits.
func (b *batcher) run(s *Store) {
	var renamed []*request // renamed a stage since the last flush
	for {
		b.mu.Lock()
		fresh := b.arrived
		b.arrived = nil
		if len(fresh) == 0 && len(renamed) == 0 {
			b.running = false
			b.mu.Unlock()
			return
		}
		b.rounds++
		b.mu.Unlock()
		renamed = s.round(b, fresh, renamed)
	}
}

// round flushes the files of the commits fresh and the renames of the
// commits renamed, then lets each go on to its next stage, and returns
// those that renamed one.
func (s *Store) round(b *batcher, fresh, renamed []*request) []*request {
	var files []*item
	var owner []*request
	for _, r := range fresh {
		for _, stage := range r.stages {
			for _, it := range stage {
				files = append(files, it)
				owner = append(owner, r)
			}
		}
	}
	var dirs []string
	for _, r := range renamed {
		for _, d := range r.dirs {
			if !slices.Contains(dirs, d) {
				dirs = append(dirs, d)
			}
		}
	}
	var fileErrs, dirErrs []error
	if len(files) > 0 || len(dirs) > 0 {
		fileErrs, dirErrs = b.flush(files, dirs)
	}
	for i, err := range fileErrs {
		if err != nil && owner[i].err == nil {
			owner[i].fail(fmt.Errorf("local store: commit %s: sync: %w", files[i].key, s.noSpace(err)))
		}
	}
	for i, err := range dirErrs {
		if err == nil {
			continue
		}
		// The renamed objects stay visible: a retry writes the same
		// bytes.
		for _, r := range renamed {
			if r.err == nil && slices.Contains(r.dirs, dirs[i]) {
				r.fail(fmt.Errorf("local store: commit: %w", s.noSpace(err)))
			}
		}
	}
	var next []*request
	for _, r := range slices.Concat(renamed, fresh) {
		if r.err == nil && r.next < len(r.stages) {
			if err := r.ctx.Err(); err != nil {
				r.fail(fmt.Errorf("local store: commit %s: %w", r.stages[r.next][0].key, err))
			} else if r.dirs, err = s.renameStage(r.stages[r.next]); err != nil {
				r.fail(err)
			} else {
				r.next++
				next = append(next, r)
				continue
			}
		}
		close(r.done)
	}
	return next
}

// renameStage renames the files of one stage of a commit into place and
// returns the directories whose entries changed. It stops at the first
// failure.
func (s *Store) renameStage(stage []*item) ([]string, error) {
	var dirs []string
	for _, it := range stage {
		keyDir := path.Dir(it.key)
		if err := s.mkdirs(keyDir); err != nil {
			return dirs, fmt.Errorf("local store: commit %s: %w", it.key, s.noSpace(err))
		}
		err := rename(it.tmp, it.name)
		if errors.Is(err, fs.ErrNotExist) && keyDir != "." {
			// A directory mkdirs remembers was removed (by hand): make
			// it again.
			s.dirs.Delete(keyDir)
			if err = s.mkdirs(keyDir); err == nil {
				err = rename(it.tmp, it.name)
			}
		}
		if err != nil {
			return dirs, fmt.Errorf("local store: commit %s: %w", it.key, s.noSpace(err))
		}
		it.renamed = true
		if d := filepath.Dir(it.name); !slices.Contains(dirs, d) {
			dirs = append(dirs, d)
		}
	}
	return dirs, nil
}

// flushEach is a round's flush by an fsync of each directory and file,
// up to syncParallel at once so that the filesystem commits them
// together. A syncfs of the whole filesystem instead would take one
// system call, but it also writes back whatever else is dirty there,
// which the store then waits for: on a machine running builds it was
// slower, and spent more CPU (BenchmarkEntries, "batch-syncfs").
func flushEach(files []*item, dirs []string) ([]error, []error) {
	fileErrs := make([]error, len(files))
	dirErrs := make([]error, len(dirs))
	one := func(i int) {
		if i < len(dirs) {
			dirErrs[i] = syncDir(dirs[i])
			return
		}
		f := files[i-len(dirs)].f
		err := f.Sync()
		if cerr := f.Close(); err == nil {
			err = cerr // a failed close can mean lost data (NFS)
		}
		fileErrs[i-len(dirs)] = err
	}
	n := len(dirs) + len(files)
	if n == 1 {
		one(0)
		return fileErrs, dirErrs
	}
	var wg sync.WaitGroup
	next := make(chan int)
	for range min(n, syncParallel) {
		wg.Go(func() {
			for i := range next {
				one(i)
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	return fileErrs, dirErrs
}
