package local

import (
	"context"
	"errors"
	"fmt"
	"os"

	"codeberg.org/provenix/provenix/cache-push/store"
)

// Commits. Every Commit must be durable before it returns, which on a
// disk means an fsync of the file, a rename, and an fsync of the
// directory the rename changed. By default a store's commits share these
// flushes (batch.go); without group commit (WithoutGroupCommit) each
// Commit here fsyncs its own files (in parallel, which the filesystem
// merges into shared journal commits), renames them, and fsyncs its
// directories alone. BenchmarkEntries compares the two.

// syncParallel bounds the fsyncs of one group running at once.
const syncParallel = 16

// item is one object of a commit: its closed-or-open temporary file and
// the file it is renamed to.
type item struct {
	f       *file
	tmp     string // temporary file name
	name    string // final file name
	key     string
	seq     uint64 // order of f's open among the store's files
	size    int64  // bytes written to f
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
		dirs, err := s.renameStage(stage)
		if err != nil {
			r.fail(err)
			return r.err
		}
		// The renamed objects are visible now; make the renames durable
		// before a later stage's (mkdirs synced any new directory's
		// parent already). A failure here
		// is reported, but the objects stay: a retry writes the same bytes.
		for _, d := range dirs {
			if err := syncDir(d); err != nil {
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
// before the next (shared with the Commits running at the same time,
// batch.go).
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
			// An item refused (invalid key, earlier write failed) is
			// kept too, so that r.fail below closes and removes it.
			it, ierr := o.Pending.(*pending).take(o.Key)
			err = errors.Join(err, ierr)
			if it != nil {
				items = append(items, it)
			}
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

// writebackMax is the largest file whose write-back a commit starts
// itself (startWriteback). What it buys is for the many small files of
// a round (narinfos, sidecars, most NARs), whose data would otherwise
// still be dirty when the round's flush begins. A large NAR's pages are
// mostly on their way already (the kernel writes back while it is
// written), and starting the rest at once can block the caller for as
// long as writing them takes.
const writebackMax = 16 << 20

// commitRequest commits r by the store's batcher, or on its own. Every
// item of r is valid by now: the write-back of the small ones starts
// here (startWriteback), not before, so that no file about to be
// removed is written.
func (s *Store) commitRequest(r *request) error {
	if !s.lateWriteback {
		for _, stage := range r.stages {
			for _, it := range stage {
				if it.size <= writebackMax {
					it.f.startWriteback()
				}
			}
		}
	}
	if s.batch != nil && len(r.stages) > 0 {
		return s.batch.commit(s, r)
	}
	return s.commit(r)
}
