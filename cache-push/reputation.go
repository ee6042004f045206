package cachepush

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"sync"
	"time"

	"codeberg.org/provenix/provenix/cache-push/policy"
	"codeberg.org/provenix/provenix/internal/ticker"
	"codeberg.org/provenix/provenix/queue"
)

// ErrNoReputation: the builder has no reputation record (it never had a
// vote counted). GetReputation and ClearQuarantine return it.
var ErrNoReputation = errors.New("no reputation record")

// Reputation is a builder's record.
type Reputation struct {
	Builder       string      `json:"builder"`
	Owner         string      `json:"owner,omitempty"`
	Agreements    int         `json:"agreements"`
	Disagreements int         `json:"disagreements"`
	Minority      []time.Time `json:"minority,omitempty"` // recent minority disagreements
	LastSeen      time.Time   `json:"lastSeen"`
	Quarantined   bool        `json:"quarantined"`
	QuarantinedAt *time.Time  `json:"quarantinedAt,omitempty"`

	// Malformed counts malformed statements the builder signed (bundles
	// that verify for it over content no result may carry);
	// MalformedRecent are the latest, which quarantine it like minority
	// votes do.
	Malformed       int             `json:"malformed,omitempty"`
	MalformedRecent []MalformedMark `json:"malformedRecent,omitempty"`
}

// MalformedMark is one malformed statement a builder signed: when, and a
// digest of its bundle (so a relayed copy is not counted again).
type MalformedMark struct {
	Time   time.Time `json:"time"`
	Digest string    `json:"digest"`
}

// GetReputation reads a builder's record; ErrNoReputation when it has none.
func GetReputation(ctx context.Context, kv KV, builder string) (*Reputation, error) {
	b, err := kv.KVGet(ctx, queue.BucketBuilders, queue.BuilderKey(builder))
	if errors.Is(err, queue.ErrNotFound) {
		return nil, ErrNoReputation
	}
	if err != nil {
		return nil, err
	}
	var r Reputation
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("reputation of %s: %w", builder, err)
	}
	return &r, nil
}

// Reputations lists every builder's record.
func Reputations(ctx context.Context, kv KV) ([]Reputation, error) {
	m, err := kv.KVList(ctx, queue.BucketBuilders, "")
	if err != nil {
		return nil, err
	}
	out := make([]Reputation, 0, len(m))
	for k, b := range m {
		var r Reputation
		if err := json.Unmarshal(b, &r); err != nil {
			return nil, fmt.Errorf("reputation %s: %w", k, err)
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Builder < out[j].Builder })
	return out, nil
}

// ClearQuarantine lifts a builder's quarantine and forgets its recent
// minority votes and malformed statements (the totals stay).
func ClearQuarantine(ctx context.Context, kv KV, builder string) error {
	found := false
	err := kv.KVUpdate(ctx, queue.BucketBuilders, queue.BuilderKey(builder), func(old []byte) ([]byte, error) {
		if old == nil {
			return nil, nil
		}
		found = true
		var r Reputation
		if err := json.Unmarshal(old, &r); err != nil {
			return nil, err
		}
		r.Quarantined, r.QuarantinedAt, r.Minority, r.MalformedRecent = false, nil, nil, nil
		return json.Marshal(r)
	})
	if err == nil && !found {
		return fmt.Errorf("builder %q: %w", builder, ErrNoReputation)
	}
	return err
}

// storedVote is the vote a handler stored, at the revision it stored it
// (0 when unknown), and the JSON it stored.
type storedVote struct {
	vote Vote
	rev  uint64
	json []byte
}

// countReputation adds each decided, not yet counted vote to its
// builder's record, and quarantines builders too often in the minority.
// own is the vote this handler stored. An agreeing vote recorded after
// the path was decided (decisive) is marked counted and earns nothing.
func (p *Pusher) countReputation(ctx context.Context, tenant, storePath string, t Tally, own storedVote) {
	rule := p.cfg.Policy.Reputation
	earns := decisive(p.cfg.Policy, t)
	mark := func(v Vote, agreed bool) {
		key := queue.VoteKey(tenant, storePath, v.Builder)
		counted, err := p.markOwn(ctx, key, v, own, t.Winner)
		if !counted && (err == nil || errors.Is(err, queue.ErrRevisionChanged)) {
			err = p.cfg.KV.KVUpdate(ctx, queue.BucketVotes, key, func(old []byte) ([]byte, error) {
				var cur Vote
				if old == nil || json.Unmarshal(old, &cur) != nil || cur.Counted != "" || cur.Answer() != v.Answer() {
					return nil, nil // gone, replaced or counted already
				}
				cur.Counted = t.Winner
				counted = true
				return json.Marshal(cur)
			})
		}
		if err != nil || !counted {
			return
		}
		if agreed {
			if earns[v.Builder] {
				p.addAgreement(ctx, v.Builder)
			}
			return
		}
		now := time.Now().UTC()
		err = p.updateReputation(ctx, v.Builder, func(r *Reputation) {
			r.LastSeen = now
			r.Disagreements++
			var recent []time.Time
			for _, m := range r.Minority {
				if now.Sub(m) < rule.Window {
					recent = append(recent, m)
				}
			}
			r.Minority = append(recent, now)
			if len(r.Minority) >= rule.QuarantineAfter && !r.Quarantined {
				r.Quarantined, r.QuarantinedAt = true, &now
			}
		})
		if err != nil {
			p.log.Warn("reputation not updated", "builder", v.Builder, "err", err)
		}
	}
	for _, v := range t.Agreeing {
		mark(v, true)
	}
	for _, v := range t.Minority {
		mark(v, false)
	}
}

