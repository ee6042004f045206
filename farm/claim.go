package farm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"codeberg.org/provenix/provenix/queue"
)

// Claims. Each builder writes its claim on a derivation under a key of
// its own, claim.<set>.<drv hash>.<scope of its builder id>, and a
// runner user may write under its own builder's scope only
// (queue.RunnerPermissions). So a claim is its builder's word: no
// builder can write, move or drop another's, and what a claim says
// about a replica is what the scheduler and `farm stats` take a
// builder's report against. A builder claims one replica of a
// derivation at most, since it has one key. Its claim moves to another
// replica only when it is a leftover: no handler of the worker builds
// under it, it was not built (Built), and another claim outranks it.
//
// Who holds a replica is decided from all the claims on it, the same
// way by every reader (holdersAt): among the claims on its current
// attempt (and apart from them, those on the next, which the scheduler
// publishes before its state says so), by builders that have not failed
// the derivation: per request message, the latest delivery (its
// claimant lost the earlier ones); of those, the one made first (order:
// the lowest revision, or First once marked built).
// A worker writes its claim, then reads the claims again, and withdraws
// (deletes its key) when another holds the replica or an earlier write
// of its owner holds another, so two workers racing for one replica, or
// two builders of one owner for two replicas, settle as compare-and-set
// on one record would. Claims are read from the stream's leader
// (queue.Conn.KVGetLatest), which has every write acknowledged: a
// follower answering a direct get may miss the other's write.
//
// What a claim says besides its builder is that builder's word only,
// its owner included: a claim on a delivery no worker reaches, or in
// another owner's name, can keep the others from a replica. So a worker
// the request comes to takes the replica over, whatever the claims say,
// once it has found the request blocked for Worker.ClaimTimeout (see
// claim).

// ClaimKey is where builder's claim on drv in set id is (in
// queue.BucketFarm).
func ClaimKey(id, drv, builder string) string {
	return claimPrefix(id, drv) + "." + queue.StagingScope(builder)
}

func claimPrefix(id, drv string) string { return queue.FarmClaimPrefix + "." + id + "." + hashOf(drv) }

// Claim is one replica held by a worker.
type Claim struct {
	Version int    `json:"version"`
	Replica int    `json:"replica"`
	Attempt int    `json:"attempt"`
	Builder string `json:"builder"`
	Owner   string `json:"owner"`
	// Msg is the request message's stream sequence: the scheduler may
	// publish one request twice (past the stream's duplicate window).
	Msg uint64 `json:"msg,omitempty"`
	// Delivered is the delivery count of the request message when it
	// was claimed: a later delivery of the same message means the
	// claimant lost it (killed, or past its AckWait) and may take over.
	Delivered uint64 `json:"delivered"`
	// At is when it was claimed, by the claimant's clock: for people
	// reading the bucket, never decided on.
	At time.Time `json:"at"`
	// Built: the claimant built the replica (markBuilt). Its claim then
	// stays on that replica while it is in play, whoever outranks it:
	// a claim nobody builds under any more may move to another replica
	// of the derivation, a built one must not (its builder's vote is
	// cast; a second would not count).
	Built bool `json:"built,omitempty"`
	// First is the revision the claim was first written at, kept when
	// markBuilt writes it again: claims are ordered by when they were
	// made (order).
	First uint64 `json:"first,omitempty"`

	rev uint64 // the key's revision, which orders claims written at once
}

// ReadClaims returns every builder's claim on drv in set id, ordered by
// key.
func ReadClaims(ctx context.Context, conn *queue.Conn, id, drv string) ([]Claim, error) {
	claims, _, err := readClaims(ctx, conn, id, drv, "")
	return claims, err
}

// readClaims reads the claims on drv: the keys as the stream's leader
// lists them, then each key from the leader. A key whose claim names
// another builder than its scope's was not written by that builder (a
// runner user may write its own scope only) and is skipped, as are
// malformed ones. self is the revision of builder's key, whatever it
// holds (0: none).
func readClaims(ctx context.Context, conn *queue.Conn, id, drv, builder string) (claims []Claim, self uint64, err error) {
	keys, err := conn.KVKeys(ctx, queue.BucketFarm, claimPrefix(id, drv)+".*")
	if err != nil {
		return nil, 0, fmt.Errorf("farm: claims on %s: %w", drv, err)
	}
	own := ""
	if builder != "" {
		own = ClaimKey(id, drv, builder)
	}
	for _, key := range keys {
		b, rev, err := conn.KVGetLatest(ctx, queue.BucketFarm, key)
		if errors.Is(err, queue.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, 0, fmt.Errorf("farm: %w", err)
		}
		if key == own {
			self = rev
		}
		if c := claimOf(key, b, rev); c != nil {
			claims = append(claims, *c)
		}
	}
	return claims, self, nil
}

