package farm

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/queue"
	"github.com/nats-io/nats.go/jetstream"
)

// TestClaimRules walks the claim decisions one by one on a real bucket.
func TestClaimRules(t *testing.T) {
	conn, ctx, g, sub, kv := claimSetup(t)
	n := g.Node(fakePath("a.drv"))
	req := func(replica, attempt int, exclude ...string) *Request {
		return &Request{Version: RecordVersion, Set: sub.Set.ID, Tenant: tenant, DrvPath: n.DrvPath, System: n.System,
			Outputs: n.Outputs, Replica: replica, Attempt: attempt, Exclude: exclude, Requested: time.Now()}
	}
	now := time.Now()
	type step struct {
		what           string
		r              *Request
		builder, owner string
		delivered      uint64
		want           ClaimResult
	}
	run := func(steps ...step) {
		t.Helper()
		for _, step := range steps {
			got, err := claim(ctx, conn, kv, step.r, claimArgs{builder: step.builder, owner: step.owner, msg: 1, delivered: step.delivered, blocked: now, takeover: time.Hour,
				building: func() bool { return true }})
			if err != nil || got != step.want {
				t.Errorf("%s: %v, %v; want %v", step.what, got, err, step.want)
			}
		}
	}
	run(
		step{"first claim", req(0, 1), "b1", "o1", 1, Claimed},
		step{"the same claim again (a retried call)", req(0, 1), "b1", "o1", 1, Claimed},
		step{"same owner, other replica", req(1, 1), "b2", "o1", 1, NotForUs},
		step{"same builder, other replica", req(1, 1), "b1", "o9", 1, NotForUs},
		step{"other owner, other replica", req(1, 1), "b2", "o2", 1, Claimed},
		step{"same delivery of a held replica, another builder", req(0, 1), "b3", "o3", 1, Held},
		step{"a later delivery: the claimant lost it", req(0, 1), "b3", "o3", 2, Claimed},
		step{"the old delivery comes back", req(0, 1), "b1", "o1", 1, Held},
		step{"a builder the request excludes", req(0, 2, "b4"), "b4", "o4", 1, NotForUs},
		step{"a later attempt takes over", req(0, 2, "b3"), "b4", "o4", 1, Claimed},
	)
	// The scheduler writes the state after it publishes a request: then
	// the earlier attempt's request is stale.
	if _, err := update(ctx, kv, stateKey(sub.Set.ID, n.DrvPath), func(st *State, _ bool) (bool, func(context.Context) error, error) {
		st.Attempts = []int{2, 1}
		return true, nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	run(step{"an earlier attempt is stale", req(0, 1), "b5", "o5", 9, NotNeeded})
	claims, err := ReadClaims(ctx, conn, sub.Set.ID, n.DrvPath)
	if err != nil {
		t.Fatal(err)
	}
	var st State
	if _, _, err := getJSON(ctx, kv, stateKey(sub.Set.ID, n.DrvPath), &st); err != nil {
		t.Fatal(err)
	}
	if h := holders(claims, &st, nil); len(h) != 2 || h[0].Builder != "b4" || h[0].Attempt != 2 || h[1].Builder != "b2" {
		t.Errorf("holders %+v of claims %+v", h, claims)
	}

	// A cancelled set, or a derivation done, needs nobody.
	if _, err := Cancel(ctx, conn, sub.Set.ID); err != nil {
		t.Fatal(err)
	}
	if got, err := claim(ctx, conn, kv, req(1, 5), claimArgs{builder: "b6", owner: "o6", msg: 1, delivered: 1, blocked: now, takeover: time.Hour}); err != nil || got != NotNeeded {
		t.Errorf("cancelled set: %v, %v", got, err)
	}
	other := submit(t, conn, g, newMemCache(), 1, 0)
	if _, err := update(ctx, kv, stateKey(other.Set.ID, n.DrvPath), func(st *State, _ bool) (bool, func(context.Context) error, error) {
		st.Status = Done
		return true, nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	r := req(0, 1)
	r.Set = other.Set.ID
	if got, err := claim(ctx, conn, kv, r, claimArgs{builder: "b1", owner: "o1", msg: 1, delivered: 1, blocked: now, takeover: time.Hour}); err != nil || got != NotNeeded {
		t.Errorf("derivation done: %v, %v", got, err)
	}
}

// claimSetup submits a set of one derivation, a, with quorum 2 (no
// scheduler runs), for claim to decide on directly.
func claimSetup(t *testing.T) (*queue.Conn, context.Context, *Graph, *Submitted, jetstream.KeyValue) {
	t.Helper()
	_, conn := setup(t)
	ctx := testctx.New(t, time.Minute)
	g := graphOf(t, spec{"a": nil}, "x86_64-linux")
	sub := submit(t, conn, g, newMemCache(), 2, 0)
	kv, err := bucket(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	return conn, ctx, g, sub, kv
}

// TestClaimsOfABadBuilder: what a bad builder can write into the claims,
// and what it gets. It writes under its own key only (its runner user
// may write nothing else), once per derivation.
func TestClaimsOfABadBuilder(t *testing.T) {
	conn, ctx, g, sub, kv := claimSetup(t)
	drv := fakePath("a.drv")
	req := func(replica int) *Request {
		return &Request{Version: RecordVersion, Set: sub.Set.ID, Tenant: tenant, DrvPath: drv, System: "x86_64-linux",
			Replica: replica, Attempt: 1, Requested: time.Now()}
	}
	fresh, old := time.Now(), time.Now().Add(-2*time.Hour)
	// try claims r as builder of owner, on delivery delivered of message
	// msg, blocked since blocked; building: another handler of the
	// builder's process builds the derivation.
	try := func(what string, r *Request, builder, owner string, msg, delivered uint64, blocked time.Time, building bool, want ClaimResult) {
		t.Helper()
		a := claimArgs{builder: builder, owner: owner, msg: msg, delivered: delivered, blocked: blocked, takeover: time.Hour,
			building: func() bool { return building }}
		if got, err := claim(ctx, conn, kv, r, a); err != nil || got != want {
			t.Errorf("%s: %v, %v; want %v", what, got, err, want)
		}
	}
	// A claim on a delivery no worker reaches holds the replica until
	// the worker has found it in its way for the timeout, and not after.
	forgeClaim(t, conn, sub.Set.ID, drv, "mallory", 1)
	try("replica 0 under mallory's claim", req(0), "b1", "o1", 1, 3, fresh, false, Held)
	try("replica 0 under mallory's claim, in the way for 2 h", req(0), "b1", "o1", 1, 4, old, false, Claimed)
	// The builder's claim stays where it is while it builds: its other
	// handler, given replica 1 while mallory's claim outranks its claim
	// on replica 0, does not move it (a failure report of replica 0
	// would then be refused), nor does a stale handler of replica 0.
	try("b1's other handler, replica 1", req(1), "b1", "o1", 1, 1, fresh, true, NotForUs)
	try("b1's stale handler of replica 0", req(0), "b1", "o1", 1, 2, old, true, Held)
	if c, err := builderClaim(ctx, conn, sub.Set.ID, drv, "b1"); err != nil || !c.holds("b1", 0, 1) || c.Delivered != 4 {
		t.Errorf("b1's claim: %+v, %v; want replica 0 on delivery 4", c, err)
	}
	// A claim written under one builder's key in another's name (which
	// only an admin, or anyone on a NATS without users, can write) is
	// nobody's: it holds nothing, and it is not the named builder's.
	c, _ := json.Marshal(Claim{Version: RecordVersion, Replica: 1, Attempt: 1, Builder: "b2", Owner: "o2", Delivered: 1 << 40})
	if err := conn.KVPut(ctx, queue.BucketFarm, ClaimKey(sub.Set.ID, drv, "eve"), c); err != nil {
		t.Fatal(err)
	}
	if c, err := builderClaim(ctx, conn, sub.Set.ID, drv, "b2"); err != nil || c != nil {
		t.Errorf("b2's claim: %+v, %v; want none", c, err)
	}
	// A claim on a replica the derivation cannot have keeps its owner
	// from nothing.
	putClaim(t, conn, sub.Set.ID, drv, Claim{Replica: 70, Attempt: 1, Builder: "trudy", Owner: "o3", Delivered: 1})
	try("replica 1 for o3, with trudy's claim on replica 70 in o3's name", req(1), "b3", "o3", 1, 1, fresh, false, Claimed)

	// In another set: a claim in another owner's name keeps that owner
	// from the other replicas until the timeout.
	other := submit(t, conn, g, newMemCache(), 2, 3)
	in := func(id string, replica, attempt int) *Request {
		r := req(replica)
		r.Set, r.Attempt = id, attempt
		return r
	}
	putClaim(t, conn, other.Set.ID, drv, Claim{Replica: 0, Attempt: 1, Builder: "mallory", Owner: "o1", Delivered: 1 << 40})
	try("replica 1 for o1, mallory claiming replica 0 as o1", in(other.Set.ID, 1, 1), "b1", "o1", 1, 1, fresh, false, NotForUs)
	try("the same, in the way for 2 h", in(other.Set.ID, 1, 1), "b1", "o1", 1, 2, old, false, Claimed)
	// A second request message for a held replica (the scheduler
	// published it again, past the duplicate window) is held too.
	try("replica 1, another message", in(other.Set.ID, 1, 1), "b2", "o2", 2, 1, fresh, false, Held)
	try("replica 1, another message, redelivered", in(other.Set.ID, 1, 1), "b2", "o2", 2, 5, fresh, false, Held)

	// A third set: the claim a crashed process of b1 left on replica 0,
	// taken over since by b2, does not keep b1 from replica 1.
	third := submit(t, conn, g, newMemCache(), 2, 3)
	try("b1 claims replica 0", in(third.Set.ID, 0, 1), "b1", "o1", 1, 1, fresh, false, Claimed)
	try("b2 takes it over on the next delivery", in(third.Set.ID, 0, 1), "b2", "o2", 1, 2, fresh, false, Claimed)
	try("b1, restarted, replica 1", in(third.Set.ID, 1, 1), "b1", "o1", 2, 1, fresh, false, Claimed)
	// A claim on an attempt not dispatched yet does not push the
	// current holder aside: its owner still keeps off the others.
	putClaim(t, conn, third.Set.ID, drv, Claim{Replica: 1, Attempt: 2, Builder: "mallory", Owner: "m", Delivered: 1})
	try("o1's other builder, replica 2 of a dispute, with mallory on attempt 2 of b1's replica", in(third.Set.ID, 2, 1), "b1x", "o1", 3, 1, fresh, false, NotForUs)
	// A builder that built a replica keeps its claim on it, even once a
	// bad builder outranks it there and no handler of its builds.
	fourth := submit(t, conn, g, newMemCache(), 2, 3)
	try("b1 claims replica 0", in(fourth.Set.ID, 0, 1), "b1", "o1", 1, 1, fresh, false, Claimed)
	if err := markBuilt(ctx, conn, kv, in(fourth.Set.ID, 0, 1), "b1", 1, 1); err != nil {
		t.Fatal(err)
	}
	putClaim(t, conn, fourth.Set.ID, drv, Claim{Replica: 0, Attempt: 1, Builder: "mallory", Owner: "m", Msg: 1, Delivered: 1 << 40})
	try("b1, its replica 0 built and outranked, replica 1", in(fourth.Set.ID, 1, 1), "b1", "o1", 2, 1, fresh, false, NotForUs)
	if c, err := builderClaim(ctx, conn, fourth.Set.ID, drv, "b1"); err != nil || !c.holds("b1", 0, 1) || !c.Built {
		t.Errorf("b1's claim: %+v, %v; want replica 0, built", c, err)
	}
	// Both replicas built, by m1 (owner A) and m2 (owner B), and held
	// off too long: the scheduler sent both again past them. Their
	// claims hold nothing any more, for every claimant: y of owner C
	// takes replica 0, and z of owner C is kept off replica 1.
	fifth := submit(t, conn, g, newMemCache(), 2, 3)
	putClaim(t, conn, fifth.Set.ID, drv, Claim{Replica: 0, Attempt: 1, Builder: "m1", Owner: "A", Msg: 1, Delivered: 1, Built: true})
	putClaim(t, conn, fifth.Set.ID, drv, Claim{Replica: 1, Attempt: 1, Builder: "m2", Owner: "B", Msg: 2, Delivered: 1, Built: true})
	if _, err := update(ctx, kv, stateKey(fifth.Set.ID, drv), func(st *State, _ bool) (bool, func(context.Context) error, error) {
		st.Status, st.Attempts = Dispatched, []int{1, 1}
		st.displace(0, []string{"m1"})
		st.displace(1, []string{"m2"})
		return true, nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	sentAgain := func(replica int, past string) *Request {
		r := in(fifth.Set.ID, replica, 1)
		r.Exclude = []string{past}
		return r
	}
	try("y of C, replica 0 sent again past m1", sentAgain(0, "m1"), "y", "C", 3, 1, fresh, false, Claimed)
	try("z of C, replica 1 sent again past m2", sentAgain(1, "m2"), "z", "C", 4, 1, fresh, false, NotForUs)
	// Replicas the state does not know yet (a dispute's, published
	// before the state says so) count for every claimant alike.
	try("b3 of o3 claims replica 3", in(third.Set.ID, 3, 1), "b3", "o3", 4, 1, fresh, false, Claimed)
	try("b3x of o3, replica 2", in(third.Set.ID, 2, 1), "b3x", "o3", 3, 1, fresh, false, NotForUs)
}

// TestClaimRace: workers claiming at once settle as one compare-and-set
// would: two builders of one owner never both get a replica, nor does
// one builder's two handlers, nor two builders one replica.
func TestClaimRace(t *testing.T) {
	_, conn := setup(t)
	ctx := testctx.New(t, 2*time.Minute)
	g := graphOf(t, spec{"a": nil}, "x86_64-linux")
	kv, err := bucket(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	drv := fakePath("a.drv")
	type who struct {
		replica        int
		builder, owner string
	}
	for _, c := range []struct {
		what string
		a, b who
	}{
		{"two builders of one owner", who{0, "b1", "o1"}, who{1, "b2", "o1"}},
		{"one builder's two handlers", who{0, "b1", "o1"}, who{1, "b1", "o1"}},
		{"two builders, one replica", who{0, "b1", "o1"}, who{0, "b2", "o2"}},
	} {
		for round := range 15 {
			sub := submit(t, conn, g, newMemCache(), 2, 0)
			var got [2]ClaimResult
			var wg sync.WaitGroup
			for i, w := range []who{c.a, c.b} {
				wg.Go(func() {
					r := &Request{Version: RecordVersion, Set: sub.Set.ID, Tenant: tenant, DrvPath: drv, System: "x86_64-linux",
						Replica: w.replica, Attempt: 1, Requested: time.Now()}
					res, err := claim(ctx, conn, kv, r, claimArgs{builder: w.builder, owner: w.owner, msg: 1, delivered: 1, blocked: time.Now(), takeover: time.Hour, building: func() bool { return c.a.builder == c.b.builder }})
					if err != nil {
						t.Error(err)
					}
					got[i] = res
				})
			}
			wg.Wait()
			if n := count(got[:], Claimed); n != 1 {
				t.Errorf("%s, round %d: %v, want one claimed", c.what, round, got)
			}
		}
	}
}

func count[T comparable](s []T, v T) (n int) {
	for _, x := range s {
		if x == v {
			n++
		}
	}
	return n
}

// TestHeldRequestTakenOver: a bad builder's claim on a delivery no
// worker reaches, written before any worker has the request, keeps it
// from the workers until the request is ClaimTimeout old, and no longer:
// the derivation is built. Before, a worker dropped a request whose
// replica such a claim held, and the derivation waited for good.
func TestHeldRequestTakenOver(t *testing.T) {
	url, conn := setup(t)
	cache := newMemCache()
	g := graphOf(t, spec{"a": nil}, "x86_64-linux")
	sub := submit(t, conn, g, cache, 1, 3)
	drv := fakePath("a.drv")
	forgeClaim(t, conn, sub.Set.ID, drv, "mallory", 1)
	startScheduler(t, url, cache, "g1")
	p := &pusher{conn: conn, cache: cache, quorum: 1}
	var mu sync.Mutex
	var seen []ClaimResult
	ctx, cancel := context.WithCancel(context.Background())
	const timeout = 4 * time.Second
	w := &Worker{Conn: connect(t, url), Tenant: tenant, Machine: Machine{System: "x86_64-linux"}, Builder: "honest",
		AckWait: time.Second, ClaimTimeout: timeout, Logger: testLogger(t, "worker honest"),
		OnClaim: func(_ *Request, res ClaimResult) {
			mu.Lock()
			seen = append(seen, res)
			mu.Unlock()
		},
		Build: func(ctx context.Context, r *Request) (*BuildStats, error) { return &testCost, p.vote(ctx, r, "honest") }}
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker: %v", err)
		}
	})
	start := time.Now()
	st := waitFinished(t, conn, sub.Set.ID, 30*time.Second)
	if st.Counts[Done] != 1 {
		t.Fatalf("status %s", st)
	}
	mu.Lock()
	defer mu.Unlock()
	if took := time.Since(start); count(seen, Held) == 0 || seen[len(seen)-1] != Claimed || took < timeout-time.Second {
		t.Errorf("claims %v, done after %v: want held, then claimed once the request was %v old", seen, took, timeout)
	}
}

// TestWorkerSkip: a worker whose Skip says so leaves a request to
// another (a volunteer that has voted on the outputs already), and
// never claims it.
func TestWorkerSkip(t *testing.T) {
	url, conn := setup(t)
	cache := newMemCache()
	g := graphOf(t, spec{"a": nil, "b": {"a"}}, "x86_64-linux")
	p := &pusher{conn: conn, cache: cache, quorum: 1}
	startScheduler(t, url, cache, "g1")
	var mu sync.Mutex
	builtBy := map[string][]string{}
	skipped := 0
	run := func(builder string, skip bool) {
		ctx, cancel := context.WithCancel(context.Background())
		w := &Worker{Conn: connect(t, url), Tenant: tenant, Machine: Machine{System: "x86_64-linux"}, Builder: builder, Owner: builder,
			Skip: func(context.Context, *Request) (bool, error) {
				if skip {
					mu.Lock()
					skipped++
					mu.Unlock()
				}
				return skip, nil
			},
			Build: func(ctx context.Context, r *Request) (*BuildStats, error) {
				mu.Lock()
				builtBy[builder] = append(builtBy[builder], nameOf(r.DrvPath))
				mu.Unlock()
				return &testCost, p.vote(ctx, r, builder)
			}}
		done := make(chan error, 1)
		go func() { done <- w.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
	}
	run("voted", true)
	sub := submit(t, conn, g, cache, 1, 3)
	waitFor(t, 10*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return skipped >= 2 })
	run("fresh", false)
	st := waitFinished(t, conn, sub.Set.ID, 20*time.Second)
	mu.Lock()
	defer mu.Unlock()
	if st.Counts[Done] != 2 || len(builtBy["voted"]) != 0 || strings.Join(builtBy["fresh"], " ") != "a b" {
		t.Errorf("%s: built by %v after %d skips", st, builtBy, skipped)
	}
}
