package farm

import (
	"sync"
	"time"
)

// requestKey names one request message (its stream sequence) of one
// replica's attempt.
type requestKey struct {
	set, drv         string
	replica, attempt int
	msg              uint64
}

// firstSeen remembers, in this process's memory, since when each request
// has been found in some condition: kept from a worker by others' claims
// (Worker), gone from the work queue (Scheduler.requeue); and when a
// check of it was last due. A restart starts the counts again. A request not seen for keep (DefaultSeenFor
// when 0) is forgotten.
type firstSeen struct {
	keep   time.Duration
	mu     sync.Mutex
	m      map[requestKey]*seenAt
	pruned time.Time
}

type seenAt struct {
	first, last time.Time
	// checked is when it was last due.
	checked time.Time
}

// DefaultSeenFor is how long firstSeen keeps a request not seen again:
// long enough for a request to come round every worker of a large farm
// (each gets it about every AckWait × workers).
const DefaultSeenFor = 24 * time.Hour

// seenFor is a firstSeen for conditions checked every resync: kept at
// least two resyncs.
func seenFor(resyncEvery time.Duration) firstSeen {
	return firstSeen{keep: max(DefaultSeenFor, 2*resyncEvery)}
}

// see records k seen now and returns when it was first seen.
func (f *firstSeen) see(k requestKey) time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.at(k, time.Now()).first
}

// at is k's record, made now when there is none; f.mu is held.
func (f *firstSeen) at(k requestKey, now time.Time) *seenAt {
	if f.m == nil {
		f.m = map[requestKey]*seenAt{}
	}
	s := f.m[k]
	if s == nil {
		s = &seenAt{first: now}
		f.m[k] = s
	}
	s.last = now
	keep := f.keep
	if keep == 0 {
		keep = DefaultSeenFor
	}
	if now.Sub(f.pruned) > time.Hour {
		f.pruned = now
		for k, s := range f.m {
			if now.Sub(s.last) > keep {
				delete(f.m, k)
			}
		}
	}
	return s
}

// due records k seen now and reports whether it was last due every
// ago or more (or never), and if so counts now as its last: a check
// that need not run at each sighting.
func (f *firstSeen) due(k requestKey, every time.Duration) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	if s := f.at(k, now); s.checked.IsZero() || now.Sub(s.checked) >= every {
		s.checked = now
		return true
	}
	return false
}

// forget drops k: it is no longer in the condition.
func (f *firstSeen) forget(k requestKey) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.m, k)
}
