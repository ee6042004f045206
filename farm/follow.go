package farm

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"codeberg.org/provenix/provenix/queue"
)

// Progress is a build set's progress as Follow sees it change.
type Progress struct {
	Summary
	// Started is when Follow began; DoneSince how many derivations
	// became done since then, which the ETA extrapolates.
	Started   time.Time `json:"started"`
	DoneSince int       `json:"doneSince"`
	// ETA is the estimated time left, 0 when unknown or finished.
	ETA time.Duration `json:"eta"`
}

// Follow calls fn with set id's progress at once and at every change of
// a derivation's state (a watch on the bucket: no polling, however large
// the set), at most every interval, until the set is finished (a last
// call, then nil) or ctx ends (its error).
func Follow(ctx context.Context, conn *queue.Conn, id string, interval time.Duration, fn func(*Progress)) error {
	if err := validID(id); err != nil {
		return err
	}
	kv, err := bucket(ctx, conn)
	if err != nil {
		return err
	}
	var set Set
	if _, found, err := getJSON(ctx, kv, setKey(id), &set); err != nil {
		return err
	} else if !found {
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := kv.Watch(ctx, statePrefix(id)+".>", jetstream.IgnoreDeletes())
	if err != nil {
		return fmt.Errorf("farm: follow %s: %w", id, err)
	}
	defer w.Stop()
	states := map[string]*State{}
	p := &Progress{Summary: Summary{Set: &set}, Started: time.Now()}
	doneAtStart := -1
	var last time.Time
	initial := true
	report := func(force bool) {
		p.Summary = summarize(&set, maps.Values(states))
		if doneAtStart < 0 {
			doneAtStart = p.Counts[Done]
		}
		p.DoneSince = p.Counts[Done] - doneAtStart
		p.ETA = 0
		if left := set.Size - p.Counts[Done] - p.Counts[Failed] - p.Counts[Blocked]; left > 0 && p.DoneSince > 0 {
			p.ETA = time.Duration(float64(time.Since(p.Started)) / float64(p.DoneSince) * float64(left)).Round(time.Second)
		}
		if force || time.Since(last) >= interval {
			last = time.Now()
			fn(p)
		}
	}
	tick := time.NewTicker(max(interval, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
			if !initial {
				report(false)
			}
		case e, ok := <-w.Updates():
			if !ok {
				return fmt.Errorf("farm: follow %s: watch ended", id)
			}
			if e == nil {
				if err := fillStates(ctx, conn, &set, states); err != nil {
					return fmt.Errorf("farm: follow %s: %w", id, err)
				}
				initial = false
				report(true)
			} else {
				var st State
				if json.Unmarshal(e.Value(), &st) == nil {
					states[e.Key()] = &st
				}
				if !initial {
					report(false)
				}
			}
			if !initial && p.Finished() {
				report(true)
				return nil
			}
		}
	}
}

// fillStates adds the states of set missing from states. nats.go's
// watcher marker can come before every state did (one rewritten while
// the watch started: see queue.Conn.KVList); a set has one state per
// derivation, so only a short count costs the list.
func fillStates(ctx context.Context, conn *queue.Conn, set *Set, states map[string]*State) error {
	if len(states) >= set.Size {
		return nil
	}
	all, err := list[State](ctx, conn, statePrefix(set.ID))
	if err != nil {
		return err
	}
	for k, st := range all {
		if _, ok := states[k]; !ok {
			states[k] = st
		}
	}
	return nil
}
