package store

import (
	"context"
	"errors"
	"fmt"
	"io"
)

// Object is an object written but not yet committed: its Pending and the
// key it is to be committed under.
type Object struct {
	Pending Pending
	Key     string
}

// Write creates a Pending holding r's content, to be committed under key
// with CommitGroup (or Object.Pending.Commit). Nothing is visible yet;
// the caller aborts the Pending if it does not commit it.
func Write(ctx context.Context, s Store, key string, r io.Reader) (Object, error) {
	if err := ValidKey(key); err != nil {
		return Object{}, err
	}
	p, err := s.Create(ctx)
	if err != nil {
		return Object{}, fmt.Errorf("store: write %s: %w", key, err)
	}
	if err := copyTo(ctx, p, r); err != nil {
		p.Abort()
		return Object{}, fmt.Errorf("store: write %s: %w", key, err)
	}
	return Object{Pending: p, Key: key}, nil
}

// GroupCommitter is implemented by stores that commit a group of objects
// for less than one Commit each (store/local: the files fsynced at once,
// the directory fsyncs shared with the writers committing at the same
// time). See CommitGroup for the contract.
type GroupCommitter interface {
	CommitGroup(ctx context.Context, stages ...[]Object) error
}

// CommitGroup commits objects written to s in stages: every object of a
// stage is committed (atomically and durably, as by Commit) before any
// object of the next stage becomes visible, so a reader who sees an
// object of stage i+1 finds those of stages up to i, even after a crash.
// Within a stage there is no order. The cache writes the NAR and the
// sidecars in one stage and the narinfo that names them in the next.
//
// It stops at the first failure: objects of that stage may or may not be
// visible (each atomically), those of later stages are aborted and never
// visible. Every Pending passed is finished when it returns. With a done
// ctx nothing new becomes visible.
//
// Stores implementing GroupCommitter commit the group themselves; the
// others commit one object after the other.
func CommitGroup(ctx context.Context, s Store, stages ...[]Object) error {
	if g, ok := s.(GroupCommitter); ok {
		return g.CommitGroup(ctx, stages...)
	}
	return CommitEach(ctx, stages...)
}

// CommitEach is CommitGroup by one Commit per object, in order: for stores
// without a cheaper way, and for stores that get objects they did not
// create.
func CommitEach(ctx context.Context, stages ...[]Object) error {
	var err error
	for _, stage := range stages {
		for _, o := range stage {
			if err != nil {
				o.Pending.Abort()
				continue
			}
			if cerr := o.Pending.Commit(ctx, o.Key); cerr != nil {
				err = fmt.Errorf("store: commit %s: %w", o.Key, cerr)
			}
		}
	}
	return err
}

// AbortAll aborts every Pending in stages, for a writer that gives up
// before CommitGroup.
func AbortAll(stages ...[]Object) error {
	var errs []error
	for _, stage := range stages {
		for _, o := range stage {
			if o.Pending != nil {
				errs = append(errs, o.Pending.Abort())
			}
		}
	}
	return errors.Join(errs...)
}
