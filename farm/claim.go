package farm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"codeberg.org/provenix/provenix/queue"
)

// Claims. Each builder writes its claims on a derivation under a key of
// its own, claim.<set>.<drv hash>.<scope of its builder id>, and a
// runner user may write under its own builder's scope only
// (queue.RunnerPermissions). So a claim is its builder's word: no
// builder can write, move or drop another's, and what a claim says
// about a replica is what the scheduler and `farm stats` take a
// builder's report against. A builder holds one replica of a derivation
// at most, since it has one key.
//
// Who holds a replica is decided from all the claims on it, the same
// way by every reader: among the claims on its current attempt, by
// builders that have not failed the derivation, the one on the latest
// delivery of the request, and of those the one written first (the
// lowest revision). A worker writes its claim, then reads the claims
// again and withdraws (deletes its key) when an earlier write wins, so
// two workers racing for one replica, or two builders of one owner for
// two replicas, settle as compare-and-set on one record would.

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
	// Delivered is the delivery count of the request message when it
	// was claimed: a later delivery of the same request means the
	// claimant lost it (killed, or past its AckWait) and may take over.
	Delivered uint64    `json:"delivered"`
	At        time.Time `json:"at"`

	rev uint64 // the key's revision, which orders claims written at once
}

// ahead reports whether c holds its replica over o, a claim on the same
// replica and attempt: it is on a later delivery, or on the same one and
// written first.
func (c *Claim) ahead(o *Claim) bool {
	if c.Delivered != o.Delivered {
		return c.Delivered > o.Delivered
	}
	return c.rev < o.rev
}

// ReadClaims returns every builder's claim on drv in set id, ordered by
// key.
func ReadClaims(ctx context.Context, conn *queue.Conn, id, drv string) ([]Claim, error) {
	kv, err := bucket(ctx, conn)
	if err != nil {
		return nil, err
	}
	claims, _, err := readClaims(ctx, conn, kv, id, drv, "")
	return claims, err
}

// readClaims reads the claims on drv: the keys as the stream's leader
// lists them, then each key. A key whose claim names another builder
// than its scope's was not written by that builder (a runner user may
// write its own scope only) and is skipped, as are malformed ones. self
// is the revision of builder's key, whatever it holds (0: none).
func readClaims(ctx context.Context, conn *queue.Conn, kv jetstream.KeyValue, id, drv, builder string) (claims []Claim, self uint64, err error) {
	keys, err := conn.KVKeys(ctx, queue.BucketFarm, claimPrefix(id, drv)+".*")
	if err != nil {
		return nil, 0, fmt.Errorf("farm: claims on %s: %w", drv, err)
	}
	own := ""
	if builder != "" {
		own = ClaimKey(id, drv, builder)
	}
	for _, key := range keys {
		e, err := kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			continue
		}
		if err != nil {
			return nil, 0, fmt.Errorf("farm: get %s: %w", key, err)
		}
		if key == own {
			self = e.Revision()
		}
		if c := claimOf(key, e); c != nil {
			claims = append(claims, *c)
		}
	}
	return claims, self, nil
}

// claimOf is the claim of entry e of key: nil unless its builder wrote
// it.
func claimOf(key string, e jetstream.KeyValueEntry) *Claim {
	var c Claim
	if json.Unmarshal(e.Value(), &c) != nil || c.Builder == "" || !strings.HasSuffix(key, "."+queue.StagingScope(c.Builder)) {
		return nil
	}
	c.rev = e.Revision()
	return &c
}

// readClaim reads the claim under key: nil when there is none, or none
// its builder wrote.
func readClaim(ctx context.Context, kv jetstream.KeyValue, key string) (*Claim, error) {
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("farm: get %s: %w", key, err)
	}
	return claimOf(key, e), nil
}

// builderClaim is builder's own claim on drv in set id, or nil.
func builderClaim(ctx context.Context, kv jetstream.KeyValue, id, drv, builder string) (*Claim, error) {
	return readClaim(ctx, kv, ClaimKey(id, drv, builder))
}

// holds reports whether c is builder's claim on replica and attempt.
func (c *Claim) holds(builder string, replica, attempt int) bool {
	return c != nil && c.Builder == builder && c.Replica == replica && c.Attempt == attempt
}

