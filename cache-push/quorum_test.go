package cachepush

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cache-push/policy"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/queue"
)

func tallyPolicy(t *testing.T) *policy.Policy {
	t.Helper()
	dir := t.TempDir()
	// Each builder its own key: a policy refuses a key shared by two ids.
	for _, k := range []string{"a", "a2", "b", "c"} {
		if _, err := attest.GenerateKeyFiles(filepath.Join(dir, k)); err != nil {
			t.Fatal(err)
		}
	}
	p, err := policy.Parse([]byte(`tenants: [default]
systems: [x86_64-linux]
quorum: {min: 2, distinct: owner}
overrides:
  - names: ["flaky-*"]
    quorum: {on_disagreement: trusted-only, trusted: a}
  - systems: [x86_64-linux]
    names: ["solo-*"]
    quorum: {min: 1}
builders:
  - {id: a, key: a.pub, owner: alice}
  - {id: a2, key: a2.pub, owner: alice}
  - {id: b, key: b.pub, owner: bob}
  - {id: c, key: c.pub, owner: carol}
`), dir)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestTallyVotes(t *testing.T) {
	p := tallyPolicy(t)
	v := func(builder, hash string) Vote { return Vote{Builder: builder, NarSHA256: hash} }
	for _, tc := range []struct {
		name        string
		path        string
		votes       []Vote
		quarantined map[string]bool
		verdict     string
		winner      string
	}{
		{"none", "/nix/store/x-hello", nil, nil, VerdictPending, ""},
		{"one", "/nix/store/x-hello", []Vote{v("a", "h1")}, nil, VerdictPending, ""},
		{"two owners agree", "/nix/store/x-hello", []Vote{v("a", "h1"), v("b", "h1")}, nil, VerdictAgreed, "h1"},
		{"same owner twice is one", "/nix/store/x-hello", []Vote{v("a", "h1"), v("a2", "h1")}, nil, VerdictPending, ""},
		{"disagree", "/nix/store/x-hello", []Vote{v("a", "h1"), v("b", "h2")}, nil, VerdictDisputed, ""},
		{"majority wins", "/nix/store/x-hello", []Vote{v("a", "h1"), v("b", "h1"), v("c", "h2")}, nil, VerdictAgreed, "h1"},
		{"quarantined ignored", "/nix/store/x-hello", []Vote{v("a", "h1"), v("c", "h2")}, map[string]bool{"c": true}, VerdictPending, ""},
		{"trusted-only", "/nix/store/x-flaky-1", []Vote{v("a", "h1"), v("b", "h2")}, nil, VerdictTrustedOnly, "h1"},
		{"trusted-only without the trusted vote", "/nix/store/x-flaky-1", []Vote{v("b", "h1"), v("c", "h2")}, nil, VerdictDisputed, ""},
		{"override min 1", "/nix/store/x-solo-1", []Vote{v("c", "h9")}, nil, VerdictAgreed, "h9"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := TallyVotes(p, p.QuorumFor("default", "x86_64-linux", tc.path), tc.votes, Standing{Quarantined: tc.quarantined})
			if got.Verdict != tc.verdict || got.Winner != tc.winner {
				t.Fatalf("verdict %s winner %q (%s), want %s %q", got.Verdict, got.Winner, got.Why, tc.verdict, tc.winner)
			}
		})
	}
}

func TestTallyAdaptive(t *testing.T) {
	p := tallyPolicy(t)
	q := p.QuorumFor("default", "x86_64-linux", "/nix/store/x-hello")
	q.TrustedAfter, q.SpotCheck = 5, 0.25
	vet := Standing{Veteran: map[string]bool{"a": true}}
	waived, checked := 0, 0
	for i := range 400 {
		path := fmt.Sprintf("/nix/store/%032d-p", i)
		got := TallyVotes(p, q, []Vote{{Builder: "a", NarSHA256: "h", StorePath: path}}, vet)
		if SpotChecked(path, q.SpotCheck) {
			checked++
			if got.Verdict != VerdictPending {
				t.Fatalf("spot-checked %s decided on one vote", path)
			}
		} else if got.Verdict == VerdictAgreed && got.Adaptive {
			waived++
		} else {
			t.Fatalf("%s: %s", path, got.Why)
		}
	}
	if checked < 60 || checked > 140 {
		t.Errorf("%d of 400 spot-checked at rate 0.25", checked)
	}
	// Without a veteran, one vote is never enough.
	if got := TallyVotes(p, q, []Vote{{Builder: "b", NarSHA256: "h", StorePath: "/nix/store/x-p"}}, Standing{}); got.Verdict != VerdictPending {
		t.Errorf("non-veteran: %s", got.Verdict)
	}
	if waived+checked != 400 || waived == 0 {
		t.Errorf("waived %d, checked %d", waived, checked)
	}
}