// markOwn marks v counted (for winner) when it is the vote this handler
// stored, as KVUpdate in countReputation would, without reading it back:
// the store takes it only if the key is still at the revision stored, so
// still holds exactly own.vote (not counted, the same answer). It reports
// false with a nil error when v is not that vote, and
// queue.ErrRevisionChanged when the key changed since: the caller then
// reads the key.
func (p *Pusher) markOwn(ctx context.Context, key string, v Vote, own storedVote, winner string) (bool, error) {
	if own.rev == 0 || own.json == nil || v.Builder != own.vote.Builder || own.vote.Counted != "" || v.Answer() != own.vote.Answer() {
		return false, nil
	}
	b, err := countedJSON(own.json, winner)
	if err != nil {
		return false, err
	}
	if err := p.cfg.KV.KVUpdateAt(ctx, queue.BucketVotes, key, b, own.rev); err != nil {
		return false, err
	}
	return true, nil
}

// countedJSON is the JSON of a vote marked counted for winner, made from
// b, its JSON unmarked: Counted is Vote's last field and omitted when
// empty, so it is b with the field added, and the vote's bundle (most
// of its bytes) is not encoded again. TestCountedJSON holds it to
// json.Marshal.
func countedJSON(b []byte, winner string) ([]byte, error) {
	if winner == "" || len(b) < 2 || b[len(b)-1] != '}' {
		return nil, fmt.Errorf("mark vote counted: not a vote's JSON, or no winner")
	}
	w, err := json.Marshal(winner)
	if err != nil {
		return nil, err
	}
	sep := ","
	if len(b) == 2 {
		sep = ""
	}
	out := make([]byte, 0, len(b)+len(w)+16)
	out = append(out, b[:len(b)-1]...)
	out = append(out, sep+`"counted":`...)
	out = append(out, w...)
	return append(out, '}'), nil
}

// updateReputation applies f to builder's record (a zero one when it has
// none) with compare-and-set. This pusher's cached copy becomes the record
// it stored: dropping it instead made every vote read the record again,
// since under load some handler updates it all the time.
func (p *Pusher) updateReputation(ctx context.Context, builder string, f func(r *Reputation)) error {
	var stored Reputation
	err := p.cfg.KV.KVUpdate(ctx, queue.BucketBuilders, queue.BuilderKey(builder), func(old []byte) ([]byte, error) {
		r := Reputation{Builder: builder}
		if old != nil {
			if err := json.Unmarshal(old, &r); err != nil {
				return nil, err
			}
		}
		if b, ok := p.cfg.Policy.Builder(builder); ok {
			r.Owner = b.Owner
		}
		f(&r)
		stored = r
		return json.Marshal(r)
	})
	p.repMu.Lock()
	defer p.repMu.Unlock()
	if err != nil {
		delete(p.repCache, builder)
		return err
	}
	if p.repCache == nil {
		p.repCache = map[string]repEntry{}
	}
	p.repCache[builder] = repEntry{rep: stored, at: time.Now()}
	return nil
}

// DefaultReputationFlush is Config.ReputationFlush's default.
const DefaultReputationFlush = time.Second

// agreements are the agreements counted and not yet stored, per builder
// (see addAgreement).
type agreements struct {
	mu       sync.Mutex
	pending  map[string]int
	flushing map[string]bool
	// deferred: the pusher is open and its flusher stores them every
	// Config.ReputationFlush; otherwise the handler that counts one does.
	deferred bool
}

// addAgreement counts one agreement for builder. Every published path
// adds one to its builders' records, so storing each at once made two
// requests per result (the record's read and its compare-and-set) and,
// with many handlers at once, a race on the same key that most lost.
// Instead agreements accumulate here, per builder:
//   - while the pusher is open, its flusher stores them every
//     Config.ReputationFlush, one update per builder that has any;
//   - otherwise (Process called without Open) the handler stores them
//     before it returns, one handler per builder at a time storing all
//     that accumulated meanwhile.
//
// What a crash loses: the vote is marked counted before its agreement is
// stored, so a pusher killed in between loses the agreements of its last
// ReputationFlush (a redelivery does not count them again). That is
// acceptable because agreements only ever make a builder more trusted:
// a lost one can only delay its becoming a veteran (quorum.trusted_after,
// which also needs no disagreement), never make any builder trusted
// sooner or spare it a quarantine. What decides against a builder —
// disagreements, malformed statements, quarantine — is stored at once,
// before the result is acked (updateReputation), as before.
func (p *Pusher) addAgreement(ctx context.Context, builder string) {
	a := &p.agree
	a.mu.Lock()
	if a.pending == nil {
		a.pending, a.flushing = map[string]int{}, map[string]bool{}
	}
	a.pending[builder]++
	deferred := a.deferred
	a.mu.Unlock()
	if !deferred {
		p.flushAgreements(ctx, builder)
	}
}

