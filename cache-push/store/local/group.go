package local

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sync"

	"codeberg.org/provenix/provenix/cache-push/store"
)

// Commits and the group commit before batch.go. Every Commit must be
// durable before it returns, which on a disk means an fsync of the file,
// a rename, and an fsync of the directory the rename changed. Here each
// Commit fsyncs its own files (in parallel, which the filesystem merges
// into shared journal commits) and renames them itself; without group
// commit (WithoutGroupCommit) it fsyncs its directories alone too. With
// withSharedDirSyncs, the way before batch.go, the directory fsyncs are
// shared: a Commit that renamed into a directory waits for the next fsync
// of that directory that starts after its rename, and one fsync serves
// every rename made before it started. batch.go shares the file fsyncs
// as well, and fsyncs files and directories in one round; against this
// way it spent 15-22% less CPU per entry, at a rate within the noise of
// a loaded machine (BenchmarkEntries). It is kept for that benchmark.

// syncParallel bounds the fsyncs of one group running at once.
const syncParallel = 16

// item is one object of a commit: its closed-or-open temporary file and
// the file it is renamed to.
type item struct {
	f       *os.File
	tmp     string // temporary file name
	name    string // final file name
	key     string
	renamed bool
}

// request is one CommitGroup (a Commit is a group of one object): stages
// of items, each stage durable before the next is renamed.
type request struct {
	ctx    context.Context
	stages [][]*item
	err    error
	// With a batcher: next is the stage to rename next, dirs the
	// directories the last renamed one touched, and done is closed once
	// r is durable or failed.
	next int
	dirs []string
	done chan struct{}
}

// dirSyncs shares the fsyncs of each directory among the Commits that
// renamed into it.
type dirSyncs struct {
	mu sync.Mutex
	m  map[string]*dirSync
	// count counts the directory fsyncs run, for tests that check
	// Commits share them.
	count int
	// fsync is syncDir; tests make it wait.
	fsync func(dir string) error
}

// dirSync is the state of one directory's fsyncs: started and completed
// number them; one runs at a time.
type dirSync struct {
	mu                 sync.Mutex
	cond               sync.Cond
	started, completed uint64
	running            bool
	err                error // of the fsync numbered completed
}

// sync returns once an fsync of dir that started after the call has
// completed: every rename into dir made before the call is durable then.
func (g *dirSyncs) sync(dir string) error {
	g.mu.Lock()
	d := g.m[dir]
	if d == nil {
		if g.m == nil {
			g.m = map[string]*dirSync{}
		}
		d = &dirSync{}
		d.cond.L = &d.mu
		g.m[dir] = d
	}
	g.mu.Unlock()

	d.mu.Lock()
	defer d.mu.Unlock()
	// A running fsync may have started before the caller's rename: only
	// the next one counts.
	want := d.started + 1
	for d.completed < want {
		if d.running {
			d.cond.Wait()
			continue
		}
		d.running = true
		d.started++
		n := d.started
		d.mu.Unlock()
		err := g.fsync(dir)
		g.mu.Lock()
		g.count++
		g.mu.Unlock()
		d.mu.Lock()
		d.running, d.completed, d.err = false, n, err
		d.cond.Broadcast()
	}
	// d.err is of an fsync that started after the caller's rename (the
	// first to complete at or after want): its success covers the rename.
	return d.err
}

// syncDir fsyncs dir, shared with other Commits when group commit is on.
func (s *Store) syncDirShared(dir string) error {
	if s.group == nil {
		return syncDir(dir)
	}
	return s.group.sync(dir)
}

// commit makes r durable and returns its outcome: fsync of every file,
// then for each stage the renames and the fsync of each directory they
// touched. On failure it stops; the files not renamed yet are removed.
func (s *Store) commit(r *request) error {
	s.syncFiles(r)
	for _, stage := range r.stages {
		if r.err != nil {
			return r.err
		}
		if err := r.ctx.Err(); err != nil {
			r.fail(fmt.Errorf("local store: commit %s: %w", stage[0].key, err))
			return r.err
		}
		var dirs []string
		for _, it := range stage {
			dirty, err := s.mkdirs(path.Dir(it.key))
			if err != nil {
				r.fail(fmt.Errorf("local store: commit %s: %w", it.key, s.noSpace(err)))
				return r.err
			}
			if err := os.Rename(it.tmp, it.name); err != nil {
				r.fail(fmt.Errorf("local store: commit %s: %w", it.key, s.noSpace(err)))
				return r.err
			}
			it.renamed = true
			for _, d := range append(dirty, filepath.Dir(it.name)) {
				if !slices.Contains(dirs, d) {
					dirs = append(dirs, d)
				}
			}
		}
		// The renamed objects are visible now; make the renames (and any
		// new directories) durable before a later stage's. A failure here
		// is reported, but the objects stay: a retry writes the same bytes.
		for _, d := range dirs {
			if err := s.syncDirShared(d); err != nil {
				r.fail(fmt.Errorf("local store: commit: %w", err))
				return r.err
			}
		}
	}
	return r.err
}

// syncFiles fsyncs and closes every file of r: the data must be on disk
// before a rename makes it reachable, or a crash could leave a
// complete-looking name with missing content. Several files are fsynced at
// once, so that the filesystem commits them together.
func (s *Store) syncFiles(r *request) {
	var items []*item
	for _, stage := range r.stages {
		items = append(items, stage...)
	}
	errs, _ := flushEach(items, nil)
	for i, err := range errs {
		if err != nil {
			errs[i] = fmt.Errorf("local store: commit %s: sync: %w", items[i].key, s.noSpace(err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		r.fail(err)
	}
}

// fail records err as r's outcome and removes its files not renamed yet:
// they never become visible.
func (r *request) fail(err error) {
	r.err = err
	for _, stage := range r.stages {
		for _, it := range stage {
			if !it.renamed {
				it.f.Close() // closed already after a sync; the error does not matter
				os.Remove(it.tmp)
			}
		}
	}
}

// CommitGroup implements store.GroupCommitter: the files of all stages are
// fsynced at once, then each stage is renamed and its directories fsynced
// (shared with the Commits running at the same time) before the next.
// Objects not created by s are committed one by one (store.CommitEach).
func (s *Store) CommitGroup(ctx context.Context, stages ...[]store.Object) error {
	for _, stage := range stages {
		for _, o := range stage {
			if p, ok := o.Pending.(*pending); !ok || p.s != s {
				return store.CommitEach(ctx, stages...)
			}
		}
	}
	r := &request{ctx: ctx}
	var err error
	for _, stage := range stages {
		var items []*item
		for _, o := range stage {
			it, ierr := o.Pending.(*pending).take(o.Key)
			if ierr != nil {
				err = errors.Join(err, ierr)
				continue
			}
			items = append(items, it)
		}
		if len(items) > 0 {
			r.stages = append(r.stages, items)
		}
	}
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		r.fail(err)
		return err
	}
	return s.commitRequest(r)
}

// commitRequest commits r by the store's batcher, or on its own.
func (s *Store) commitRequest(r *request) error {
	if s.batch != nil && len(r.stages) > 0 {
		return s.batch.commit(s, r)
	}
	return s.commit(r)
}