// TestAgreementsConcurrent: many handlers adding agreements for one
// builder at once, in two pushers sharing the KV, store every one of them
// by the time they return.
func TestAgreementsConcurrent(t *testing.T) {
	f := newFixture(t)
	pol := f.pusher.cfg.Policy
	var pushers []*Pusher
	for range 2 {
		pu, err := New(Config{KV: f.conn, Store: f.store, Policy: pol, CacheKey: f.pusher.cfg.CacheKey, Staging: f.conn, UncheckedOutputPathsUnsafe: true})
		if err != nil {
			t.Fatal(err)
		}
		pushers = append(pushers, pu)
	}
	const each = 40
	var wg sync.WaitGroup
	for _, pu := range pushers {
		for range each {
			wg.Go(func() { pu.addAgreement(testctx.New(t, 60*time.Second), testBuilder) })
		}
	}
	wg.Wait()
	r, err := GetReputation(testctx.New(t, 60*time.Second), f.conn, testBuilder)
	if err != nil {
		t.Fatal(err)
	}
	if r.Agreements != 2*each || r.Builder != testBuilder || r.LastSeen.IsZero() {
		t.Fatalf("record %+v: want %d agreements", r, 2*each)
	}
}

// builderUpdates counts the updates of builders' reputation records.
type builderUpdates struct {
	KV
	n atomic.Int32
}

func (k *builderUpdates) KVUpdate(ctx context.Context, bucket, key string, f func(old []byte) ([]byte, error)) error {
	if bucket == queue.BucketBuilders {
		k.n.Add(1)
	}
	return k.KV.KVUpdate(ctx, bucket, key, f)
}

// TestAgreementsDeferred: while a pusher is open, the agreements its
// handlers count are stored by its flusher, one update per builder per
// ReputationFlush, and those still pending when it closes are stored by
// Close; closed, it stores each at once again.
func TestAgreementsDeferred(t *testing.T) {
	f := newFixture(t)
	ctx := testctx.New(t, 60*time.Second)
	kv := &builderUpdates{KV: f.conn}
	open := func(flush time.Duration, group string) *Pusher {
		t.Helper()
		pu, err := New(Config{KV: kv, Store: f.store, Policy: f.pusher.cfg.Policy, CacheKey: f.pusher.cfg.CacheKey, Staging: f.conn,
			UncheckedOutputPathsUnsafe: true, ReputationFlush: flush})
		if err != nil {
			t.Fatal(err)
		}
		if err := pu.Open(ctx, f.conn, queue.ConsumerOptions{Group: group, FilterSubject: queue.ResultsFilter(testTenant)}); err != nil {
			t.Fatal(err)
		}
		return pu
	}
	agreements := func() int {
		t.Helper()
		r, err := GetReputation(ctx, f.conn, testBuilder)
		if errors.Is(err, ErrNoReputation) {
			return 0
		}
		if err != nil {
			t.Fatal(err)
		}
		return r.Agreements
	}
	add := func(pu *Pusher, n int) {
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() { pu.addAgreement(ctx, testBuilder) })
		}
		wg.Wait()
	}

	// A flusher that never runs: Close stores all 50 in one update.
	pu := open(time.Hour, "agree-close")
	add(pu, 50)
	if got, n := agreements(), kv.n.Load(); got != 0 || n != 0 {
		t.Fatalf("open pusher stored %d agreements in %d updates before its flush", got, n)
	}
	if err := pu.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if got, n := agreements(), kv.n.Load(); got != 50 || n != 1 {
		t.Fatalf("after Close: %d agreements in %d updates, want 50 in 1", got, n)
	}
	// Closed, an agreement is stored before addAgreement returns.
	add(pu, 1)
	if got := agreements(); got != 51 {
		t.Fatalf("closed pusher: %d agreements, want 51", got)
	}

	// A flusher that runs: the agreements arrive while the pusher is open.
	pu = open(20*time.Millisecond, "agree-tick")
	defer pu.Close(ctx)
	add(pu, 10)
	for deadline := time.Now().Add(10 * time.Second); agreements() != 61; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("open pusher's flusher stored %d agreements, want 61", agreements())
		}
	}
}

// TestNoReputation: a builder without a record is ErrNoReputation to
// both the reader and ClearQuarantine, so callers can tell "unknown
// builder" from a broken KV.
func TestNoReputation(t *testing.T) {
	f := newFixture(t)
	ctx := testctx.New(t, 60*time.Second)
	if _, err := GetReputation(ctx, f.conn, "nobody"); !errors.Is(err, ErrNoReputation) {
		t.Errorf("GetReputation of an unknown builder: %v, want ErrNoReputation", err)
	}
	if err := ClearQuarantine(ctx, f.conn, "nobody"); !errors.Is(err, ErrNoReputation) {
		t.Errorf("ClearQuarantine of an unknown builder: %v, want ErrNoReputation", err)
	}
}