// holders are the claims that hold the replicas of a derivation in state
// st, by replica: see the package's rule above. failed builders hold
// nothing.
func holders(claims []Claim, st *State, failed []string) map[int]*Claim {
	out := map[int]*Claim{}
	for i := range claims {
		c := &claims[i]
		if c.Replica < 0 || c.Replica >= len(st.Attempts) || c.Attempt != st.Attempts[c.Replica] || slices.Contains(failed, c.Builder) {
			continue
		}
		if h := out[c.Replica]; h == nil || c.ahead(h) {
			out[c.Replica] = c
		}
	}
	return out
}

// claim records that builder (run by owner) takes replica r.Replica of
// r's derivation, on the delivered-th delivery of the request, stored at
// stored; it decides that the N replicas of a quorum go to N distinct
// owners and that no replica is built twice:
//   - a builder that failed the derivation does not get it, nor does one
//     whose builder or owner holds another replica (NotForUs);
//   - a request for an attempt the state has moved past, or for a
//     derivation no longer needed, is dropped (NotNeeded);
//   - a replica held by another builder's claim on a later delivery (or
//     on the same one, written first) is not taken (Held): either this
//     delivery is stale and the holder has the request, or the claim is
//     a bad builder's, written to keep the replica from everyone while
//     it builds nothing. The request is kept, not dropped, so that in
//     the second case it comes back, and once it was stored longer ago
//     than takeover, the worker it comes back to takes the replica over
//     whatever the claims say: an honest holder has the request itself
//     and keeps it, so it comes back to nobody while one builds.
//
// A replica held on an earlier delivery (its claimant lost the request:
// killed, or past its AckWait) is taken over.
func claim(ctx context.Context, conn *queue.Conn, kv jetstream.KeyValue, r *Request, builder, owner string, delivered uint64, stored time.Time, takeover time.Duration) (ClaimResult, error) {
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
	// The scheduler publishes requests before the state that says so:
	// the first ones are attempt 1 of each replica of the quorum. Every
	// claimant must see the same replicas, or two of one owner could
	// each miss the other's.
	for len(st.Attempts) < max(r.Replica+1, set.Quorum) {
		st.Attempts = append(st.Attempts, 1)
	}
	st.Attempts[r.Replica] = r.Attempt
	failed := st.failedBuilders()
	if slices.Contains(failed, builder) {
		return NotForUs, nil
	}
	overdue := time.Since(stored) > takeover
	mine := Claim{Version: RecordVersion, Replica: r.Replica, Attempt: r.Attempt, Builder: builder, Owner: owner,
		Delivered: delivered, At: time.Now().UTC()}
	// decide is the outcome against claims, with mine's revision set
	// once written (0 before: it yields to no write on its delivery).
	decide := func(claims []Claim) ClaimResult {
		for rep, h := range holders(claims, st, failed) {
			switch {
			case rep != r.Replica && h.Builder == builder:
				return NotForUs
			case rep != r.Replica && h.Owner == owner && (mine.rev == 0 || h.rev < mine.rev):
				return NotForUs
			case rep == r.Replica && h.Builder != builder && !overdue && (mine.rev == 0 && h.Delivered >= delivered || mine.rev != 0 && h.ahead(&mine)):
				return Held
			}
		}
		return Claimed
	}
	key := ClaimKey(r.Set, r.DrvPath, builder)
	b, err := json.Marshal(mine)
	if err != nil {
		return 0, fmt.Errorf("farm: encode %s: %w", key, err)
	}
	for range casRetries {
		// The builder's key is written with compare-and-set: its
		// concurrent handlers must not each replace the other's claim.
		mine.rev = 0
		claims, last, err := readClaims(ctx, conn, kv, r.Set, r.DrvPath, builder)
		if err != nil {
			return 0, err
		}
		if res := decide(claims); res != Claimed {
			return res, nil
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
		if claims, _, err = readClaims(ctx, conn, kv, r.Set, r.DrvPath, ""); err != nil {
			return 0, err
		}
		res := decide(claims)
		if res == Claimed {
			return Claimed, nil
		}
		if err := kv.Delete(ctx, key, jetstream.LastRevision(mine.rev)); err != nil && !casConflict(err) {
			return 0, fmt.Errorf("farm: withdraw %s: %w", key, err)
		}
		return res, nil
	}
	return 0, fmt.Errorf("farm: claim %s: %w", key, queue.ErrCASConflict)
}
