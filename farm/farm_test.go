package farm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	cachepush "codeberg.org/provenix/provenix/cache-push"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/queue"
)

func submit(t testing.TB, conn *queue.Conn, g *Graph, cache Cache, quorum, maxAttempts int) *Submitted {
	t.Helper()
	s, err := Submit(testctx.New(t, time.Minute), conn, SubmitOptions{Tenant: tenant, Graph: g, Cache: cache, Quorum: quorum, MaxAttempts: maxAttempts})
	if err != nil {
		t.Fatalf("Submit: %v", err)
	}
	return s
}

// checkOrder fails unless every build started with the outputs it needs
// visible, and each derivation was built once per replica.
func checkBuilds(t *testing.T, log *buildLog, want int, quorum int) []build {
	t.Helper()
	builds := log.all()
	seen := map[string]int{}
	for _, b := range builds {
		if !b.ready {
			t.Errorf("%s dispatched before its inputs were visible", b.drv)
		}
		seen[fmt.Sprintf("%s/%d", b.drv, b.replica)]++
	}
	for k, n := range seen {
		if n != 1 {
			t.Errorf("%s built %d times", k, n)
		}
	}
	if len(builds) != want*quorum {
		t.Errorf("%d builds, want %d", len(builds), want*quorum)
	}
	return builds
}

func TestChainDispatchOrder(t *testing.T) {
	url, conn := setup(t)
	cache := newMemCache()
	s := spec{"c0": nil}
	for i := 1; i < 8; i++ {
		s[fmt.Sprintf("c%d", i)] = []string{fmt.Sprintf("c%d", i-1)}
	}
	g := graphOf(t, s, "x86_64-linux")
	log := twoWorkers(t, url, conn, g, cache, nil)

	sub := submit(t, conn, g, cache, 1, 0)
	if sub.Ready != 1 || sub.Skipped != 0 {
		t.Errorf("submitted: ready %d, skipped %d; want 1, 0", sub.Ready, sub.Skipped)
	}
	// Follow sees the chain progress and returns when it is finished.
	var seen []Progress
	if err := Follow(testctx.New(t, 30*time.Second), conn, sub.Set.ID, 0, func(p *Progress) { seen = append(seen, *p) }); err != nil {
		t.Fatal(err)
	}
	if last := seen[len(seen)-1]; !last.Finished() || last.Counts[Done] != 8 || last.ETA != 0 || last.DoneSince != 8-seen[0].Counts[Done] {
		t.Errorf("followed %d times, last %+v", len(seen), last)
	}
	st := waitFinished(t, conn, sub.Set.ID, 30*time.Second)
	if st.Counts[Done] != 8 {
		t.Fatalf("status %s", st)
	}
	builds := checkBuilds(t, log, 8, 1)
	for i, b := range builds {
		if b.drv != fmt.Sprintf("c%d", i) {
			t.Errorf("build %d was %s", i, b.drv)
		}
	}
}

func TestDiamondAndSkipped(t *testing.T) {
	url, conn := setup(t)
	cache := newMemCache()
	// top ← (l, r) ← mid ← (base, cached); cached is in the cache already.
	g := graphOf(t, spec{"cached": nil, "base": nil, "mid": {"base", "cached"}, "l": {"mid"}, "r": {"mid"}, "top": {"l", "r"}}, "x86_64-linux")
	cache.add(fakePath("cached"))
	log := twoWorkers(t, url, conn, g, cache, nil)

	sub := submit(t, conn, g, cache, 1, 0)
	if sub.Skipped != 1 || sub.Ready != 1 {
		t.Errorf("submitted: skipped %d, ready %d; want 1, 1", sub.Skipped, sub.Ready)
	}
	st := waitFinished(t, conn, sub.Set.ID, 30*time.Second)
	if st.Counts[Done] != 6 || st.Skipped != 1 {
		t.Fatalf("status %s", st)
	}
	sums, err := Summaries(testctx.New(t, time.Minute), conn, tenant, time.Now().Add(-time.Hour))
	if err != nil || len(sums) != 1 || sums[0].Set.ID != sub.Set.ID || !sums[0].Finished() || sums[0].Skipped != 1 {
		t.Errorf("Summaries: %+v, %v", sums, err)
	}
	if sums, err := Summaries(testctx.New(t, time.Minute), conn, "other", time.Now().Add(-time.Hour)); err != nil || len(sums) != 0 {
		t.Errorf("another tenant's summaries: %+v, %v", sums, err)
	}
	builds := checkBuilds(t, log, 5, 1)
	at := map[string]time.Time{}
	for _, b := range builds {
		at[b.drv] = b.at
	}
	if _, ok := at["cached"]; ok {
		t.Error("a derivation already in the cache was built")
	}
	if !at["top"].After(at["l"]) || !at["top"].After(at["r"]) || !at["l"].After(at["mid"]) || !at["mid"].After(at["base"]) {
		t.Errorf("diamond built out of order: %v", at)
	}
}