// TestCountOwnVoteAtItsRevision: the handler that stored a vote marks
// it counted without reading it back, and counts the agreement; when the
// vote was replaced meanwhile (the builder's newer vote, another answer)
// the replacement is neither marked nor counted, as when the mark read
// the key first.
func TestCountOwnVoteAtItsRevision(t *testing.T) {
	f := newFixture(t)
	ctx := testctx.New(t, 60*time.Second)
	path := storePath("counted")
	vote := Vote{Tenant: testTenant, StorePath: path, Builder: testBuilder, NarSHA256: strings.Repeat("a", 64), NarSize: 1,
		Bundle: json.RawMessage(`{}`), Time: time.Now().UTC()}
	key := queue.VoteKey(testTenant, path, testBuilder)
	first, err := json.Marshal(vote)
	if err != nil {
		t.Fatal(err)
	}
	count := func(rev uint64) {
		t.Helper()
		t0 := Tally{Verdict: VerdictAgreed, Winner: vote.NarSHA256, Agreeing: []Vote{vote}}
		f.pusher.countReputation(ctx, testTenant, path, t0, storedVote{vote: vote, rev: rev, json: first})
	}
	stored := func() Vote {
		t.Helper()
		b, err := f.conn.KVGet(ctx, queue.BucketVotes, key)
		if err != nil {
			t.Fatal(err)
		}
		var v Vote
		if err := json.Unmarshal(b, &v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	rev, err := f.conn.KVCreate(ctx, queue.BucketVotes, key, first)
	if err != nil {
		t.Fatal(err)
	}
	count(rev)
	if got := stored(); got.Counted != vote.NarSHA256 || got.Answer() != vote.Answer() || string(got.Bundle) != "{}" {
		t.Fatalf("own vote stored as %+v after counting", got)
	}
	count(rev) // a stale revision: read, found counted already
	if r, err := GetReputation(ctx, f.conn, testBuilder); err != nil || r.Agreements != 1 {
		t.Fatalf("reputation %+v, %v: want 1 agreement", r, err)
	}

	// Replaced by another answer after it was stored: not this vote.
	if err := f.conn.KVDelete(ctx, queue.BucketVotes, key); err != nil {
		t.Fatal(err)
	}
	rev, err = f.conn.KVCreate(ctx, queue.BucketVotes, key, first)
	if err != nil {
		t.Fatal(err)
	}
	other := vote
	other.NarSHA256 = strings.Repeat("b", 64)
	b, _ := json.Marshal(other)
	if err := f.conn.KVPut(ctx, queue.BucketVotes, key, b); err != nil {
		t.Fatal(err)
	}
	count(rev)
	if got := stored(); got.Counted != "" || got.NarSHA256 != other.NarSHA256 {
		t.Fatalf("the replacing vote was overwritten or marked: %+v", got)
	}
	if r, _ := GetReputation(ctx, f.conn, testBuilder); r.Agreements != 1 {
		t.Fatalf("reputation counted a vote that was replaced: %+v", r)
	}

	// Replaced by the same builder's redelivery (the same answer, not
	// counted yet) after it was stored: the revision is stale, and the
	// fallback that reads the key marks and counts it, once.
	if err := f.conn.KVDelete(ctx, queue.BucketVotes, key); err != nil {
		t.Fatal(err)
	}
	rev, err = f.conn.KVCreate(ctx, queue.BucketVotes, key, first)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.conn.KVPut(ctx, queue.BucketVotes, key, first); err != nil {
		t.Fatal(err)
	}
	count(rev)
	if got := stored(); got.Counted != vote.NarSHA256 || got.Answer() != vote.Answer() {
		t.Fatalf("the redelivered vote stored as %+v after counting", got)
	}
	if r, _ := GetReputation(ctx, f.conn, testBuilder); r.Agreements != 2 {
		t.Fatalf("reputation %+v: want the redelivered vote counted", r)
	}
	count(0) // the redelivery's own handler: counted already
	if r, _ := GetReputation(ctx, f.conn, testBuilder); r.Agreements != 2 {
		t.Fatalf("reputation %+v: the redelivered vote counted twice", r)
	}
}

// TestCountedJSON: the counted vote's JSON made from the stored one is
// what json.Marshal makes of the vote marked counted, whatever fields it
// has set: a field added after Counted, or Counted's tag changed, fails
// here rather than storing a vote that reads back differently.
func TestCountedJSON(t *testing.T) {
	full := Vote{Tenant: testTenant, StorePath: storePath("c"), DrvPath: storePath("c.drv"), System: "x86_64-linux", Builder: testBuilder,
		NarSHA256: strings.Repeat("a", 64), NarSize: 7, References: []string{storePath("r")}, StagingKey: "nar/x", NixSig: "k:sig",
		Bundle: json.RawMessage(`{"a": [1, 2]}`), Time: time.Now().UTC(), MsgID: "m"}
	for _, v := range []Vote{full, {Bundle: json.RawMessage(`{}`)}} {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		got, err := countedJSON(b, "wins \"quoted\"")
		if err != nil {
			t.Fatal(err)
		}
		v.Counted = "wins \"quoted\""
		want, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) {
			t.Errorf("counted vote\n%s\nwant\n%s", got, want)
		}
	}
	if _, err := countedJSON(nil, "w"); err == nil {
		t.Error("no JSON marked counted")
	}
}
