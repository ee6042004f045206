package farm

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"codeberg.org/provenix/provenix/queue"
)

// Summary counts a build set's derivations by status.
type Summary struct {
	Set *Set `json:"set"`
	// Counts are the derivations per status, every status present.
	Counts map[Status]int `json:"counts"`
	// Skipped counts derivations done at submission.
	Skipped int `json:"skipped"`
	// Disputed counts derivations not final whose results the cache
	// rejected at least once (a NAR that disagrees with others', say)
	// or whose builders disagreed.
	Disputed int `json:"disputed"`
}

func summarize(set *Set, states func(yield func(*State) bool)) Summary {
	sum := Summary{Set: set, Counts: map[Status]int{Waiting: 0, Dispatched: 0, Done: 0, Failed: 0, Blocked: 0}}
	for st := range states {
		sum.Counts[st.Status]++
		if st.Skipped {
			sum.Skipped++
		}
		if !st.Status.Final() && st.disputed() {
			sum.Disputed++
		}
	}
	return sum
}

// Finished reports whether every derivation is final.
func (s Summary) Finished() bool {
	return s.Counts[Done]+s.Counts[Failed]+s.Counts[Blocked] == s.Set.Size
}

// String is a one-line summary.
func (s Summary) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d derivations: %d done (%d skipped), %d building, %d waiting, %d failed, %d blocked",
		s.Set.ID, s.Set.Size, s.Counts[Done], s.Skipped, s.Counts[Dispatched], s.Counts[Waiting], s.Counts[Failed], s.Counts[Blocked])
	if s.Disputed > 0 {
		fmt.Fprintf(&b, ", %d disputed", s.Disputed)
	}
	if s.Set.Canceled != nil {
		b.WriteString(", cancelled")
	}
	return b.String()
}

// SetStatus is a build set's progress and every derivation's state, read
// from the bucket.
type SetStatus struct {
	Summary
	// Derivations are every derivation's state, by .drv path.
	Derivations []*State `json:"derivations"`
}

// GetStatus reads set id's progress.
func GetStatus(ctx context.Context, conn *queue.Conn, id string) (*SetStatus, error) {
	if err := validID(id); err != nil {
		return nil, err
	}
	kv, err := bucket(ctx, conn)
	if err != nil {
		return nil, err
	}
	var set Set
	if _, found, err := getJSON(ctx, kv, setKey(id), &set); err != nil {
		return nil, err
	} else if !found {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	states, err := list[State](ctx, conn, statePrefix(id))
	if err != nil {
		return nil, err
	}
	st := &SetStatus{Summary: summarize(&set, maps.Values(states))}
	st.Derivations = slices.Collect(maps.Values(states))
	slices.SortFunc(st.Derivations, func(a, b *State) int { return strings.Compare(a.DrvPath, b.DrvPath) })
	return st, nil
}

// Cancel marks set id cancelled: nothing more of it is dispatched, and
// workers drop its requests still queued. Builds under way finish. It
// is idempotent.
func Cancel(ctx context.Context, conn *queue.Conn, id string) (*Set, error) {
	if err := validID(id); err != nil {
		return nil, err
	}
	kv, err := bucket(ctx, conn)
	if err != nil {
		return nil, err
	}
	var set *Set
	// A user that may not cancel (a runner) gets
	// queue.ErrPermissionDenied at once, not a timeout.
	err = conn.KVDenyAware(ctx, queue.BucketFarm, func(ctx context.Context) (err error) {
		set, err = update(ctx, kv, setKey(id), func(s *Set, found bool) (bool, func(context.Context) error, error) {
			if !found {
				return false, nil, fmt.Errorf("%w: %s", ErrNotFound, id)
			}
			if s.Canceled != nil {
				return false, nil, nil
			}
			now := time.Now().UTC()
			s.Canceled = &now
			return true, nil, nil
		})
		return err
	})
	return set, err
}

// Summaries returns the summary of tenant's build sets created since
// since, newest first: their progress for a dashboard. Each costs a read
// of the set's states.
func Summaries(ctx context.Context, conn *queue.Conn, tenant string, since time.Time) ([]Summary, error) {
	// The bucket's absence is ErrNotFound with a hint.
	if _, err := bucket(ctx, conn); err != nil {
		return nil, err
	}
	sets, err := list[Set](ctx, conn, setPrefix)
	if err != nil {
		return nil, err
	}
	var out []Summary
	for _, set := range sets {
		if set.Tenant != tenant || set.Created.Before(since) {
			continue
		}
		states, err := list[State](ctx, conn, statePrefix(set.ID))
		if err != nil {
			return nil, err
		}
		out = append(out, summarize(set, maps.Values(states)))
	}
	slices.SortFunc(out, func(a, b Summary) int { return b.Set.Created.Compare(a.Set.Created) })
	return out, nil
}