// claimOf is the claim stored under key at revision rev: nil unless its
// builder wrote it.
func claimOf(key string, b []byte, rev uint64) *Claim {
	var c Claim
	if json.Unmarshal(b, &c) != nil || c.Builder == "" || !strings.HasSuffix(key, "."+queue.StagingScope(c.Builder)) {
		return nil
	}
	c.rev = rev
	return &c
}

// builderClaim is builder's own claim on drv in set id, or nil.
func builderClaim(ctx context.Context, conn *queue.Conn, id, drv, builder string) (*Claim, error) {
	key := ClaimKey(id, drv, builder)
	b, rev, err := conn.KVGetLatest(ctx, queue.BucketFarm, key)
	if errors.Is(err, queue.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("farm: %w", err)
	}
	return claimOf(key, b, rev), nil
}

// order is when c was made, as a revision: its First, or its revision.
// First is its builder's word: a bad builder can put its claim first,
// and so hold a replica, or keep an owner off the others, as with a
// delivery count nobody reaches: until the takeover.
func (c *Claim) order() uint64 {
	if c.First != 0 && c.First < c.rev {
		return c.First
	}
	return c.rev
}

// is reports whether c is o (the same builder's claim, as read).
func (c *Claim) is(o *Claim) bool { return c != nil && c.Builder == o.Builder && c.rev == o.rev }

// holds reports whether c is builder's claim on replica and attempt.
func (c *Claim) holds(builder string, replica, attempt int) bool {
	return c != nil && c.Builder == builder && c.Replica == replica && c.Attempt == attempt
}

// inPlay reports whether c is on the current attempt of its replica in
// st, or on the next (published before the state says so).
func (c *Claim) inPlay(st *State) bool {
	if c.Replica < 0 || c.Replica >= len(st.Attempts) {
		return false
	}
	a := st.Attempts[c.Replica]
	return c.Attempt == a || c.Attempt == a+1
}

// withReplicas is st as the claimants of request r see it: the
// scheduler publishes requests before the state that says so (the first
// ones are attempt 1 of each replica of the quorum, a dispute's are more
// replicas), so replicas the state does not know yet count as on attempt
// 1, up to the most a set has (Quorum+MaxAttempts); and r's replica is
// on r's attempt. The replicas counted depend on the claims, not on the
// reader's request: every claimant must see the same ones, or two of one
// owner could each miss the other's.
func withReplicas(st *State, set *Set, r *Request, claims []Claim) *State {
	n := max(len(st.Attempts), set.Quorum, r.Replica+1)
	for _, c := range claims {
		n = max(n, c.Replica+1)
	}
	n = min(n, max(len(st.Attempts), set.Quorum+set.MaxAttempts, r.Replica+1))
	out := *st
	out.Attempts = slices.Clone(st.Attempts)
	for len(out.Attempts) < n {
		out.Attempts = append(out.Attempts, 1)
	}
	if r.Attempt > out.Attempts[r.Replica] {
		out.Attempts[r.Replica] = r.Attempt
		if r.Replica < len(out.Displaced) {
			// Displaced on the attempt before, which the state still
			// has: not on this one.
			out.Displaced = slices.Clone(out.Displaced)
			out.Displaced[r.Replica] = nil
		}
	}
	return &out
}

// holdersAt are the claims that hold the replicas of a derivation in
// state st, by replica (see the rule above; failed builders hold
// nothing), on their current attempts plus next: the next attempt's
// (next 1) are ranked apart, so that a claim on an attempt not
// dispatched yet, which anyone can write, does not push the current
// holder aside. A claim the scheduler sent its replica's request again
// past (State.Displaced), or that excluded says so of, holds nothing; it
// still supersedes the earlier deliveries of its message.
func holdersAt(claims []Claim, st *State, failed []string, next int, excluded ...func(*Claim) bool) map[int]*Claim {
	type msgOf struct {
		replica int
		msg     uint64
	}
	latest := map[msgOf]*Claim{}
	for i := range claims {
		c := &claims[i]
		if c.Replica < 0 || c.Replica >= len(st.Attempts) || c.Attempt != st.Attempts[c.Replica]+next || slices.Contains(failed, c.Builder) {
			continue
		}
		k := msgOf{c.Replica, c.Msg}
		if l := latest[k]; l == nil || c.Delivered > l.Delivered || c.Delivered == l.Delivered && c.order() < l.order() {
			latest[k] = c
		}
	}
	out := map[int]*Claim{}
	for k, c := range latest {
		if st.displaced(c) || slices.ContainsFunc(excluded, func(f func(*Claim) bool) bool { return f(c) }) {
			continue
		}
		if h := out[k.replica]; h == nil || c.order() < h.order() {
			out[k.replica] = c
		}
	}
	return out
}