// flushAgreements stores builder's pending agreements in one update,
// looping until none are left, unless another call is storing them (it
// takes the new ones too). A failure keeps them pending for the next
// flush, and is logged.
func (p *Pusher) flushAgreements(ctx context.Context, builder string) {
	a := &p.agree
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.flushing[builder] {
		return
	}
	a.flushing[builder] = true
	defer delete(a.flushing, builder)
	for a.pending[builder] > 0 {
		n := a.pending[builder]
		delete(a.pending, builder)
		now := time.Now().UTC()
		a.mu.Unlock()
		err := p.updateReputation(ctx, builder, func(r *Reputation) {
			r.LastSeen = now
			r.Agreements += n
		})
		a.mu.Lock()
		if err != nil {
			a.pending[builder] += n
			p.log.Warn("reputation not updated", "builder", builder, "agreements", n, "err", err)
			return
		}
	}
}

// flushAllAgreements stores every builder's pending agreements.
func (p *Pusher) flushAllAgreements(ctx context.Context) {
	p.agree.mu.Lock()
	builders := slices.Collect(maps.Keys(p.agree.pending))
	p.agree.mu.Unlock()
	for _, b := range builders {
		p.flushAgreements(ctx, b)
	}
}

// startAgreements defers storing agreements to a flusher that runs every
// interval; the returned stop ends it (a flush under way finishes),
// stores what is left (within queue.DefaultTimeout even when ctx is done)
// and makes later agreements stored at once again.
func (p *Pusher) startAgreements(interval time.Duration) (stop func(ctx context.Context)) {
	p.agree.mu.Lock()
	p.agree.deferred = true
	p.agree.mu.Unlock()
	stopTicker := ticker.Every(context.Background(), interval, func(ctx context.Context) bool {
		// Not cancelled by stop: an update cut off after its write may
		// have been stored, and its agreements, kept pending as failed,
		// would be stored twice by the final flush.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), queue.DefaultTimeout)
		defer cancel()
		p.flushAllAgreements(fctx)
		return true
	})
	return func(ctx context.Context) {
		stopTicker()
		p.agree.mu.Lock()
		p.agree.deferred = false
		p.agree.mu.Unlock()
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), queue.DefaultTimeout)
		defer cancel()
		p.flushAllAgreements(fctx)
	}
}

// repCacheTTL is how long a pusher trusts a builder's record it read.
const repCacheTTL = 2 * time.Second

// reputation returns builder's record, at most repCacheTTL old: it is
// read on every vote and changes rarely. A builder without one has a zero
// record.
func (p *Pusher) reputation(ctx context.Context, builder string) Reputation {
	p.repMu.Lock()
	c, ok := p.repCache[builder]
	p.repMu.Unlock()
	if ok && time.Since(c.at) < repCacheTTL {
		return c.rep
	}
	rep := Reputation{Builder: builder}
	if r, err := GetReputation(ctx, p.cfg.KV, builder); err == nil {
		rep = *r
	}
	p.repMu.Lock()
	if p.repCache == nil {
		p.repCache = map[string]repEntry{}
	}
	p.repCache[builder] = repEntry{rep: rep, at: time.Now()}
	p.repMu.Unlock()
	return rep
}

type repEntry struct {
	rep Reputation
	at  time.Time
}

// decisive returns the builders of t's agreeing votes that decided it:
// in the order the pusher recorded them (Vote.Time, its clock), up to
// the one with which the agreed NAR reached its quorum. A vote recorded
// after that agrees with a NAR already decided and published: anyone
// can copy its hash, size and references from the narinfo without
// building anything, so it earns no agreement, which would make its
// builder a veteran whose vote alone publishes (TrustedAfter).
func decisive(pol *policy.Policy, t Tally) map[string]bool {
	vs := slices.Clone(t.Agreeing)
	slices.SortStableFunc(vs, func(a, b Vote) int { return a.Time.Compare(b.Time) })
	need := t.Quorum.Min
	if t.Adaptive {
		need--
	}
	out := map[string]bool{}
	var builders []string
	for _, v := range vs {
		out[v.Builder] = true
		builders = append(builders, v.Builder)
		if pol.CountDistinct(builders, t.Quorum.Distinct) >= max(need, 1) {
			break
		}
	}
	return out
}
