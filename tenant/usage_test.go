package tenant

import (
	"context"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/queue"
	"codeberg.org/provenix/provenix/usage"
)

// TestUsagePermissions: a tenant's runner records its own usage, and
// nothing else: not for another tenant, not for another builder id, not
// as the cache server; its pusher records what the cache served and
// reads the tenant's records; the other tenant's account sees none.
func TestUsagePermissions(t *testing.T) {
	c := startTenants(t, nil, "a", "b")
	pusherA, pusherB := c.connect(t, "a", queue.RolePusher), c.connect(t, "b", queue.RolePusher)
	runnerA := c.connect(t, "a", queue.RoleRunner)
	for _, p := range []*queue.Conn{pusherA, pusherB} {
		if err := p.EnsureStreams(testctx.New(t, 20*time.Second), queue.StreamOptions{}); err != nil {
			t.Fatalf("pusher EnsureStreams: %v", err)
		}
	}
	runnerPub, _ := usage.NewPublisher(runnerA)
	pusherPub, _ := usage.NewPublisher(pusherA)
	now := time.Now().UTC()
	job := func(tenant, builder string) *usage.Record {
		return &usage.Record{Kind: usage.KindJob, Tenant: tenant, Builder: builder, Repository: "alice/pkgs",
			Start: now.Add(-time.Minute), End: now, CPUMicros: 42e6, BytesBuilt: 7}
	}
	since := now.Add(-time.Hour)

	if err := runnerPub.Record(testctx.New(t, 20*time.Second), job("a", "a-runner")); err != nil {
		t.Fatalf("a runner records its own job: %v", err)
	}
	for name, r := range map[string]*usage.Record{
		"for tenant b":        job("b", "a-runner"),
		"for b's builder":     job("b", "b-runner"),
		"as another builder":  job("a", "someone-else"),
		"as the cache server": {Kind: usage.KindServe, Tenant: "a", Reader: "alice", Start: now.Add(-time.Minute), End: now, BytesServed: 1 << 30},
	} {
		start := time.Now()
		err := runnerPub.Record(context.Background(), r)
		fast(t, "a runner records "+name, start, err, queue.ErrPermissionDenied)
	}
	serve := &usage.Record{Kind: usage.KindServe, Tenant: "a", Reader: "alice", Start: now.Add(-time.Minute), End: now, BytesServed: 100, Requests: 2}
	if err := pusherPub.Record(testctx.New(t, 20*time.Second), serve); err != nil {
		t.Fatalf("a pusher records what a's cache served: %v", err)
	}
	start := time.Now()
	fast(t, "a pusher records a job", start, pusherPub.Record(context.Background(), job("a", "a-runner")), queue.ErrPermissionDenied)

	// What a's pusher reads: a's two records. b's account has none.
	rep, err := usage.Summarize(testctx.New(t, 20*time.Second), pusherA, queue.UsageFilter("a"), since, usage.ByTenant)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Rows) != 1 || rep.Rows[0].Jobs != 1 || rep.Rows[0].Serves != 1 || rep.Rows[0].CPUSeconds != 42 || rep.Rows[0].BytesServed != 100 || rep.Refused != 0 {
		t.Fatalf("a's usage: %+v", rep)
	}
	rep, err = usage.Summarize(testctx.New(t, 20*time.Second), pusherB, queue.UsageFilter("b"), since, usage.ByTenant)
	if err != nil || len(rep.Rows) != 0 {
		t.Fatalf("b's usage: %+v, %v", rep, err)
	}
	// A runner reads back its own builder's records (its operator bills
	// from them), and no one else's.
	own, _ := usage.Filter("a", "a-runner")
	rep, err = usage.Summarize(testctx.New(t, 20*time.Second), runnerA, own, since, usage.ByBuilder)
	if err != nil || len(rep.Rows) != 1 || rep.Rows[0].Key != "a-runner" {
		t.Fatalf("a runner reads its own usage: %+v, %v", rep, err)
	}
	start = time.Now()
	_, err = usage.Summarize(context.Background(), runnerA, queue.UsageFilter("a"), since, usage.ByTenant)
	fast(t, "a runner reads every record of its tenant", start, err, queue.ErrPermissionDenied)
}