// claimArgs are who claims a request, on which delivery, and what the
// worker knows of it.
type claimArgs struct {
	builder, owner string
	// msg is the request message's stream sequence, delivered its
	// delivery count.
	msg, delivered uint64
	// blocked is when this worker first found the request kept from it
	// by others' claims (now, the first time), and takeover how long
	// after that it takes the replica whatever they say.
	blocked  time.Time
	takeover time.Duration
	// building reports whether another handler of this worker process
	// claims or builds a replica of the derivation now (its claim is
	// live, not one a crashed process left); asked at each decision,
	// since another may have come in meanwhile. nil: none.
	building func() bool
}

func (a *claimArgs) live() bool { return a.building != nil && a.building() }

// claim records that a.builder (run by a.owner) takes replica r.Replica
// of r's derivation; it decides that the N replicas of a quorum go to N
// distinct owners and that no replica is built twice:
//   - a builder that failed the derivation does not get it, nor does one
//     that builds another replica of it, nor one whose owner holds
//     another replica (NotForUs);
//   - a request for an attempt the state has moved past, for a
//     derivation no longer needed, a message older than the replica's
//     request the state records (sent again since), or another message
//     of a replica this builder built, is dropped (NotNeeded);
//   - a replica another builder holds (holders), or this builder on a
//     later delivery or another message (another of its handlers), is
//     not taken (Held): either this delivery is stale and the holder has
//     the request, or the claim is a bad builder's, written to keep the
//     replica from everyone while it builds nothing. The request is
//     kept, not dropped, so that in the second case it comes back.
//
// Once the worker has found the request kept from it for a.takeover, it
// takes the replica whatever the other builders' claims say, and their
// owners' too: an honest holder has the request itself and keeps it
// while it builds, so it comes back to nobody then. A claim that says
// nothing true (a delivery nobody reached, another owner's name) delays
// a replica by about a.takeover at most. The time counts from when this
// worker first found the request blocked, not from when the request was
// stored: one that waited long in a backlog is held to the rules on its
// first deliveries like any other.
func claim(ctx context.Context, conn *queue.Conn, kv jetstream.KeyValue, r *Request, a claimArgs) (ClaimResult, error) {
	builder, owner, msg, delivered := a.builder, a.owner, a.msg, a.delivered
	if builder == "" {
		return 0, errors.New("farm: claim: no builder id")
	}
	if owner == "" {
		owner = builder
	}
	if slices.Contains(r.Exclude, builder) {
		return NotForUs, nil
	}
	set, st, err := neededIn(ctx, kv, r)
	if err != nil {
		return 0, err
	} else if st == nil {
		return NotNeeded, nil
	}
	if r.Replica < len(st.Attempts) && r.Attempt < st.Attempts[r.Replica] {
		return NotNeeded, nil // the scheduler retried it since
	}
	if r.Replica < len(st.Attempts) && r.Attempt == st.Attempts[r.Replica] && r.Replica < len(st.Requests) && msg != 0 && msg < st.Requests[r.Replica] {
		// The scheduler sent it again since (requeue), past a builder
		// that kept this message: the later one stands for it, and
		// this one, released, must not make a second build.
		return NotNeeded, nil
	}
	failed := st.failedBuilders()
	if slices.Contains(failed, builder) {
		return NotForUs, nil
	}
	overdue := time.Since(a.blocked) > a.takeover
	mine := Claim{Version: RecordVersion, Replica: r.Replica, Attempt: r.Attempt, Builder: builder, Owner: owner,
		Msg: msg, Delivered: delivered, At: time.Now().UTC()}
	// decide is the outcome against claims: before mine is written
	// (mine.rev 0), as if it were written last; after, as written.
	decide := func(claims []Claim) ClaimResult {
		st := withReplicas(st, set, r, claims)
		if mine.rev == 0 {
			i := slices.IndexFunc(claims, func(c Claim) bool { return c.Builder == builder })
			if i >= 0 {
				own := claims[i]
				switch {
				case own.Replica == r.Replica && own.Attempt == r.Attempt && own.Built && own.Msg != msg:
					return NotNeeded // it built this replica: another message of it
				case own.Replica != r.Replica && own.inPlay(st) && (a.live() || own.Built || holdersAt(claims, st, failed, own.Attempt-st.Attempts[own.Replica])[own.Replica].is(&own)):
					// It builds another replica (another of its
					// handlers), built it, or holds it.
					return NotForUs
				case own.Replica == r.Replica && own.Attempt >= r.Attempt && (own.Msg != msg || own.Delivered > delivered) && a.live():
					return Held // another of its handlers has a later delivery, or the other message
				}
				if own.Replica == r.Replica && own.Attempt == r.Attempt && own.Msg == msg && own.Built {
					// Its own build of this message, redelivered (its
					// report may not have gone out): built, and made
					// when it was.
					mine.Built, mine.First = true, own.order()
				}
				// Otherwise a claim a crashed process left, which the
				// others' claims rank like any other.
				claims = slices.Delete(slices.Clone(claims), i, i+1)
			}
			mine.rev = 1<<64 - 1
			defer func() { mine.rev = 0 }()
			claims = append(claims, mine)
		}
		// The builders r excludes hold nothing on its replica: the
		// scheduler sent r again past their claims (Scheduler.requeue).
		// The state says so too (State.Displaced), for every claimant,
		// once written; until then they still count for the owner rule
		// of the others, as they did before.
		excludedHere := func(c *Claim) bool { return c.Replica == r.Replica && slices.Contains(r.Exclude, c.Builder) }
		// The owner rule before the replica's own: the first reason to
		// leave the request, whichever order the replicas come in.
		var held bool
		for next := range 2 {
			for rep, h := range holdersAt(claims, st, failed, next, excludedHere) {
				switch {
				case h.Builder == builder:
				case rep != r.Replica && h.Owner == owner && h.order() < mine.order() && !overdue:
					return NotForUs
				case rep == r.Replica && !overdue:
					held = true
				}
			}
		}
		if held {
			return Held
		}
		return Claimed
	}
	key := ClaimKey(r.Set, r.DrvPath, builder)
	for range casRetries {
		// The builder's key is written with compare-and-set: its
		// concurrent handlers must not each replace the other's claim.
		mine.rev, mine.Built, mine.First = 0, false, 0
		claims, last, err := readClaims(ctx, conn, r.Set, r.DrvPath, builder)
		if err != nil {
			return 0, err
		}
		res := decide(claims)
		if res != Claimed {
			return res, nil
		}
		b, err := json.Marshal(mine)
		if err != nil {
			return 0, fmt.Errorf("farm: encode %s: %w", key, err)
		}
		if last == 0 {
			mine.rev, err = kv.Create(ctx, key, b)
		} else {
			mine.rev, err = kv.Update(ctx, key, b, last)
		}
		if casConflict(err) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("farm: write %s: %w", key, err)
		}
		// Another worker may have written meanwhile: the earlier write
		// wins.
		if claims, _, err = readClaims(ctx, conn, r.Set, r.DrvPath, ""); err != nil {
			return 0, err
		}
		if res = decide(claims); res == Claimed {
			return Claimed, nil
		}
		if err := kv.Delete(ctx, key, jetstream.LastRevision(mine.rev)); err != nil && !casConflict(err) {
			return 0, fmt.Errorf("farm: withdraw %s: %w", key, err)
		}
		return res, nil
	}
	return 0, fmt.Errorf("farm: claim %s: %w", key, queue.ErrCASConflict)
}

