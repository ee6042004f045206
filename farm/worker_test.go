package farm

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testctx"
)

// TestClaimRules walks the claim decisions one by one on a real bucket.
func TestClaimRules(t *testing.T) {
	_, conn := setup(t)
	ctx := testctx.New(t, time.Minute)
	g := graphOf(t, spec{"a": nil}, "x86_64-linux")
	sub := submit(t, conn, g, newMemCache(), 2, 0)
	kv, err := bucket(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	n := g.Node(fakePath("a.drv"))
	req := func(replica, attempt int, exclude ...string) *Request {
		return &Request{Version: RecordVersion, Set: sub.Set.ID, Tenant: tenant, DrvPath: n.DrvPath, System: n.System,
			Outputs: n.Outputs, Replica: replica, Attempt: attempt, Exclude: exclude, Requested: time.Now()}
	}
	for _, step := range []struct {
		what           string
		r              *Request
		builder, owner string
		delivered      uint64
		want           ClaimResult
	}{
		{"first claim", req(0, 1), "b1", "o1", 1, Claimed},
		{"the same claim again (a retried call)", req(0, 1), "b1", "o1", 1, Claimed},
		{"same owner, other replica", req(1, 1), "b2", "o1", 1, NotForUs},
		{"same builder, other replica", req(1, 1), "b1", "o9", 1, NotForUs},
		{"other owner, other replica", req(1, 1), "b2", "o2", 1, Claimed},
		{"same delivery of a held replica, another builder", req(0, 1), "b3", "o3", 1, NotNeeded},
		{"a later delivery: the claimant lost it", req(0, 1), "b3", "o3", 2, Claimed},
		{"the old delivery comes back", req(0, 1), "b1", "o1", 1, NotNeeded},
		{"a builder the request excludes", req(0, 2, "b4"), "b4", "o4", 1, NotForUs},
		{"a later attempt takes over", req(0, 2, "b3"), "b4", "o4", 1, Claimed},
		{"an earlier attempt is stale", req(0, 1), "b5", "o5", 9, NotNeeded},
	} {
		got, err := claim(ctx, kv, step.r, step.builder, step.owner, step.delivered)
		if err != nil || got != step.want {
			t.Errorf("%s: %v, %v; want %v", step.what, got, err, step.want)
		}
	}
	var c Claims
	if _, _, err := getJSON(ctx, kv, ClaimKey(sub.Set.ID, n.DrvPath), &c); err != nil {
		t.Fatal(err)
	}
	if len(c.Replicas) != 2 || c.Replicas[0].Builder != "b4" || c.Replicas[0].Attempt != 2 || c.Replicas[1].Builder != "b2" {
		t.Errorf("claims %+v", c.Replicas)
	}

	// A cancelled set, or a derivation done, needs nobody.
	if _, err := Cancel(ctx, conn, sub.Set.ID); err != nil {
		t.Fatal(err)
	}
	if got, err := claim(ctx, kv, req(1, 5), "b6", "o6", 1); err != nil || got != NotNeeded {
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
	if got, err := claim(ctx, kv, r, "b1", "o1", 1); err != nil || got != NotNeeded {
		t.Errorf("derivation done: %v, %v", got, err)
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
