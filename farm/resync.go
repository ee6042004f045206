package farm

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"
)

// Resync recomputes set id's state from the bucket and, with checkCache,
// the cache: outputs visible without an event are counted, derivations
// whose inputs are all visible are dispatched (again: a request
// published before a crash is the same message), derivations below a
// failure are blocked. A set whose derivations are all final is marked
// finished and forgotten (its records stay).
func (s *Scheduler) Resync(ctx context.Context, id string, checkCache bool) error {
	ls, err := s.ensureLoaded(ctx, id)
	if err != nil {
		return err
	}
	states, err := s.states(ctx, ls)
	if err != nil {
		return err
	}
	var errs []error
	if checkCache {
		unblocked, err := s.lookOutputsUp(ctx, ls, states)
		if err != nil {
			return fmt.Errorf("farm: resync %s: %w", id, err)
		}
		if unblocked {
			// Derivations were unblocked: start again from the bucket.
			if states, err = s.states(ctx, ls); err != nil {
				return err
			}
		}
	}
	visible := map[string]bool{}
	for drv, st := range states {
		for _, name := range st.Visible {
			visible[ls.g.Node(drv).Outputs[name]] = true
		}
	}
	final := 0
	var dispatched []string
	for _, drv := range ls.g.Order() {
		st := states[drv]
		if st.Status.Final() {
			final++
			continue
		}
		if st.Status == Dispatched {
			dispatched = append(dispatched, drv)
			continue
		}
		if st.Status != Waiting {
			continue
		}
		if by := blockedBy(ls.g, states, drv); by != "" {
			nst, err := update(ctx, s.kv, stateKey(id, drv), func(st *State, found bool) (bool, func(context.Context) error, error) {
				if !found || st.Status != Waiting {
					return false, nil, nil
				}
				st.Status, st.BlockedBy, st.Updated = Blocked, by, time.Now().UTC()
				return true, nil, nil
			})
			if err != nil {
				errs = append(errs, err)
				continue
			}
			states[drv] = nst
			if nst.Status.Final() {
				final++
			}
			continue
		}
		var have []string
		for _, p := range ls.g.Needs(drv) {
			if visible[p] {
				have = append(have, p)
			}
		}
		if len(have) == len(ls.g.Needs(drv)) || len(have) > len(st.Have) {
			nst, err := s.addHave(ctx, ls, drv, have)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			states[drv] = nst
		}
	}
	// One message get per replica, at most: in parallel, and one
	// derivation's error does not stop the others'.
	var mu sync.Mutex
	if err := parallel(ctx, dispatched, func(ctx context.Context, drv string) error {
		if err := s.requeue(ctx, ls, drv, states[drv]); err != nil {
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		}
		return nil
	}); err != nil {
		errs = append(errs, err) // stopped: ctx's
	}
	if final == len(states) && len(errs) == 0 {
		if err := s.finish(ctx, id); err != nil {
			return err
		}
		s.unload(id)
	}
	return errors.Join(errs...)
}

// finish marks set id finished, so schedulers starting later skip it.
func (s *Scheduler) finish(ctx context.Context, id string) error {
	_, err := update(ctx, s.kv, setKey(id), func(set *Set, found bool) (bool, func(context.Context) error, error) {
		if !found || set.Finished != nil {
			return false, nil, nil
		}
		now := time.Now().UTC()
		set.Finished = &now
		return true, nil, nil
	})
	return err
}

// blockedBy is the failed derivation an input of drv failed or is
// blocked by, or "".
func blockedBy(g *Graph, states map[string]*State, drv string) string {
	for in := range g.Node(drv).Inputs {
		switch st := states[in]; st.Status {
		case Failed:
			return in
		case Blocked:
			return st.BlockedBy
		}
	}
	return ""
}

// states reads every state record of a set, by .drv path.
func (s *Scheduler) states(ctx context.Context, ls *loadedSet) (map[string]*State, error) {
	m, err := list[State](ctx, s.cfg.Conn, statePrefix(ls.set.ID))
	if err != nil {
		return nil, err
	}
	out := make(map[string]*State, len(m))
	for k, st := range m {
		if ls.g.Node(st.DrvPath) == nil || !strings.HasSuffix(k, "."+hashOf(st.DrvPath)) {
			return nil, fmt.Errorf("farm: %w: state %s names %s", ErrInvalid, k, st.DrvPath)
		}
		out[st.DrvPath] = st
	}
	if len(out) != ls.g.Len() {
		return nil, fmt.Errorf("farm: %w: set %s has %d states for %d derivations", ErrInvalid, ls.set.ID, len(out), ls.g.Len())
	}
	return out, nil
}

// lookOutputsUp asks the cache about the outputs of the derivations not
// final yet that are not known visible, and records those it has. It
// reports whether that unblocked derivations (see markVisible).
func (s *Scheduler) lookOutputsUp(ctx context.Context, ls *loadedSet, states map[string]*State) (bool, error) {
	type output struct{ drv, name string }
	owner := map[string]output{}
	var paths []string
	for drv, st := range states {
		if st.Status == Done {
			continue
		}
		for name, p := range ls.g.Node(drv).Outputs {
			if !slices.Contains(st.Visible, name) {
				owner[p] = output{drv, name}
				paths = append(paths, p)
			}
		}
	}
	visible, err := lookup(ctx, s.cfg.Cache, paths)
	if err != nil {
		return false, err
	}
	found := map[string][]string{}
	for p, ok := range visible {
		if ok {
			found[owner[p].drv] = append(found[owner[p].drv], owner[p].name)
		}
	}
	var (
		mu        sync.Mutex
		unblocked bool
	)
	err = parallel(ctx, slices.Collect(maps.Keys(found)), func(ctx context.Context, drv string) error {
		nst, u, err := s.markVisible(ctx, ls, drv, found[drv])
		if err != nil {
			return err
		}
		mu.Lock()
		states[drv], unblocked = nst, unblocked || u
		mu.Unlock()
		return nil
	})
	return unblocked, err
}