// localClaims is what a worker process knows of its own claims: which
// derivations its handlers claim or build now, and since when requests
// were kept from it by others' claims.
type localClaims struct {
	mu       sync.Mutex
	building map[[2]string]int // (set, drv): handlers claiming or building it
	blocked  firstSeen
}

// enter counts a handler in for set's drv.
func (l *localClaims) enter(set, drv string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.building == nil {
		l.building = map[[2]string]int{}
	}
	l.building[[2]string{set, drv}]++
}

// others reports whether handlers besides the caller are in for set's
// drv.
func (l *localClaims) others(set, drv string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.building[[2]string{set, drv}] > 1
}

func (l *localClaims) leave(set, drv string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	k := [2]string{set, drv}
	if l.building[k]--; l.building[k] <= 0 {
		delete(l.building, k)
	}
}

// markBuilt records in builder's claim on r, made on delivery delivered
// of message msg, that it built the replica; a claim that moved on since
// is left alone.
func markBuilt(ctx context.Context, conn *queue.Conn, kv jetstream.KeyValue, r *Request, builder string, msg, delivered uint64) error {
	key := ClaimKey(r.Set, r.DrvPath, builder)
	for range casRetries {
		b, rev, err := conn.KVGetLatest(ctx, queue.BucketFarm, key)
		if errors.Is(err, queue.ErrNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("farm: %w", err)
		}
		c := claimOf(key, b, rev)
		if !c.holds(builder, r.Replica, r.Attempt) || c.Msg != msg || c.Delivered != delivered || c.Built {
			return nil
		}
		c.Built = true
		c.First = c.order()
		if b, err = json.Marshal(c); err != nil {
			return fmt.Errorf("farm: encode %s: %w", key, err)
		}
		if _, err = kv.Update(ctx, key, b, rev); err == nil || !casConflict(err) {
			return err
		}
	}
	return fmt.Errorf("farm: mark %s built: %w", key, queue.ErrCASConflict)
}