// TestSchedulerRestartRecomputes: outputs that became visible while no
// scheduler ran, with no event (lost, or published before the restart),
// are found in the cache by the next scheduler, which continues.
func TestSchedulerRestartRecomputes(t *testing.T) {
	url, conn := setup(t)
	cache := newMemCache()
	g := graphOf(t, spec{"a": nil, "b": {"a"}, "c": {"b"}}, "x86_64-linux")
	p := &pusher{conn: conn, cache: cache, quorum: 1, silent: true}
	log := &buildLog{}
	first := startScheduler(t, url, cache, "g1")
	testWorker(t, url, g, cache, p, log, "b1", "o1", nil)
	sub := submit(t, conn, g, cache, 1, 0)

	// a is built and visible, but nobody said so.
	waitFor(t, 10*time.Second, func() bool { ok, _ := cache.Has(context.Background(), fakePath("a")); return ok })
	if err := first.Close(testctx.New(t, time.Minute)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if got := len(log.all()); got != 1 {
		t.Fatalf("%d builds before the restart, want 1 (a)", got)
	}
	p.setSilent(false)
	// The second scheduler starts from the bucket and the cache alone.
	second := startScheduler(t, url, cache, "g1")
	st := waitFinished(t, conn, sub.Set.ID, 30*time.Second)
	if st.Counts[Done] != 3 {
		t.Fatalf("status %s", st)
	}
	checkBuilds(t, log, 3, 1)

	// A resync of a set all done marks it finished and forgets it; the
	// next scheduler does not load it again.
	if err := second.Resync(testctx.New(t, time.Minute), sub.Set.ID, true); err != nil {
		t.Fatal(err)
	}
	if st, err := GetStatus(testctx.New(t, time.Minute), conn, sub.Set.ID); err != nil || st.Set.Finished == nil {
		t.Errorf("set not marked finished: %v, %v", st, err)
	}
	if ids := second.loadedIDs(); len(ids) != 0 {
		t.Errorf("finished set still loaded: %v", ids)
	}
	if ids := startScheduler(t, url, cache, "g1").loadedIDs(); len(ids) != 0 {
		t.Errorf("a new scheduler loaded the finished set: %v", ids)
	}
}

// TestCrashBetweenPublishAndState: a scheduler that published a request
// and died before recording it leaves the derivation waiting with all
// its inputs; the next one publishes the same message again, which the
// stream stores once, and records it.
func TestCrashBetweenPublishAndState(t *testing.T) {
	url, conn := setup(t)
	cache := newMemCache()
	g := graphOf(t, spec{"a": nil}, "x86_64-linux")
	sub := submit(t, conn, g, cache, 2, 0)
	n := g.Node(fakePath("a.drv"))
	for replica := range 2 {
		r := &Request{Version: RecordVersion, Set: sub.Set.ID, Tenant: tenant, DrvPath: n.DrvPath, System: n.System,
			Outputs: n.Outputs, Replica: replica, Attempt: 1, Requested: time.Now()}
		if _, err := publishRequest(testctx.New(t, time.Minute), conn, r, ""); err != nil {
			t.Fatal(err)
		}
	}
	startScheduler(t, url, cache, "g1")
	waitFor(t, 10*time.Second, func() bool {
		st, err := GetStatus(testctx.New(t, time.Minute), conn, sub.Set.ID)
		return err == nil && st.Counts[Dispatched] == 1
	})
	info, err := conn.JetStream().Stream(testctx.New(t, time.Minute), queue.StreamFarm)
	if err != nil {
		t.Fatal(err)
	}
	if got := info.CachedInfo().State.Msgs; got != 2 {
		t.Errorf("%d requests queued, want 2 (one per replica, stored once)", got)
	}
}

// TestTwoSchedulersNoDoubleDispatch runs two schedulers in different
// groups, so both see every event and race for every dispatch.
func TestTwoSchedulersNoDoubleDispatch(t *testing.T) {
	url, conn := setup(t)
	cache := newMemCache()
	s := spec{}
	for i := range 6 {
		for j := range 6 {
			name := fmt.Sprintf("n%d_%d", i, j)
			if i > 0 {
				s[name] = []string{fmt.Sprintf("n%d_%d", i-1, j), fmt.Sprintf("n%d_%d", i-1, (j+1)%6)}
			} else {
				s[name] = nil
			}
		}
	}
	g := graphOf(t, s, "x86_64-linux")
	const quorum = 2
	p := &pusher{conn: conn, cache: cache, quorum: quorum}
	log := &buildLog{}
	startScheduler(t, url, cache, "ga")
	startScheduler(t, url, cache, "gb")
	for i := range 3 {
		testWorker(t, url, g, cache, p, log, fmt.Sprintf("b%d", i), fmt.Sprintf("o%d", i), nil)
	}
	sub := submit(t, conn, g, cache, quorum, 0)
	st := waitFinished(t, conn, sub.Set.ID, 60*time.Second)
	if st.Counts[Done] != 36 {
		t.Fatalf("status %s", st)
	}
	time.Sleep(300 * time.Millisecond) // let the last reports land
	builds := checkBuilds(t, log, 36, quorum)
	owners := map[string][]string{}
	for _, b := range builds {
		owners[b.drv] = append(owners[b.drv], b.owner)
	}
	for drv, os := range owners {
		if slices.Sort(os); len(slices.Compact(os)) != quorum {
			t.Errorf("%s built by owners %v, want %d distinct", drv, os, quorum)
		}
	}
	for k, n := range log.claims {
		if n != 1 {
			t.Errorf("%s claimed %d times", k, n)
		}
	}
	// Every request and every report was stored once.
	for _, stream := range []string{queue.StreamFarm, queue.StreamFarmReports} {
		info, err := conn.JetStream().Stream(testctx.New(t, time.Minute), stream)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := info.CachedInfo().State.LastSeq, uint64(36*quorum); got != want {
			t.Errorf("%s stored %d messages, want %d (one per replica)", stream, got, want)
		}
	}
}

// TestQuorumDistinctOwners: two workers of one owner and one of another;
// a quorum of 2 needs both owners on every derivation.
func TestQuorumDistinctOwners(t *testing.T) {
	url, conn := setup(t)
	cache := newMemCache()
	g := graphOf(t, spec{"a": nil, "b": nil, "c": {"a", "b"}}, "x86_64-linux")
	p := &pusher{conn: conn, cache: cache, quorum: 2}
	log := &buildLog{}
	startScheduler(t, url, cache, "g1")
	testWorker(t, url, g, cache, p, log, "alice-1", "alice", nil)
	testWorker(t, url, g, cache, p, log, "alice-2", "alice", nil)
	testWorker(t, url, g, cache, p, log, "bob-1", "bob", nil)
	sub := submit(t, conn, g, cache, 2, 0)
	waitFinished(t, conn, sub.Set.ID, 60*time.Second)
	for _, b := range checkBuilds(t, log, 3, 2) {
		t.Logf("%s replica %d by %s", b.drv, b.replica, b.builder)
	}
	per := map[string][]string{}
	for _, b := range log.all() {
		per[b.drv] = append(per[b.drv], b.owner)
	}
	for drv, os := range per {
		slices.Sort(os)
		if !slices.Equal(os, []string{"alice", "bob"}) {
			t.Errorf("%s built by %v", drv, os)
		}
	}
}

// TestRetryOnAnotherWorker: a derivation that fails on one builder is
// retried on another, and the set completes.
func TestRetryOnAnotherWorker(t *testing.T) {
	url, conn := setup(t)
	cache := newMemCache()
	g := graphOf(t, spec{"a": nil, "b": {"a"}}, "x86_64-linux")
	p := &pusher{conn: conn, cache: cache, quorum: 1}
	log := &buildLog{}
	startScheduler(t, url, cache, "g1")
	flaky := func(r *Request, builder string) bool { return builder == "bad" }
	testWorker(t, url, g, cache, p, log, "bad", "o1", flaky)
	sub := submit(t, conn, g, cache, 1, 3)
	// Only the bad worker runs: a fails once, and its retry must wait
	// for another builder. (30 s: a loaded CI machine under -race.)
	waitFor(t, 30*time.Second, func() bool {
		st, _ := GetStatus(testctx.New(t, time.Minute), conn, sub.Set.ID)
		return st != nil && len(st.Derivations) > 0 && slices.ContainsFunc(st.Derivations, func(s *State) bool { return len(s.Failures) == 1 })
	})
	testWorker(t, url, g, cache, p, log, "good", "o2", flaky)
	st := waitFinished(t, conn, sub.Set.ID, 30*time.Second)
	if st.Counts[Done] != 2 {
		t.Fatalf("status %s", st)
	}
	var aBuilds []string
	for _, b := range log.all() {
		if b.drv == "a" {
			aBuilds = append(aBuilds, fmt.Sprintf("%s#%d", b.builder, b.attempt))
		}
	}
	if !slices.Equal(aBuilds, []string{"bad#1", "good#2"}) {
		t.Errorf("builds of a: %v, want bad#1 then good#2", aBuilds)
	}
	for _, s := range st.Derivations {
		if nameOf(s.DrvPath) == "a" && (len(s.Failures) != 1 || s.Failures[0].Builder != "bad" || !strings.Contains(strings.Join(s.Failures[0].Log, "\n"), "failed")) {
			t.Errorf("a's failures: %+v", s.Failures)
		}
	}
}

// TestFailedBlocksDependents: a derivation that fails MaxAttempts times
// fails, and what depends on it is blocked by it; an independent branch
// completes.
func TestFailedBlocksDependents(t *testing.T) {
	url, conn := setup(t)
	cache := newMemCache()
	g := graphOf(t, spec{"bad": nil, "mid": {"bad"}, "top": {"mid", "ok"}, "ok": nil}, "x86_64-linux")
	broken := func(r *Request, _ string) bool { return strings.HasSuffix(r.DrvPath, "-bad.drv") }
	twoWorkers(t, url, conn, g, cache, broken)
	sub := submit(t, conn, g, cache, 1, 2)
	st := waitFinished(t, conn, sub.Set.ID, 30*time.Second)
	want := map[string]Status{"bad": Failed, "mid": Blocked, "top": Blocked, "ok": Done}
	defer func() {
		// The reports add up to: one build (ok), two failures (bad), at
		// testCost each, on two builders of two owners.
		// b1's standing, as a pusher records it.
		rec, _ := json.Marshal(cachepush.Reputation{Builder: "b1", Agreements: 3, Disagreements: 1, Quarantined: true})
		if err := conn.KVPut(testctx.New(t, time.Minute), queue.BucketBuilders, queue.BuilderKey("b1"), rec); err != nil {
			t.Fatal(err)
		}
		// (ok's report may land just after the set is finished.)
		var (
			stats            *Stats
			builds, failures int
			cpu              float64
		)
		deadline := time.Now().Add(10 * time.Second)
		for builds != 1 && time.Now().Before(deadline) {
			var err error
			if stats, err = ReadStats(testctx.New(t, time.Minute), conn, tenant, time.Now().Add(-time.Hour)); err != nil {
				t.Fatal(err)
			}
			builds, failures, cpu = 0, 0, 0
			for _, b := range stats.Builders {
				builds, failures, cpu = builds+b.Builds, failures+b.Failures, cpu+b.CPUSeconds
			}
			time.Sleep(20 * time.Millisecond)
		}
		if builds != 1 || failures != 2 || cpu != 3*testCost.CPUSeconds || len(stats.Owners) != 2 {
			t.Errorf("stats: %d builds, %d failures, %.2f CPU s, %d owners: %+v", builds, failures, cpu, len(stats.Owners), stats)
		}
		for _, b := range stats.Builders {
			if b.Builder == "b1" && (b.Agreements != 3 || b.Disagreements != 1 || !b.Quarantined || b.AgreementRate() != 0.75) {
				t.Errorf("b1's standing in the stats: %+v", b)
			}
			if b.Builder == "b2" && (b.Quarantined || b.AgreementRate() != -1) {
				t.Errorf("b2's standing in the stats: %+v", b)
			}
		}
		if later, err := ReadStats(testctx.New(t, time.Minute), conn, tenant, time.Now().Add(time.Minute)); err != nil || len(later.Builders) != 0 {
			t.Errorf("stats of a window after the builds: %+v, %v", later, err)
		}
	}()
	for _, s := range st.Derivations {
		name := nameOf(s.DrvPath)
		if s.Status != want[name] {
			t.Errorf("%s: %s, want %s", name, s.Status, want[name])
		}
		if s.Status == Blocked && s.BlockedBy != fakePath("bad.drv") {
			t.Errorf("%s blocked by %q", name, s.BlockedBy)
		}
		if name == "bad" {
			if len(s.Failures) != 2 || s.Failures[0].Builder == s.Failures[1].Builder {
				t.Errorf("bad's failures: %+v (want 2, on two builders)", s.Failures)
			}
		}
	}
}

func TestCancel(t *testing.T) {
	url, conn := setup(t)
	cache := newMemCache()
	g := graphOf(t, spec{"a": nil, "b": {"a"}}, "x86_64-linux")
	sub := submit(t, conn, g, cache, 1, 0)
	startScheduler(t, url, cache, "g1")
	waitFor(t, 10*time.Second, func() bool {
		st, err := GetStatus(testctx.New(t, time.Minute), conn, sub.Set.ID)
		return err == nil && st.Counts[Dispatched] == 1
	})
	if _, err := Cancel(testctx.New(t, time.Minute), conn, sub.Set.ID); err != nil {
		t.Fatal(err)
	}
	p := &pusher{conn: conn, cache: cache, quorum: 1}
	log := &buildLog{}
	var results []ClaimResult
	w := testWorker(t, url, g, cache, p, log, "b1", "o1", nil)
	_ = results
	waitFor(t, 10*time.Second, func() bool {
		info, err := conn.JetStream().Stream(testctx.New(t, time.Minute), queue.StreamFarm)
		return err == nil && info.CachedInfo().State.Msgs == 0
	})
	w()
	if got := log.all(); len(got) != 0 {
		t.Errorf("a cancelled set was built: %+v", got)
	}
	st, err := GetStatus(testctx.New(t, time.Minute), conn, sub.Set.ID)
	if err != nil || st.Set.Canceled == nil || !strings.Contains(st.String(), "cancelled") {
		t.Errorf("status %v, %v", st, err)
	}
	if _, err := GetStatus(testctx.New(t, time.Minute), conn, NewSetID()); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown set: %v", err)
	}
}

