package cachepush

import (
	"context"
	"slices"
	"time"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/queue"
)

// Paths being written right now: a dependent arriving while its reference
// is being written by another handler of this pusher (the usual case when
// builders publish a closure dependencies first) waits for that handler
// in memory instead of in JetStream.

// flying marks storePath as being written by this pusher until the
// returned function is called (or landed is).
func (p *Pusher) flying(storePath string) func() {
	p.flightMu.Lock()
	defer p.flightMu.Unlock()
	if p.inFlight == nil {
		p.inFlight = map[string]chan struct{}{}
	}
	if _, ok := p.inFlight[storePath]; ok {
		return func() {} // another handler has it; it will close
	}
	ch := make(chan struct{})
	p.inFlight[storePath] = ch
	return func() { p.land(storePath, ch) }
}

// landed wakes whoever waits for storePath, which has just become
// visible, without waiting for its handler to finish.
func (p *Pusher) landed(storePath string) {
	p.flightMu.Lock()
	ch := p.inFlight[storePath]
	p.flightMu.Unlock()
	if ch != nil {
		p.land(storePath, ch)
	}
}

func (p *Pusher) land(storePath string, ch chan struct{}) {
	p.flightMu.Lock()
	defer p.flightMu.Unlock()
	if p.inFlight[storePath] == ch {
		delete(p.inFlight, storePath)
		close(ch)
	}
}

// maxInFlightWait bounds awaitInFlight.
const maxInFlightWait = 5 * time.Second

// awaitInFlight waits (a little) for those of missing that another of
// this pusher's handlers is writing right now, and reports whether it
// waited for any. Builders publish a closure dependencies first, so with
// several handlers at once a path often arrives while its reference is
// being written: waiting for that handler in memory spares the durable
// wait and release. The result is not acknowledged meanwhile, so a crash
// loses nothing; references form no cycle (but self), so no two handlers
// wait for each other, and the wait is bounded anyway.
func (p *Pusher) awaitInFlight(ctx context.Context, missing []string) bool {
	p.flightMu.Lock()
	var chs []chan struct{}
	for _, m := range missing {
		if ch, ok := p.inFlight[m]; ok {
			chs = append(chs, ch)
		}
	}
	p.flightMu.Unlock()
	if len(chs) == 0 {
		return false
	}
	t := time.NewTimer(maxInFlightWait)
	defer t.Stop()
	for _, ch := range chs {
		select {
		case <-ch:
		case <-ctx.Done():
			return true
		case <-t.C:
			return true
		}
	}
	return true
}

// outputOrder puts an output after the outputs of the same derivation it
// refers to (a "dev" output referring to "out"), so it finds them
// visible. Nix refuses cycles between outputs; should one come, the
// remaining outputs keep their order.
func outputOrder(outs []queue.Output, verified map[string]attest.Output) []queue.Output {
	ordered := make([]queue.Output, 0, len(outs))
	done := map[string]bool{}
	for len(ordered) < len(outs) {
		progress := false
		for _, o := range outs {
			if done[o.Path] {
				continue
			}
			ready := true
			for _, ref := range verified[o.Path].References {
				if ref != o.Path && !done[ref] && slices.ContainsFunc(outs, func(x queue.Output) bool { return x.Path == ref }) {
					ready = false
				}
			}
			if ready {
				ordered, done[o.Path], progress = append(ordered, o), true, true
			}
		}
		if !progress {
			for _, o := range outs {
				if !done[o.Path] {
					ordered, done[o.Path] = append(ordered, o), true
				}
			}
		}
	}
	return ordered
}
