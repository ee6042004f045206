package farm

import (
	"encoding/json"
	"maps"
	"testing"
	"time"

	cachepush "codeberg.org/provenix/provenix/cache-push"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/nardiff"
	"codeberg.org/provenix/provenix/queue"
)

// TestStatsDisputes: the stats count each builder's disputes by cause,
// from the disputed events the pushers published: once per store path
// (with its latest causes) however many pushers published it, "other"
// when the summary named no cause, nothing from another tenant or from
// before the window, and the owners add up their builders'.
func TestStatsDisputes(t *testing.T) {
	_, conn := setup(t)
	ctx := testctx.New(t, time.Minute)
	now := time.Now().UTC()
	set := NewSetID()
	for i, b := range []struct{ builder, owner string }{{"b1", "o1"}, {"b2", "o2"}, {"b3", "o1"}, {"b4", "o4"}} {
		claimAndReport(t, conn, &Report{Version: RecordVersion, Attempt: 1, Set: set, Tenant: tenant, DrvPath: fakePath(b.builder + ".drv"), Replica: i,
			Builder: b.builder, Owner: b.owner, Outcome: Built, CPUSeconds: 1, Time: now}, true)
	}
	dispute := func(tenant, path string, at time.Time, nars map[string][]string, causes ...nardiff.CauseKind) {
		t.Helper()
		d := cachepush.Dispute{Time: at, Tenant: tenant, StorePath: fakePath(path), Verdict: cachepush.VerdictDisputed, NARs: nars}
		if causes != nil {
			d.Summary = &nardiff.Summary{Differing: 1, Files: []string{"/x"}, Causes: causes}
		}
		if err := conn.PublishEvent(ctx, tenant, queue.EventDisputed, d); err != nil {
			t.Fatal(err)
		}
	}
	ab := map[string][]string{"aa": {"b1"}, "bb": {"b2"}}
	// p1: a timestamp, published by two pusher groups.
	dispute(tenant, "p1", now, ab, nardiff.CauseTimestamp)
	dispute(tenant, "p1", now, ab, nardiff.CauseTimestamp)
	// p2: a build path and a timestamp, first seen between b1 and b2,
	// then again when b3 voted with b2.
	dispute(tenant, "p2", now, ab, nardiff.CauseBuildPath)
	dispute(tenant, "p2", now, map[string][]string{"aa": {"b1"}, "bb": {"b2", "b3"}}, nardiff.CauseBuildPath, nardiff.CauseTimestamp)
	// p3: nothing recognised (no summary).
	dispute(tenant, "p3", now, map[string][]string{"aa": {"b1"}, "bb": {"b3"}})
	// Not counted: another tenant's, one from before the window.
	dispute("other", "p4", now, map[string][]string{"aa": {"b1"}, "bb": {"b4"}}, nardiff.CauseRandom)
	dispute(tenant, "p5", now.Add(-2*time.Hour), map[string][]string{"aa": {"b1"}, "bb": {"b4"}}, nardiff.CauseRandom)

	st, err := ReadStats(ctx, conn, tenant, now.Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]struct {
		n      int
		causes map[nardiff.CauseKind]int
		text   string
	}{
		"b1": {3, map[nardiff.CauseKind]int{"timestamp": 2, "build-path": 1, "other": 1}, "3 disputes: timestamp ×2, build-path ×1, other ×1"},
		"b2": {2, map[nardiff.CauseKind]int{"timestamp": 2, "build-path": 1}, "2 disputes: timestamp ×2, build-path ×1"},
		"b3": {2, map[nardiff.CauseKind]int{"timestamp": 1, "build-path": 1, "other": 1}, "2 disputes: build-path ×1, other ×1, timestamp ×1"},
		"b4": {0, nil, ""},
	}
	if len(st.Builders) != len(want) {
		t.Fatalf("builders: %+v", st.Builders)
	}
	for _, b := range st.Builders {
		w := want[b.Builder]
		if b.Disputes != w.n || !maps.Equal(b.Causes, w.causes) || b.DisputeText() != w.text {
			t.Errorf("%s: %d disputes, causes %v, %q; want %d, %v, %q", b.Builder, b.Disputes, b.Causes, b.DisputeText(), w.n, w.causes, w.text)
		}
	}
	for _, o := range st.Owners {
		if o.Owner == "o1" && (o.Disputes != 5 || !maps.Equal(o.Causes, map[nardiff.CauseKind]int{"timestamp": 3, "build-path": 2, "other": 2})) {
			t.Errorf("o1 adds up b1 and b3: %+v", o)
		}
	}
	b, _ := json.Marshal(st.Builders[0])
	var back Tally
	if err := json.Unmarshal(b, &back); err != nil || back.Disputes != st.Builders[0].Disputes || !maps.Equal(back.Causes, st.Builders[0].Causes) {
		t.Errorf("JSON %s: %+v, %v", b, back, err)
	}

	// A window after the disputes, with a later build, counts the build
	// and no dispute, and does not wait for disputes that will not come.
	time.Sleep(10 * time.Millisecond)
	since := time.Now()
	claimAndReport(t, conn, &Report{Version: RecordVersion, Attempt: 1, Set: set, Tenant: tenant, DrvPath: fakePath("late.drv"), Builder: "b1", Owner: "o1",
		Outcome: Built, Time: since.UTC()}, true)
	// (Another kind of event since: the stream has news, none disputed.)
	if err := conn.PublishEvent(ctx, tenant, queue.EventPublished, map[string]string{"tenant": tenant}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	later, err := ReadStats(ctx, conn, tenant, since)
	if err != nil || len(later.Builders) != 1 || later.Builders[0].Builds != 1 || later.Builders[0].Disputes != 0 || later.Builders[0].Causes != nil {
		t.Errorf("stats of a later window: %+v, %v", later, err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("a window without disputes took %v", d)
	}
}

// claimAndReport publishes rep, after recording the claim it reports on
// when claimed is set.
func claimAndReport(t *testing.T, conn *queue.Conn, rep *Report, claimed bool) {
	t.Helper()
	ctx := testctx.New(t, time.Minute)
	if claimed {
		putClaim(t, conn, rep.Set, rep.DrvPath, Claim{Replica: rep.Replica, Attempt: rep.Attempt, Builder: rep.Builder, Owner: rep.Owner, Delivered: 1})
	}
	if err := PublishReport(ctx, conn, rep); err != nil {
		t.Fatal(err)
	}
}

// TestStatsCountOnlyClaimants: a report is a worker's word; a builder
// that publishes reports for replicas it never held (to top the
// leaderboard, or in another builder's name, under another owner)
// is not counted. Only the claimant's report counts, under the owner
// it claimed with.
func TestStatsCountOnlyClaimants(t *testing.T) {
	_, conn := setup(t)
	now := time.Now().UTC()
	set := NewSetID()
	drv := fakePath("x.drv")
	honest := &Report{Version: RecordVersion, Attempt: 1, Set: set, Tenant: tenant, DrvPath: drv, Builder: "honest", Owner: "o1",
		Outcome: Built, CPUSeconds: 2, Time: now}
	claimAndReport(t, conn, honest, true)
	// The cheat: the same replica in its own name, a replica nobody
	// holds, and a second report in the honest builder's name with a
	// huge CPU time and another owner (a different attempt: its own
	// message id).
	claimAndReport(t, conn, &Report{Version: RecordVersion, Attempt: 1, Set: set, Tenant: tenant, DrvPath: drv, Builder: "cheat", Owner: "o2",
		Outcome: Built, CPUSeconds: 1e6, Time: now}, false)
	claimAndReport(t, conn, &Report{Version: RecordVersion, Attempt: 1, Set: set, Tenant: tenant, DrvPath: fakePath("y.drv"), Builder: "cheat",
		Outcome: Built, CPUSeconds: 1e6, Time: now}, false)
	claimAndReport(t, conn, &Report{Version: RecordVersion, Set: set, Tenant: tenant, DrvPath: drv, Attempt: 1, Builder: "honest",
		Owner: "o2", Outcome: Built, CPUSeconds: 1e6, Time: now}, false)

	st, err := ReadStats(testctx.New(t, time.Minute), conn, tenant, now.Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Builders) != 1 || st.Builders[0].Builder != "honest" || st.Builders[0].Owner != "o1" ||
		st.Builders[0].Builds != 1 || st.Builders[0].CPUSeconds != 2 {
		t.Fatalf("builders %+v: want the honest claimant's one build only", st.Builders)
	}
	if len(st.Owners) != 1 || st.Owners[0].Owner != "o1" {
		t.Fatalf("owners %+v", st.Owners)
	}
}

// TestStatsSkipReportOnAnotherBuildersSubject: a report counts under the
// builder whose subject it arrived on only. A cheat that publishes, on
// its own subject (the only one its NATS user may publish on), reports
// in another builder's name on a replica the claim record says that
// builder holds (a failure to sink it, a build with a huge CPU time)
// changes nobody's figures; the builder's own report counts.
func TestStatsSkipReportOnAnotherBuildersSubject(t *testing.T) {
	_, conn := setup(t)
	now := time.Now().UTC()
	victim := &Report{Version: RecordVersion, Attempt: 1, Set: NewSetID(), Tenant: tenant, DrvPath: fakePath("x.drv"), Builder: "victim", Owner: "o1",
		Outcome: Built, CPUSeconds: 2, Time: now}
	claimAndReport(t, conn, victim, true)
	cheats, _ := queue.FarmReportSubject(tenant, "cheat")
	failure, build := *victim, *victim
	failure.Outcome, failure.CPUSeconds = BuildFailed, 1e6
	build.CPUSeconds = 1e6
	publishReportOn(t, conn, cheats, "forged-failure", &failure)
	publishReportOn(t, conn, cheats, "forged-build", &build)
	st, err := ReadStats(testctx.New(t, time.Minute), conn, tenant, now.Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Builders) != 1 || st.Builders[0].Builder != "victim" || st.Builders[0].Builds != 1 || st.Builders[0].Failures != 0 ||
		st.Builders[0].CPUSeconds != 2 {
		t.Fatalf("builders %+v: want the victim's own report only", st.Builders)
	}
}