func waitFor(t testing.TB, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestWorkerLostMidBuild: a worker that dies mid-build (its connection
// gone, nothing acked) loses only that build: the request is
// redelivered after AckWait, and another worker takes the replica over.
func TestWorkerLostMidBuild(t *testing.T) {
	url, conn := setup(t)
	cache := newMemCache()
	g := graphOf(t, spec{"a": nil, "b": {"a"}}, "x86_64-linux")
	p := &pusher{conn: conn, cache: cache, quorum: 1}
	log := &buildLog{}
	startScheduler(t, url, cache, "g1")

	dying := connect(t, url)
	started := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := &Worker{Conn: dying, Tenant: tenant, Machine: Machine{System: "x86_64-linux"}, Builder: "dying", AckWait: time.Second,
		Build: func(ctx context.Context, r *Request) (*BuildStats, error) {
			close(started)
			<-ctx.Done() // hangs until its process "dies"
			return nil, ctx.Err()
		}}
	go w.Run(ctx)
	sub := submit(t, conn, g, cache, 1, 0)
	<-started
	dying.Close() // like kill -9: no ack, no nak, no report
	testWorker(t, url, g, cache, p, log, "survivor", "o2", nil)
	st := waitFinished(t, conn, sub.Set.ID, 30*time.Second)
	if st.Counts[Done] != 2 {
		t.Fatalf("status %s", st)
	}
	builds := checkBuilds(t, log, 2, 1)
	if builds[0].drv != "a" || builds[0].builder != "survivor" {
		t.Errorf("a rebuilt by %+v", builds[0])
	}
	claims, err := ReadClaims(testctx.New(t, time.Minute), conn, sub.Set.ID, fakePath("a.drv"))
	if err != nil {
		t.Fatal(err)
	}
	h := holders(claims, states(t, conn, sub.Set.ID)["a"], nil)
	if len(h) != 1 || h[0].Builder != "survivor" || h[0].Delivered < 2 {
		t.Errorf("holders of a: %+v (claims %+v), want taken over by survivor on a later delivery", h, claims)
	}
}

// TestRejectedResultRetried: a result the cache rejects (its NAR
// disagrees) counts as a failed build of that replica, retried on
// another builder; the set completes.
func TestRejectedResultRetried(t *testing.T) {
	url, conn := setup(t)
	cache := newMemCache()
	g := graphOf(t, spec{"a": nil, "b": {"a"}}, "x86_64-linux")
	p := &pusher{conn: conn, cache: cache, quorum: 1, liar: "liar"}
	log := &buildLog{}
	startScheduler(t, url, cache, "g1")
	testWorker(t, url, g, cache, p, log, "liar", "o1", nil)
	sub := submit(t, conn, g, cache, 1, 3)
	waitFor(t, 10*time.Second, func() bool {
		st, _ := GetStatus(testctx.New(t, time.Minute), conn, sub.Set.ID)
		return st != nil && slices.ContainsFunc(st.Derivations, func(s *State) bool { return len(s.Failures) == 1 })
	})
	// a is disputed until someone else builds it.
	if st, err := GetStatus(testctx.New(t, time.Minute), conn, sub.Set.ID); err != nil || st.Disputed != 1 || !strings.Contains(st.String(), "1 disputed") {
		t.Errorf("status while disputed: %v, %v", st, err)
	}
	testWorker(t, url, g, cache, p, log, "honest", "o2", nil)
	st := waitFinished(t, conn, sub.Set.ID, 30*time.Second)
	if st.Counts[Done] != 2 {
		t.Fatalf("status %s", st)
	}
	liarBuilds := map[string]int{}
	for _, b := range log.all() {
		if b.builder == "liar" {
			liarBuilds[b.drv]++
		}
	}
	// A rejection may still be on its way when the retry it caused is
	// done (the retry's request goes out before the failure is written):
	// it counts shortly after (TestFailureAfterDone).
	counted := func() bool {
		for _, s := range st.Derivations {
			if len(s.Failures) != liarBuilds[nameOf(s.DrvPath)] {
				return false
			}
		}
		return true
	}
	for deadline := time.Now().Add(10 * time.Second); !counted() && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		var err error
		if st, err = GetStatus(testctx.New(t, time.Minute), conn, sub.Set.ID); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range st.Derivations {
		name := nameOf(s.DrvPath)
		// Every build of the liar was rejected, and became a failure.
		if len(s.Failures) != liarBuilds[name] {
			t.Errorf("%s: %d failures for %d builds by the liar; state %+v; builds %+v", name, len(s.Failures), liarBuilds[name], s, log.all())
		}
		for _, f := range s.Failures {
			if f.Builder != "liar" || f.Rejected != "conflict" || !strings.Contains(f.Log[0], "rejected by the cache: conflict") {
				t.Errorf("%s: failure %+v", name, f)
			}
		}
	}
	if liarBuilds["a"] != 1 {
		t.Errorf("the liar built a %d times, want 1 (it is excluded after)", liarBuilds["a"])
	}
}

// TestForgedFailureReportIgnored: a failure report from a builder that
// does not hold the replica does not count.
func TestForgedFailureReportIgnored(t *testing.T) {
	conn, sub, _, _ := dispatchedA(t, 1)
	rep := &Report{Version: RecordVersion, Set: sub.Set.ID, Tenant: tenant, DrvPath: fakePath("a.drv"), Replica: 0, Attempt: 1,
		Builder: "mallory", Outcome: BuildFailed, Time: time.Now()}
	if err := PublishReport(testctx.New(t, time.Minute), conn, rep); err != nil {
		t.Fatal(err)
	}
	waitReportsHandled(t, conn, 1)
	stillDispatched(t, conn, sub.Set.ID, "a forged report counted")
}

// stillDispatched fails t with what unless set id's one derivation is
// still dispatched with no failure counted.
func stillDispatched(t *testing.T, conn *queue.Conn, id, what string) {
	t.Helper()
	st, err := GetStatus(testctx.New(t, time.Minute), conn, id)
	if err != nil {
		t.Fatal(err)
	}
	if st.Counts[Dispatched] != 1 || len(st.Derivations[0].Failures) != 0 {
		t.Fatalf("%s: %s %+v", what, st, st.Derivations[0])
	}
}

// states reads set id's derivations' states, by derivation name.
func states(t *testing.T, conn *queue.Conn, id string) map[string]*State {
	t.Helper()
	st, err := GetStatus(testctx.New(t, time.Minute), conn, id)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*State{}
	for _, d := range st.Derivations {
		out[nameOf(d.DrvPath)] = d
	}
	return out
}

// dispatchedA submits a set of one derivation, a, with quorum 1 and
// maxAttempts, to a scheduler, and waits until a is dispatched (no
// worker runs). The cache is the one the scheduler looks at.
func dispatchedA(t *testing.T, maxAttempts int) (*queue.Conn, *Submitted, *Scheduler, *memCache) {
	t.Helper()
	_, conn, _, cache, sub, s := submitA(t, maxAttempts, SchedulerConfig{Group: "g1"})
	return conn, sub, s, cache
}

// submitA is dispatchedA with the scheduler's cfg (its Cache set here),
// returning everything a test of the requeue needs.
func submitA(t *testing.T, maxAttempts int, cfg SchedulerConfig) (string, *queue.Conn, *Graph, *memCache, *Submitted, *Scheduler) {
	t.Helper()
	url, conn := setup(t)
	cache := newMemCache()
	g := graphOf(t, spec{"a": nil}, "x86_64-linux")
	sub := submit(t, conn, g, cache, 1, maxAttempts)
	cfg.Cache = cache
	s := startSchedulerWith(t, url, cfg)
	waitFor(t, 10*time.Second, func() bool { return states(t, conn, sub.Set.ID)["a"].Status == Dispatched })
	return url, conn, g, cache, sub, s
}

// forgeClaim writes, as builder's runner user may, builder's claim on
// replica 0 of drv in set id for attempt, on a delivery no worker's
// count reaches (so that a worker's claim, going by the claims alone,
// would leave the replica to it).
func forgeClaim(t *testing.T, conn *queue.Conn, id, drv, builder string, attempt int) {
	t.Helper()
	putClaim(t, conn, id, drv, Claim{Replica: 0, Attempt: attempt, Builder: builder, Owner: builder, Delivered: 1 << 40})
}

// putClaim writes c under the key of c.Builder.
func putClaim(t *testing.T, conn *queue.Conn, id, drv string, c Claim) {
	t.Helper()
	c.Version, c.At = RecordVersion, time.Now().UTC()
	b, _ := json.Marshal(c)
	if err := conn.KVPut(testctx.New(t, time.Minute), queue.BucketFarm, ClaimKey(id, drv, c.Builder), b); err != nil {
		t.Fatal(err)
	}
}

// TestReportOnAnotherBuildersSubjectRefused: a report is taken from the
// builder whose subject it arrived on only. A bad builder that makes a
// claim record name an honest builder, then publishes a failure report
// in the honest builder's name on its own subject (the only one its
// NATS user may publish on), uses up no attempt; the same report on the
// honest builder's subject would.
func TestReportOnAnotherBuildersSubjectRefused(t *testing.T) {
	conn, sub, _, _ := dispatchedA(t, 3)
	drv := fakePath("a.drv")
	forgeClaim(t, conn, sub.Set.ID, drv, "honest", 1)
	rep := &Report{Version: RecordVersion, Set: sub.Set.ID, Tenant: tenant, DrvPath: drv, Replica: 0, Attempt: 1,
		Builder: "honest", Owner: "honest", Outcome: BuildFailed, Time: time.Now().UTC()}
	mallorys, _ := queue.FarmReportSubject(tenant, "mallory")
	publishReportOn(t, conn, mallorys, "forged", rep)
	waitReportsHandled(t, conn, 1)
	stillDispatched(t, conn, sub.Set.ID, "a report on another builder's subject counted")
	// On the builder's own subject, the same report counts: what was
	// refused was its subject.
	if err := PublishReport(testctx.New(t, time.Minute), conn, rep); err != nil {
		t.Fatal(err)
	}
	waitReportsHandled(t, conn, 2)
	st, err := GetStatus(testctx.New(t, time.Minute), conn, sub.Set.ID)
	if err != nil {
		t.Fatal(err)
	}
	if f := st.Derivations[0].Failures; len(f) != 1 || f[0].Builder != "honest" {
		t.Errorf("the report on its own subject: failures %+v", f)
	}
}

// TestForgedClaimsFailOnce: a bad builder fails a derivation once,
// whatever it writes into claim records. It claims each new attempt
// directly in the bucket (skipping claim, which refuses a builder that
// failed the derivation) and reports that attempt failed, MaxAttempts
// times: only its first failure counts, the derivation stays
// dispatched, and its claims, void once it failed, do not keep the
// retry from an honest worker, which builds it and what needs it.
func TestForgedClaimsFailOnce(t *testing.T) {
	url, conn := setup(t)
	cache := newMemCache()
	g := graphOf(t, spec{"a": nil, "b": {"a"}}, "x86_64-linux")
	const maxAttempts = 3
	sub := submit(t, conn, g, cache, 1, maxAttempts)
	startScheduler(t, url, cache, "g1")
	drv := fakePath("a.drv")
	state := func() *State {
		t.Helper()
		kv, err := bucket(testctx.New(t, time.Minute), conn)
		if err != nil {
			t.Fatal(err)
		}
		var st State
		if _, _, err := getJSON(testctx.New(t, time.Minute), kv, stateKey(sub.Set.ID, drv), &st); err != nil {
			t.Fatal(err)
		}
		return &st
	}
	waitFor(t, 10*time.Second, func() bool { return state().Status == Dispatched })
	for i := range maxAttempts {
		attempt := state().Attempts[0]
		forgeClaim(t, conn, sub.Set.ID, drv, "mallory", attempt)
		rep := &Report{Version: RecordVersion, Set: sub.Set.ID, Tenant: tenant, DrvPath: drv, Replica: 0, Attempt: attempt,
			Builder: "mallory", Owner: "mallory", Outcome: BuildFailed, ExitCode: 1, Time: time.Now().UTC()}
		// A message id of its own each time: the same report again
		// would be stored once.
		subj, _ := rep.Subject()
		publishReportOn(t, conn, subj, fmt.Sprintf("forged-%d", i), rep)
		waitReportsHandled(t, conn, uint64(i+1))
	}
	st := state()
	if st.Status != Dispatched || len(st.Failures) != 1 || st.Failures[0].Builder != "mallory" || st.Attempts[0] != 2 {
		t.Fatalf("after %d forged failures of one builder: %+v, want dispatched, its first failure only, attempt 2", maxAttempts, st)
	}
	p := &pusher{conn: conn, cache: cache, quorum: 1}
	log := &buildLog{}
	testWorker(t, url, g, cache, p, log, "honest", "o1", nil)
	fin := waitFinished(t, conn, sub.Set.ID, 30*time.Second)
	if fin.Counts[Done] != 2 {
		t.Fatalf("status %s", fin)
	}
	for _, b := range log.all() {
		if b.drv == "a" && b.attempt != 2 {
			t.Errorf("the honest worker built a's attempt %d, want the retry (2) only", b.attempt)
		}
	}
}

// TestRejectedTwiceFailsOnce: the cache's rejections of one builder's
// results (a quarantined liar's, which it can get built again and again
// by claiming each new attempt in the bucket) fail the derivation once.
func TestRejectedTwiceFailsOnce(t *testing.T) {
	conn, sub, s, _ := dispatchedA(t, 2)
	drv := fakePath("a.drv")
	ctx := testctx.New(t, time.Minute)
	for attempt := 1; attempt <= 2; attempt++ {
		forgeClaim(t, conn, sub.Set.ID, drv, "liar", attempt)
		if err := s.Rejected(ctx, tenant, drv, "liar", "quarantined", "quarantined: builder liar"); err != nil {
			t.Fatal(err)
		}
	}
	st, err := GetStatus(ctx, conn, sub.Set.ID)
	if err != nil {
		t.Fatal(err)
	}
	if d := st.Derivations[0]; d.Status != Dispatched || len(d.Failures) != 1 || d.Failures[0].Rejected != "quarantined" {
		t.Errorf("after two rejections of one builder: %+v, want dispatched with one failure", d)
	}
}

// TestBuiltElsewhereUnblocks: a derivation that failed here and is then
// published by someone else (a CI job, another farm) is done after all,
// and what it blocked is built.
func TestBuiltElsewhereUnblocks(t *testing.T) {
	url, conn := setup(t)
	cache := newMemCache()
	g := graphOf(t, spec{"bad": nil, "mid": {"bad"}, "top": {"mid"}}, "x86_64-linux")
	p := &pusher{conn: conn, cache: cache, quorum: 1}
	log := &buildLog{}
	startScheduler(t, url, cache, "g1")
	broken := func(r *Request, _ string) bool { return strings.HasSuffix(r.DrvPath, "-bad.drv") }
	testWorker(t, url, g, cache, p, log, "b1", "o1", broken)
	sub := submit(t, conn, g, cache, 1, 1)
	st := waitFinished(t, conn, sub.Set.ID, 30*time.Second)
	if st.Counts[Failed] != 1 || st.Counts[Blocked] != 2 {
		t.Fatalf("status %s", st)
	}
	// Someone else's build of bad is published.
	cache.add(fakePath("bad"))
	if err := conn.PublishEvent(testctx.New(t, time.Minute), tenant, queue.EventPublished, map[string]any{"tenant": tenant, "storePath": fakePath("bad")}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, func() bool {
		st, err := GetStatus(testctx.New(t, time.Minute), conn, sub.Set.ID)
		return err == nil && st.Counts[Done] == 3
	})
	var built []string
	for _, b := range log.all() {
		built = append(built, b.drv)
	}
	if strings.Join(built, " ") != "bad mid top" {
		t.Errorf("built %v, want bad (failed), then mid and top", built)
	}
}

// TestQuarantinedWorkerTakesNothing: a worker whose builder is
// quarantined leaves every request to others, and its log says why.
func TestQuarantinedWorkerTakesNothing(t *testing.T) {
	url, conn := setup(t)
	cache := newMemCache()
	g := graphOf(t, spec{"a": nil, "b": {"a"}}, "x86_64-linux")
	p := &pusher{conn: conn, cache: cache, quorum: 1}
	startScheduler(t, url, cache, "g1")
	var logs strings.Builder
	var logMu sync.Mutex
	var took atomic.Int32
	ctx, cancel := context.WithCancel(context.Background())
	q := &Worker{Conn: connect(t, url), Tenant: tenant, Machine: Machine{System: "x86_64-linux"}, Builder: "shunned",
		Logger: slog.New(slog.NewTextHandler(lockedWriter{&logs, &logMu}, nil)),
		Standing: func(context.Context) (bool, string, error) {
			return true, "your builds disagreed with others' 5 times", nil
		},
		Build: func(ctx context.Context, r *Request) (*BuildStats, error) {
			took.Add(1)
			return &BuildStats{}, p.vote(ctx, r, "shunned")
		}}
	done := make(chan error, 1)
	go func() { done <- q.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	sub := submit(t, conn, g, cache, 1, 0)
	time.Sleep(500 * time.Millisecond) // the quarantined worker alone
	log := &buildLog{}
	testWorker(t, url, g, cache, p, log, "trusted", "o2", nil)
	waitFinished(t, conn, sub.Set.ID, 30*time.Second)
	if n := took.Load(); n != 0 {
		t.Errorf("the quarantined worker built %d derivations", n)
	}
	if len(log.all()) != 2 {
		t.Errorf("the other worker built %d, want 2", len(log.all()))
	}
	logMu.Lock()
	defer logMu.Unlock()
	if !strings.Contains(logs.String(), "quarantined") || !strings.Contains(logs.String(), "disagreed with others' 5 times") ||
		strings.Count(logs.String(), "is quarantined") != 1 {
		t.Errorf("worker log:\n%s", logs.String())
	}
}

type lockedWriter struct {
	b  *strings.Builder
	mu *sync.Mutex
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// TestWorkerStoppedMidBuild: a worker whose context ends mid-build (a
// runner taking its machine back for a forge job) reports no failure,
// even when its BuildFunc turns the kill into a failed build, and the
// request goes at once to another worker, not after AckWait.
func TestWorkerStoppedMidBuild(t *testing.T) {
	url, conn := setup(t)
	cache := newMemCache()
	g := graphOf(t, spec{"a": nil}, "x86_64-linux")
	p := &pusher{conn: conn, cache: cache, quorum: 1}
	log := &buildLog{}
	startScheduler(t, url, cache, "g1")

	started := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := &Worker{Conn: connect(t, url), Tenant: tenant, Machine: Machine{System: "x86_64-linux"}, Builder: "idle-runner",
		AckWait: time.Minute,
		Build: func(ctx context.Context, r *Request) (*BuildStats, error) {
			close(started)
			<-ctx.Done() // nix is killed: it exits non-zero
			return nil, &BuildError{ExitCode: 137, Log: []string{"killed"}}
		}}
	stopped := make(chan error, 1)
	go func() { stopped <- w.Run(ctx) }()
	sub := submit(t, conn, g, cache, 1, 1) // one attempt: a failure would end the set
	<-started
	testWorker(t, url, g, cache, p, log, "survivor", "o2", nil)
	t0 := time.Now()
	cancel()
	if err := <-stopped; err != nil {
		t.Fatalf("Run: %v", err)
	}
	st := waitFinished(t, conn, sub.Set.ID, 20*time.Second)
	if took := time.Since(t0); took > 10*time.Second {
		t.Errorf("rebuilt after %s: the request waited for its AckWait", took)
	}
	if st.Counts[Done] != 1 {
		t.Fatalf("status %s", st)
	}
	for _, d := range st.Derivations {
		if len(d.Failures) > 0 {
			t.Errorf("%s: failures %+v from a stopped build", d.DrvPath, d.Failures)
		}
	}
	if b := log.all(); len(b) != 1 || b[0].builder != "survivor" {
		t.Errorf("builds %+v", b)
	}
	if n := failureReports(t, conn); n != 0 {
		t.Errorf("%d failure reports", n)
	}
}

// TestAdaptiveReplicationWithdraws: under quorum 2 both replicas are
// dispatched; when the pusher publishes on fewer votes (a veteran's vote
// counts twice under the policy's trusted_after), the other replica's
// build, running, is withdrawn: stopped, its request dropped, no
// failure reported, and nobody builds it again.
func TestAdaptiveReplicationWithdraws(t *testing.T) {
	url, conn := setup(t)
	cache := newMemCache()
	g := graphOf(t, spec{"a": nil}, "x86_64-linux")
	p := &pusher{conn: conn, cache: cache, quorum: 1} // the veteran's one vote publishes
	startScheduler(t, url, cache, "g1")

	slowStarted := make(chan struct{})
	slowStopped := make(chan time.Time, 1)
	testWorkerFunc(t, url, "newcomer", func(ctx context.Context, r *Request) (*BuildStats, error) {
		close(slowStarted)
		select {
		case <-ctx.Done():
			slowStopped <- time.Now()
			return nil, &BuildError{ExitCode: 137, Log: []string{"killed"}}
		case <-time.After(time.Minute):
			return &testCost, nil
		}
	})
	published := make(chan time.Time, 1)
	testWorkerFunc(t, url, "veteran", func(ctx context.Context, r *Request) (*BuildStats, error) {
		select {
		case <-slowStarted: // both replicas are being built
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		published <- time.Now()
		return &testCost, p.vote(ctx, r, "veteran")
	})
	sub := submit(t, conn, g, cache, 2, 1)
	st := waitFinished(t, conn, sub.Set.ID, 30*time.Second)
	if st.Counts[Done] != 1 {
		t.Fatalf("status %s", st)
	}
	select {
	case at := <-slowStopped:
		if d := at.Sub(<-published); d > DefaultWithdrawCheck+3*time.Second {
			t.Errorf("the extra replica was withdrawn %s after the derivation was done", d)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the extra replica's build was not withdrawn")
	}
	for _, d := range st.Derivations {
		if len(d.Failures) > 0 {
			t.Errorf("%s: failures %+v from a withdrawn build", d.DrvPath, d.Failures)
		}
	}
	// Its request was dropped, not left for redelivery.
	ctx := testctx.New(t, time.Minute)
	subj, _ := queue.FarmBuildSubject(tenant, "x86_64-linux", FeatureClass(nil))
	var info *jetstream.ConsumerInfo
	for range 100 {
		c, err := conn.JetStream().Consumer(ctx, queue.StreamFarm, queue.FarmConsumer(subj))
		if err != nil {
			t.Fatal(err)
		}
		if info, err = c.Info(ctx); err != nil {
			t.Fatal(err)
		}
		if info.NumAckPending == 0 && info.NumPending == 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if info.NumAckPending != 0 || info.NumPending != 0 {
		t.Errorf("requests left: %d pending, %d unacknowledged", info.NumPending, info.NumAckPending)
	}
	if n := failureReports(t, conn); n != 0 {
		t.Errorf("%d failure reports", n)
	}
}

// failureReports counts the failed builds reported in the last hour.
func failureReports(t *testing.T, conn *queue.Conn) int {
	t.Helper()
	failed := 0
	if err := conn.ReadFarmReports(testctx.New(t, time.Minute), time.Now().Add(-time.Hour), func(subject string, data []byte) error {
		if rep, err := DecodeReport(subject, data); err == nil && rep.Outcome == BuildFailed {
			failed++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return failed
}

// TestDisputeDispatchesAnotherReplica: with quorum 2, a liar and an
// honest builder disagree; the cache publishes nothing and says the path
// is disputed, and the scheduler dispatches a third replica, to a third
// owner, whose agreement settles it. A redelivered dispute changes
// nothing.
func TestDisputeDispatchesAnotherReplica(t *testing.T) {
	url, conn := setup(t)
	cache := newMemCache()
	g := graphOf(t, spec{"a": nil}, "x86_64-linux")
	s := startScheduler(t, url, cache, "g1")
	var (
		mu     sync.Mutex
		honest []string
		voters []string
	)
	vote := func(builder string) BuildFunc {
		return func(ctx context.Context, r *Request) (*BuildStats, error) {
			mu.Lock()
			voters = append(voters, builder)
			if builder != "liar" {
				honest = append(honest, builder)
			}
			nv, nh := len(voters), len(honest)
			mu.Unlock()
			switch {
			case nh == 2:
				for _, o := range r.Outputs {
					cache.add(o)
					if err := conn.PublishEvent(ctx, r.Tenant, queue.EventPublished, map[string]any{"tenant": r.Tenant, "storePath": o, "drvPath": r.DrvPath}); err != nil {
						return nil, err
					}
				}
			case nv == 2:
				mu.Lock()
				answers := []map[string]any{{"builders": []string{"liar"}}, {"builders": slices.Clone(honest)}}
				mu.Unlock()
				if err := conn.PublishEvent(ctx, r.Tenant, queue.EventDisputed, map[string]any{"tenant": r.Tenant, "drvPath": r.DrvPath,
					"storePath": r.Outputs["out"], "answers": answers}); err != nil {
					return nil, err
				}
			}
			return &testCost, nil
		}
	}
	run := func(builder, owner string) {
		ctx, cancel := context.WithCancel(context.Background())
		w := &Worker{Conn: connect(t, url), Tenant: tenant, Machine: Machine{System: "x86_64-linux"}, Builder: builder, Owner: owner, Build: vote(builder)}
		done := make(chan error, 1)
		go func() { done <- w.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
	}
	run("liar", "o1")
	run("h1", "o2")
	sub := submit(t, conn, g, cache, 2, 3)
	drv := g.Nodes()[0].DrvPath
	var st *SetStatus
	waitFor(t, 10*time.Second, func() bool {
		st, _ = GetStatus(testctx.New(t, time.Minute), conn, sub.Set.ID)
		return st != nil && len(st.Derivations[0].Attempts) == 3
	})
	if d := st.Derivations[0]; d.Disputes != 1 || st.Disputed != 1 || d.Status != Dispatched {
		t.Fatalf("after the dispute: %s, %+v", st, d)
	}
	// The same dispute again (a redelivery) dispatches nothing more.
	if err := s.Disputed(testctx.New(t, time.Minute), tenant, drv, []string{"h1", "liar"}, 1); err != nil {
		t.Fatal(err)
	}
	run("h2", "o3")
	st = waitFinished(t, conn, sub.Set.ID, 20*time.Second)
	mu.Lock()
	defer mu.Unlock()
	if d := st.Derivations[0]; d.Status != Done || d.Disputes != 1 || len(d.Attempts) != 3 || len(voters) != 3 || !slices.Contains(honest, "h2") {
		t.Errorf("finished %s: %+v, builds by %v", st, d, voters)
	}
}

// TestFailureBeforeItsState: the scheduler publishes a request before it
// writes the state that says the derivation is dispatched, and a build
// that fails at once can be reported in between. That report waits for
// the state, and counts, instead of being dropped: dropped, it left the
// derivation dispatched with no request out, for good (a failure that
// showed up as TestBuiltElsewhereUnblocks stuck under -race).
func TestFailureBeforeItsState(t *testing.T) {
	url, conn := setup(t)
	cache := newMemCache()
	g := graphOf(t, spec{"b": nil, "a": {"b"}}, "x86_64-linux")
	sub := submit(t, conn, g, cache, 1, 1)
	startScheduler(t, url, cache, "g1")
	a := fakePath("a.drv")
	status := func() map[string]*State { return states(t, conn, sub.Set.ID) }
	waitFor(t, 10*time.Second, func() bool { return status()["b"].Status == Dispatched })
	// a still waits for b: its first attempt's report comes before the
	// scheduler has written that attempt.
	forgeClaim(t, conn, sub.Set.ID, a, "quick", 1)
	rep := &Report{Version: RecordVersion, Set: sub.Set.ID, Tenant: tenant, DrvPath: a, Replica: 0, Attempt: 1,
		Builder: "quick", Owner: "quick", Outcome: BuildFailed, ExitCode: 1, Time: time.Now().UTC()}
	publishFirstReport(t, conn, rep)
	if st := status()["a"]; st.Status != Waiting || len(st.Failures) != 0 {
		t.Fatalf("a before b is visible: %+v", st)
	}
	cache.add(fakePath("b"))
	if err := conn.PublishEvent(testctx.New(t, time.Minute), tenant, queue.EventPublished, map[string]any{"tenant": tenant, "storePath": fakePath("b")}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, func() bool { return status()["a"].Status.Final() })
	if st := status()["a"]; st.Status != Failed || len(st.Failures) != 1 || st.Failures[0].Builder != "quick" {
		t.Errorf("a: %+v, want failed by quick's report", st)
	}
}

// TestFailureAfterDone: a failure of the replica's holder that reaches the
// scheduler once its derivation is done (its retry's request goes out
// before the state records the failure, and the retry can finish first)
// still counts against that builder, and changes nothing else.
// TestRejectedResultRetried lost it now and then that way.
func TestFailureAfterDone(t *testing.T) {
	conn, sub, s, cache := dispatchedA(t, 3)
	a := fakePath("a.drv")
	state := func() *State { return states(t, conn, sub.Set.ID)["a"] }
	forgeClaim(t, conn, sub.Set.ID, a, "liar", 1) // as its worker claims it
	cache.add(fakePath("a"))
	ctx := testctx.New(t, time.Minute)
	if err := conn.PublishEvent(ctx, tenant, queue.EventPublished, map[string]any{"tenant": tenant, "storePath": fakePath("a")}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() bool { return state().Status == Done })
	if err := s.Rejected(ctx, tenant, a, "liar", "conflict", "NAR differs"); err != nil {
		t.Fatal(err)
	}
	st := state()
	if len(st.Failures) != 1 || st.Failures[0].Builder != "liar" || st.Failures[0].Rejected != "conflict" {
		t.Errorf("failures %+v, want the liar's rejection", st.Failures)
	}
	if st.Status != Done || !slices.Equal(st.Attempts, []int{1}) {
		t.Errorf("a: %+v, want done, its attempts unchanged", st)
	}

	// A bad builder claims an attempt never dispatched (any runner may
	// write claims) and reports it failed: once a is final there is no
	// state to wait for, so the report is dropped at once, not held, and
	// counts nothing.
	forgeClaim(t, conn, sub.Set.ID, a, "mallory", 5)
	if err := PublishReport(ctx, conn, &Report{Version: RecordVersion, Set: sub.Set.ID, Tenant: tenant, DrvPath: a, Replica: 0, Attempt: 5,
		Builder: "mallory", Owner: "mallory", Outcome: BuildFailed, ExitCode: 1, Time: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
	waitReportsHandled(t, conn, 1)
	if st := state(); len(st.Failures) != 1 || st.Status != Done {
		t.Errorf("a after a forged failure of attempt 5: %+v", st)
	}
}

// TestRejectedNegativeReplica: a claim record (any runner may write one)
// naming replica -1 for a builder whose result the cache rejects is
// ignored; it indexed the state's attempts and crashed the scheduler.
func TestRejectedNegativeReplica(t *testing.T) {
	conn, sub, s, _ := dispatchedA(t, 2)
	drv := fakePath("a.drv")
	ctx := testctx.New(t, time.Minute)
	putClaim(t, conn, sub.Set.ID, drv, Claim{Replica: -1, Attempt: 1, Builder: "liar", Owner: "liar", Delivered: 1})
	if err := s.Rejected(ctx, tenant, drv, "liar", "nar", "nar: forged"); err != nil {
		t.Fatal(err)
	}
	stillDispatched(t, conn, sub.Set.ID, "a rejection on replica -1 counted")
}

// TestFollowWhileStatesRewritten: Follow's first report counts every
// state of the set although states are rewritten while it starts (as
// the scheduler does): nats.go's watcher marker alone came early and the
// first report of a finished set could count it unfinished.
func TestFollowWhileStatesRewritten(t *testing.T) {
	_, conn := setup(t)
	cache := newMemCache()
	s := spec{}
	for i := range 20 {
		name := fmt.Sprintf("d%d", i)
		s[name] = nil
		cache.add(fakePath(name))
	}
	sub := submit(t, conn, graphOf(t, s, "x86_64-linux"), cache, 1, 0)
	if sub.Skipped != 20 {
		t.Fatalf("submitted: %d skipped, want 20 (all built already)", sub.Skipped)
	}
	ctx := testctx.New(t, time.Minute)
	kv, err := bucket(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	states, err := list[State](ctx, conn, statePrefix(sub.Set.ID))
	if err != nil || len(states) != 20 {
		t.Fatalf("states: %d, %v", len(states), err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // rewrite every state, unchanged, until stopped
		defer close(done)
		for {
			for k, st := range states {
				select {
				case <-stop:
					return
				default:
				}
				b, _ := json.Marshal(st)
				if _, err := kv.Put(ctx, k, b); err != nil {
					t.Error(err)
					return
				}
			}
		}
	}()
	defer func() { close(stop); <-done }()
	for round := range 30 {
		var first *Progress
		err := Follow(ctx, conn, sub.Set.ID, time.Hour, func(p *Progress) {
			if first == nil {
				cp := *p
				first = &cp
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		if first == nil || !first.Finished() {
			t.Fatalf("round %d: first report %+v, want the finished set", round, first)
		}
	}
}

// TestForgedFutureAttemptUncounted: a bad builder claims, in the bucket,
// an attempt the scheduler never dispatched and reports it failed. The
// report waits for a state that never comes and counts nothing; an
// honest builder's failure of the real attempt meanwhile counts, and is
// retried. Before, the forged failure counted and used up an attempt.
func TestForgedFutureAttemptUncounted(t *testing.T) {
	conn, sub, _, _ := dispatchedA(t, 3)
	drv := fakePath("a.drv")
	forgeClaim(t, conn, sub.Set.ID, drv, "mallory", 7)
	forged := &Report{Version: RecordVersion, Set: sub.Set.ID, Tenant: tenant, DrvPath: drv, Replica: 0, Attempt: 7,
		Builder: "mallory", Owner: "mallory", Outcome: BuildFailed, ExitCode: 1, Time: time.Now().UTC()}
	publishFirstReport(t, conn, forged)
	stillDispatched(t, conn, sub.Set.ID, "a forged failure of attempt 7 counted")

	forgeClaim(t, conn, sub.Set.ID, drv, "honest", 1)
	honest := &Report{Version: RecordVersion, Set: sub.Set.ID, Tenant: tenant, DrvPath: drv, Replica: 0, Attempt: 1,
		Builder: "honest", Owner: "honest", Outcome: BuildFailed, ExitCode: 1, Time: time.Now().UTC()}
	if err := PublishReport(testctx.New(t, time.Minute), conn, honest); err != nil {
		t.Fatal(err)
	}
	var st *State
	waitFor(t, 10*time.Second, func() bool {
		s, err := GetStatus(testctx.New(t, time.Minute), conn, sub.Set.ID)
		if err != nil || len(s.Derivations[0].Failures) == 0 {
			return false
		}
		st = s.Derivations[0]
		return true
	})
	if st.Status != Dispatched || len(st.Failures) != 1 || st.Failures[0].Builder != "honest" || st.Attempts[0] != 2 {
		t.Errorf("after a forged and an honest failure: %+v, want the honest one only, retried as attempt 2", st)
	}
}

// TestDroppedRequestSentAgain: a bad builder takes a request off the
// work queue and acknowledges it without claiming or building it. The
// scheduler's resync finds the request gone and no build of its replica,
// and once it has seen it gone for RequeueAfter it sends it again; an
// honest worker builds it. Before, the derivation waited for good. A
// request still queued is not sent twice.
func TestDroppedRequestSentAgain(t *testing.T) {
	const after = 300 * time.Millisecond
	url, conn, g, cache, sub, s := droppedA(t, SchedulerConfig{RequeueAfter: after})
	ctx := testctx.New(t, time.Minute)
	first := states(t, conn, sub.Set.ID)["a"].Requests
	if len(first) != 1 || first[0] == 0 {
		t.Fatalf("requests %v, want the one replica's stream sequence", first)
	}
	resync := func() []uint64 {
		t.Helper()
		if err := s.Resync(ctx, sub.Set.ID, false); err != nil {
			t.Fatal(err)
		}
		return states(t, conn, sub.Set.ID)["a"].Requests
	}
	if got := resync(); !slices.Equal(got, first) {
		t.Fatalf("requests %v as soon as the request is seen gone, want %v unchanged (a failure report may be on its way)", got, first)
	}
	time.Sleep(after)
	again := resync()
	if len(again) != 1 || again[0] <= first[0] {
		t.Fatalf("requests %v once seen gone for %v, want a later message than %v", again, after, first)
	}
	// Still queued: a later resync sends nothing.
	time.Sleep(after)
	if got := resync(); !slices.Equal(got, again) {
		t.Fatalf("requests %v after a second resync, want %v unchanged", got, again)
	}
	honestBuilds(t, url, conn, g, cache, sub.Set.ID)
}

// TestDroppedRequestClaimedBuilt: the bad builder that dropped a request
// also writes a claim saying it built the replica (its own key, any
// content). That holds the request off for BuiltTimeout only; then it is
// sent again, to others than that builder.
func TestDroppedRequestClaimedBuilt(t *testing.T) {
	const timeout = 2 * time.Second
	url, conn, g, cache, sub, s := droppedA(t, SchedulerConfig{RequeueAfter: time.Millisecond, BuiltTimeout: timeout})
	drv := fakePath("a.drv")
	putClaim(t, conn, sub.Set.ID, drv, Claim{Replica: 0, Attempt: 1, Builder: "mallory", Owner: "mallory", Msg: 1, Delivered: 1, Built: true})
	start := time.Now()
	again := resyncUntilSent(t, conn, s, sub.Set.ID, timeout+5*time.Second).Requests
	if took := time.Since(start); took < timeout-time.Second {
		t.Fatalf("requests %v after %v, want sent again once the built claim held it off for %v", again, took, timeout)
	}
	if r := sentRequest(t, conn, again[0]); r.Attempt != 1 || !slices.Contains(r.Exclude, "mallory") {
		t.Fatalf("request sent again: %+v; want attempt 1 excluding mallory", r)
	}
	// mallory's claim no longer holds the replica against that request.
	honestBuilds(t, url, conn, g, cache, sub.Set.ID)
}

// TestHeldRequestSentAgain: a bad builder takes a request and keeps it,
// telling the server it is in progress, and never builds: the server
// never takes it back. Once the scheduler has seen it queued for
// HoldTimeout and then held by that builder for HoldTimeout more, it
// sends the request again past that builder, and an honest one builds.
func TestHeldRequestSentAgain(t *testing.T) {
	const hold = time.Second
	url, conn, g, cache, sub, s, _ := heldA(t, hold)
	first := states(t, conn, sub.Set.ID)["a"].Requests
	start := time.Now()
	st := resyncUntilSent(t, conn, s, sub.Set.ID, 3*hold+10*time.Second)
	if took := time.Since(start); took < 2*hold-200*time.Millisecond {
		t.Fatalf("requests %v -> %v after %v, want sent again once queued %v and held by mallory %v more", first, st.Requests, took, hold, hold)
	}
	if len(st.Displaced) == 0 || !slices.Contains(st.Displaced[0], "mallory") {
		t.Fatalf("displaced %v, want mallory on replica 0", st.Displaced)
	}
	if r := sentRequest(t, conn, st.Requests[0]); !slices.Contains(r.Exclude, "mallory") {
		t.Fatalf("request sent again: %+v; want it to exclude mallory", r)
	}
	if b := honestBuilds(t, url, conn, g, cache, sub.Set.ID); len(b) != 1 || b[0].builder != "honest" {
		t.Fatalf("builds %+v, want honest's", b)
	}
}

// TestHeldRequestAcrossRestarts: the scheduler is restarted more often
// than HoldTimeout while mallory keeps the request; it goes out again
// past mallory all the same, because since when it has been queued is
// the server's time and since when it has been held is in the state,
// not in a scheduler's memory.
func TestHeldRequestAcrossRestarts(t *testing.T) {
	const hold = 2 * time.Second
	url, conn, _, cache, sub, s, _ := heldA(t, hold)
	first := states(t, conn, sub.Set.ID)["a"].Requests
	ctx := testctx.New(t, time.Minute)
	within := 3*hold + 10*time.Second
	for start, restarted := time.Now(), time.Now(); ; time.Sleep(100 * time.Millisecond) {
		if time.Since(restarted) >= hold/2 {
			if err := s.Close(ctx); err != nil {
				t.Fatal(err)
			}
			s, restarted = startSchedulerWith(t, url, SchedulerConfig{HoldTimeout: hold, Cache: cache}), time.Now()
		}
		if err := s.Resync(ctx, sub.Set.ID, false); err != nil {
			t.Fatal(err)
		}
		if st := states(t, conn, sub.Set.ID)["a"]; !slices.Equal(st.Requests, first) {
			if len(st.Displaced) == 0 || !slices.Contains(st.Displaced[0], "mallory") {
				t.Fatalf("displaced %v, want mallory on replica 0", st.Displaced)
			}
			return
		}
		if time.Since(start) > within {
			t.Fatalf("a's request %v not sent again within %v, with the scheduler restarted every %v", first, within, hold/2)
		}
	}
}

// TestHeldRequestClaimElsewhere: the bad builder keeps the message but
// rewrites its claim to name another message; it is timed and
// displaced all the same.
func TestHeldRequestClaimElsewhere(t *testing.T) {
	const hold = time.Second
	_, conn, _, _, sub, s, _ := heldA(t, hold)
	seq := states(t, conn, sub.Set.ID)["a"].Requests[0]
	putClaim(t, conn, sub.Set.ID, fakePath("a.drv"), Claim{Replica: 0, Attempt: 1, Builder: "mallory", Owner: "mallory", Msg: seq + 1000, Delivered: 1})
	st := resyncUntilSent(t, conn, s, sub.Set.ID, 3*hold+10*time.Second)
	if len(st.Displaced) == 0 || !slices.Contains(st.Displaced[0], "mallory") {
		t.Fatalf("displaced %v, want mallory", st.Displaced)
	}
}

// TestHeldRequestNoClaim: the bad builder keeps the message in progress
// without writing any claim. The scheduler sees that a worker has had it
// (its consumer delivered it) and sends it again after HoldTimeout
// more; an honest worker builds.
func TestHeldRequestNoClaim(t *testing.T) {
	const hold = time.Second
	url, conn, g, cache, sub, s := submitA(t, 3, SchedulerConfig{HoldTimeout: hold})
	release := keepWithoutClaim(t, conn)
	start := time.Now()
	resyncUntilSent(t, conn, s, sub.Set.ID, 3*hold+10*time.Second)
	if took := time.Since(start); took < 2*hold-200*time.Millisecond {
		t.Fatalf("sent again after %v, want after %v queued and %v more", took, hold, hold)
	}
	release() // it keeps the old message no more: a worker would drop it
	if b := honestBuilds(t, url, conn, g, cache, sub.Set.ID); len(b) != 1 {
		t.Fatalf("builds %+v, want one", b)
	}
}

// TestHeldRequestClaimToggled: the keeper writes and withdraws its
// claim, each more briefly than HoldTimeout; the count is not started
// again by that, and the request goes out again past it.
func TestHeldRequestClaimToggled(t *testing.T) {
	const hold = 2 * time.Second
	_, conn, _, _, sub, s := submitA(t, 3, SchedulerConfig{HoldTimeout: hold})
	keepWithoutClaim(t, conn)
	seq := states(t, conn, sub.Set.ID)["a"].Requests[0]
	c, _ := json.Marshal(Claim{Version: RecordVersion, Replica: 0, Attempt: 1, Builder: "mallory", Owner: "mallory", Msg: seq, Delivered: 1, At: time.Now().UTC()})
	key := ClaimKey(sub.Set.ID, fakePath("a.drv"), "mallory")
	ctx, stop := context.WithCancel(testctx.New(t, time.Minute))
	toggled := make(chan struct{})
	go func() {
		defer close(toggled)
		for on := true; ctx.Err() == nil; on = !on {
			if on {
				conn.KVPut(ctx, queue.BucketFarm, key, c)
			} else {
				conn.KVDelete(ctx, queue.BucketFarm, key)
			}
			select {
			case <-ctx.Done():
			case <-time.After(hold * 3 / 4):
			}
		}
	}()
	defer func() { stop(); <-toggled }()
	st := resyncUntilSent(t, conn, s, sub.Set.ID, 4*hold+10*time.Second)
	if len(st.Displaced) == 0 || !slices.Contains(st.Displaced[0], "mallory") {
		t.Fatalf("displaced %v, want mallory", st.Displaced)
	}
}

// keepWithoutClaim takes the farm's one request off the work queue and
// keeps it in progress, writing no claim and building nothing, until
// the returned release (or the test's end).
func keepWithoutClaim(t *testing.T, conn *queue.Conn) (release func()) {
	t.Helper()
	subj, err := queue.FarmBuildSubject(tenant, "x86_64-linux", FeatureClass(nil))
	if err != nil {
		t.Fatal(err)
	}
	held := make(chan struct{}, 1)
	k, err := conn.ConsumeFarm(testctx.New(t, time.Minute), queue.ConsumerOptions{FilterSubject: subj, AckWait: 2 * time.Second},
		func(ctx context.Context, d *queue.Delivery) error {
			defer d.KeepAlive(ctx, 500*time.Millisecond, nil)()
			select {
			case held <- struct{}{}:
			default:
			}
			<-ctx.Done()
			return ctx.Err()
		})
	if err != nil {
		t.Fatal(err)
	}
	release = sync.OnceFunc(func() { k.Stop(); <-k.Closed() })
	t.Cleanup(release)
	select {
	case <-held:
	case <-time.After(30 * time.Second):
		t.Fatal("the request never came")
	}
	return release
}

// TestHeldRequestReleased: after the request was sent again past the
// bad builder, it lets the old message go. That message, older than the
// one the state records, is dropped by the honest worker it comes to,
// not built a second time beside the honest build of the new one (a
// worker that found it held would take it over after its ClaimTimeout).
func TestHeldRequestReleased(t *testing.T) {
	const hold = time.Second
	url, conn, _, _, sub, s, stopMallory := heldA(t, hold)
	ctx := testctx.New(t, time.Minute)
	old := states(t, conn, sub.Set.ID)["a"].Requests[0]
	resyncUntilSent(t, conn, s, sub.Set.ID, 3*hold+10*time.Second)
	h1 := make(chan struct{}, 1)
	holdingWorker(t, url, "h1", time.Second, keepBuilding(h1))
	select {
	case <-h1:
	case <-ctx.Done():
		t.Fatal("no honest worker took the request sent again")
	}
	stopMallory() // lets the old message go: it comes back at once
	built := make(chan struct{}, 1)
	holdingWorker(t, url, "h2", time.Second, keepBuilding(built))
	waitFor(t, 20*time.Second, func() bool {
		_, queued, err := conn.FarmRequestQueued(ctx, old)
		return err == nil && !queued
	})
	select {
	case <-built:
		t.Fatal("h2 built the replica h1 builds, from the old message")
	default:
	}
}

// TestHeldRequestStaleClaim: a builder that claimed a message and
// dropped it unbuilt is displaced when the message is sent again, so
// its claim does not hold the replica against the new message (an
// honest worker would wait out its ClaimTimeout); and a claim on an
// earlier message says nothing of who holds the current one: the
// scheduler times and displaces the current message's holder.
func TestHeldRequestStaleClaim(t *testing.T) {
	const hold = time.Second
	url, conn, _, _, sub, s := droppedA(t, SchedulerConfig{HoldTimeout: hold, RequeueAfter: time.Millisecond})
	drv := fakePath("a.drv")
	dropped := states(t, conn, sub.Set.ID)["a"].Requests[0]
	putClaim(t, conn, sub.Set.ID, drv, Claim{Replica: 0, Attempt: 1, Builder: "dropper", Owner: "dropper", Msg: dropped, Delivered: 1})
	if st := resyncUntilSent(t, conn, s, sub.Set.ID, 10*time.Second); len(st.Displaced) == 0 || !slices.Contains(st.Displaced[0], "dropper") {
		t.Fatalf("displaced %v after the dropped message was sent again, want dropper", st.Displaced)
	}
	got := make(chan struct{}, 1)
	holdingWorker(t, url, "h1", time.Hour, keepBuilding(got))
	select {
	case <-got:
	case <-time.After(20 * time.Second):
		t.Fatal("h1 never built the message sent again: dropper's claim held the replica")
	}
	st := resyncUntilSent(t, conn, s, sub.Set.ID, 3*hold+10*time.Second)
	if len(st.Displaced) == 0 || !slices.Contains(st.Displaced[0], "h1") {
		t.Fatalf("displaced %v, want h1, which held the current message", st.Displaced)
	}
}

// heldA submits a set of one derivation, a, with quorum 1 to a scheduler
// with HoldTimeout hold (resynced by the test), and has mallory take its
// request and keep it in progress, never building it.
func heldA(t *testing.T, hold time.Duration) (url string, conn *queue.Conn, g *Graph, cache *memCache, sub *Submitted, s *Scheduler, stopMallory func()) {
	t.Helper()
	url, conn, g, cache, sub, s = submitA(t, 3, SchedulerConfig{HoldTimeout: hold})
	held := make(chan struct{}, 1)
	stopMallory = holdingWorker(t, url, "mallory", time.Hour, keepBuilding(held)) // in progress until stopped
	select {
	case <-held:
	case <-time.After(30 * time.Second):
		t.Fatal("mallory never got the request")
	}
	return url, conn, g, cache, sub, s, stopMallory
}

// keepBuilding is a build that tells started it began, and then lasts
// until the worker stops.
func keepBuilding(started chan<- struct{}) BuildFunc {
	return func(ctx context.Context, r *Request) (*BuildStats, error) {
		select {
		case started <- struct{}{}:
		default:
		}
		<-ctx.Done()
		return nil, ctx.Err()
	}
}

// holdingWorker runs a worker whose AckWait is 2 s and whose builds are
// build, and returns what stops it.
func holdingWorker(t *testing.T, url, builder string, claimTimeout time.Duration, build BuildFunc) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &Worker{Conn: connect(t, url), Tenant: tenant, Machine: Machine{System: "x86_64-linux"}, Builder: builder,
		AckWait: 2 * time.Second, ClaimTimeout: claimTimeout, Build: build, Logger: testLogger(t, "worker "+builder)}
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

// resyncUntilSent resyncs set id until a's request changes, and returns
// its state then.
func resyncUntilSent(t *testing.T, conn *queue.Conn, s *Scheduler, id string, within time.Duration) *State {
	t.Helper()
	ctx := testctx.New(t, time.Minute)
	first := states(t, conn, id)["a"].Requests
	for start := time.Now(); time.Since(start) < within; time.Sleep(100 * time.Millisecond) {
		if err := s.Resync(ctx, id, false); err != nil {
			t.Fatal(err)
		}
		if st := states(t, conn, id)["a"]; !slices.Equal(st.Requests, first) {
			return st
		}
	}
	t.Fatalf("a's request %v not sent again within %v", first, within)
	return nil
}

// droppedA submits a set of one derivation, a, with quorum 1 to a
// scheduler of cfg (Cache set here), waits until a is dispatched, and
// drops its request (dropRequest).
func droppedA(t *testing.T, cfg SchedulerConfig) (string, *queue.Conn, *Graph, *memCache, *Submitted, *Scheduler) {
	t.Helper()
	url, conn, g, cache, sub, s := submitA(t, 3, cfg)
	dropRequest(t, conn)
	return url, conn, g, cache, sub, s
}

// sentRequest is the farm request stored at seq.
func sentRequest(t *testing.T, conn *queue.Conn, seq uint64) *Request {
	t.Helper()
	ctx := testctx.New(t, time.Minute)
	stream, err := conn.JetStream().Stream(ctx, queue.StreamFarm)
	if err != nil {
		t.Fatal(err)
	}
	m, err := stream.GetMsg(ctx, seq)
	if err != nil {
		t.Fatal(err)
	}
	r, err := DecodeRequest(m.Data)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// honestBuilds starts an honest worker (o1's, voting through a quorum-1
// pusher), waits until set id has finished with its one derivation done,
// and returns the builds.
func honestBuilds(t *testing.T, url string, conn *queue.Conn, g *Graph, cache *memCache, id string) []build {
	t.Helper()
	log := &buildLog{}
	testWorker(t, url, g, cache, &pusher{conn: conn, cache: cache, quorum: 1}, log, "honest", "o1", nil)
	if st := waitFinished(t, conn, id, 30*time.Second); st.Counts[Done] != 1 {
		t.Fatalf("status %s", st)
	}
	return log.all()
}

// dropRequest takes one farm request off the work queue and acknowledges
// it, as a bad builder may.
func dropRequest(t *testing.T, conn *queue.Conn) {
	t.Helper()
	ctx := testctx.New(t, time.Minute)
	subj, err := queue.FarmBuildSubject(tenant, "x86_64-linux", FeatureClass(nil))
	if err != nil {
		t.Fatal(err)
	}
	dropped := make(chan struct{}, 1)
	k, err := conn.ConsumeFarm(ctx, queue.ConsumerOptions{FilterSubject: subj}, func(context.Context, *queue.Delivery) error {
		select {
		case dropped <- struct{}{}:
		default:
		}
		return nil // acked, never built
	})
	if err != nil {
		t.Fatal(err)
	}
	<-dropped
	k.Stop()
	<-k.Closed()
}
