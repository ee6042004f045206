package local

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sync"

	"codeberg.org/provenix/provenix/cache-push/store"
)

// Group commit. Every Commit must be durable before it returns, which on a
// disk means an fsync of the file, a rename, and an fsync of the directory
// the rename changed. Done one Commit at a time that is two flushes per
// object; a pusher writes three or four objects per result, so flushes
// were most of a result's cost. Instead, Commits that arrive while a batch
// is being flushed queue up and become the next batch, which is made
// durable in one round: the files of all its objects are fsynced (in
// parallel, so the filesystem merges them into few journal commits), then
// renamed, then each directory the renames touched is fsynced once. The
// Commits in the batch return after that round, so each still returns
// only once its object is durable: the contract does not change, only who
// pays for the flush. No timer waits for a batch to fill: the batch is
// whatever queued during the previous round, so a lone Commit costs what
// it did before.
//
// A batch runs on the goroutine of one of its Commits (the leader), not on
// a goroutine of its own: the store has no Close, and a writer that wants
// durability waits anyway.

// syncParallel bounds the fsyncs of one batch running at once.
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
	wake   chan struct{} // done, or made leader
	leader bool
}

// committer queues requests and runs them in batches.
type committer struct {
	s     *Store
	mu    sync.Mutex
	queue []*request
	busy  bool // a leader is running a batch
	// batches counts the batches run, for tests that check Commits share
	// them.
	batches int
}

// commit makes r durable, in a batch with whatever else is waiting.
func (c *committer) commit(r *request) error {
	r.wake = make(chan struct{}, 1)
	c.mu.Lock()
	c.queue = append(c.queue, r)
	if c.busy {
		c.mu.Unlock()
		<-r.wake
		if !r.leader {
			return r.err
		}
		c.mu.Lock()
	}
	c.busy = true
	c.batches++
	batch := c.queue
	c.queue = nil
	c.mu.Unlock()

	c.s.run(batch)
	for _, o := range batch {
		if o != r {
			o.wake <- struct{}{}
		}
	}

	// Hand over to the first request that queued meanwhile: this one's
	// caller goes on with its own work instead of flushing for others.
	c.mu.Lock()
	if len(c.queue) > 0 {
		next := c.queue[0]
		next.leader = true
		next.wake <- struct{}{}
	} else {
		c.busy = false
	}
	c.mu.Unlock()
	return r.err
}

// run makes a batch of requests durable: fsync of every file, then for
// each stage the renames and one fsync per directory they touched. A
// request that fails stops there; its unrenamed files are removed.
func (s *Store) run(batch []*request) {
	s.syncFiles(batch)
	for k := 0; ; k++ {
		dirs := map[string][]*request{}
		more := false
		for _, r := range batch {
			if r.err != nil || k >= len(r.stages) {
				continue
			}
			more = true
			if err := r.ctx.Err(); err != nil {
				r.fail(fmt.Errorf("local store: commit %s: %w", r.stages[k][0].key, err))
				continue
			}
			for _, it := range r.stages[k] {
				dirty, err := s.mkdirs(path.Dir(it.key))
				if err != nil {
					r.fail(fmt.Errorf("local store: commit %s: %w", it.key, s.noSpace(err)))
					break
				}
				if err := os.Rename(it.tmp, it.name); err != nil {
					r.fail(fmt.Errorf("local store: commit %s: %w", it.key, s.noSpace(err)))
					break
				}
				it.renamed = true
				for _, d := range append(dirty, filepath.Dir(it.name)) {
					dirs[d] = append(dirs[d], r)
				}
			}
		}
		if !more {
			return
		}
		// The renamed objects are visible now; make the renames (and any
		// new directories) durable before a later stage's. A failure here
		// is reported, but the objects stay: a retry writes the same bytes.
		for d, rs := range dirs {
			if err := syncDir(d); err != nil {
				for _, r := range rs {
					if r.err == nil {
						r.fail(fmt.Errorf("local store: commit: %w", err))
					}
				}
			}
		}
	}
}

// syncFiles fsyncs and closes every file of the batch: the data must be on
// disk before a rename makes it reachable, or a crash could leave a
// complete-looking name with missing content.
func (s *Store) syncFiles(batch []*request) {
	type job struct {
		r  *request
		it *item
	}
	var jobs []job
	for _, r := range batch {
		for _, stage := range r.stages {
			for _, it := range stage {
				jobs = append(jobs, job{r, it})
			}
		}
	}
	errs := make([]error, len(jobs))
	syncOne := func(i int) {
		it := jobs[i].it
		if err := it.f.Sync(); err != nil {
			it.f.Close()
			errs[i] = fmt.Errorf("local store: commit %s: sync: %w", it.key, s.noSpace(err))
			return
		}
		if err := it.f.Close(); err != nil {
			errs[i] = fmt.Errorf("local store: commit %s: close: %w", it.key, s.noSpace(err))
		}
	}
	if len(jobs) == 1 {
		syncOne(0)
	} else {
		var wg sync.WaitGroup
		next := make(chan int)
		for range min(len(jobs), syncParallel) {
			wg.Go(func() {
				for i := range next {
					syncOne(i)
				}
			})
		}
		for i := range jobs {
			next <- i
		}
		close(next)
		wg.Wait()
	}
	for i, err := range errs {
		if err != nil && jobs[i].r.err == nil {
			jobs[i].r.fail(err)
		}
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

// CommitGroup implements store.GroupCommitter: the objects of all stages
// are fsynced in one round with whatever else commits at the time, each
// stage renamed and its directories fsynced before the next. Objects not
// created by s are committed one by one (store.CommitEach).
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
	return s.commit(r)
}

// commit makes r durable: in a batch when group commit is on, alone
// otherwise.
func (s *Store) commit(r *request) error {
	if s.group == nil {
		s.run([]*request{r})
		return r.err
	}
	return s.group.commit(r)
}
