package cachepush

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	natsd "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/queue"
)

// requestKind names what a message seen on the server is, by its subject
// (and, for acks, its body): the requests a pusher sends, the replies it
// gets, and what the server publishes on its own.
func requestKind(m *nats.Msg) string {
	s := m.Subject
	switch {
	case strings.HasPrefix(s, "_INBOX."):
		return "reply"
	case strings.HasPrefix(s, "$JS.ACK."):
		op, _, _ := strings.Cut(string(m.Data), " ")
		return "ack " + op
	case strings.HasPrefix(s, "$JS.API.CONSUMER.MSG.NEXT."):
		return "pull request"
	case strings.HasPrefix(s, "$JS.API.DIRECT.GET."):
		stream, _, _ := strings.Cut(strings.TrimPrefix(s, "$JS.API.DIRECT.GET."), ".")
		return "direct get " + stream
	case strings.HasPrefix(s, "$KV."):
		bucket, _, _ := strings.Cut(strings.TrimPrefix(s, "$KV."), ".")
		return "kv write " + bucket
	case strings.HasPrefix(s, "$JS.EVENT."):
		parts := strings.Split(strings.TrimPrefix(s, "$JS.EVENT."), ".")
		return "advisory " + strings.Join(parts[:min(3, len(parts))], ".")
	case strings.HasPrefix(s, "$JS.API."):
		parts := strings.Split(strings.TrimPrefix(s, "$JS.API."), ".")
		return "api " + strings.Join(parts[:min(2, len(parts))], ".")
	case strings.HasPrefix(s, "events."):
		return "event " + s[strings.LastIndexByte(s, '.')+1:]
	}
	first, _, _ := strings.Cut(s, ".")
	return "other " + first
}

// requestCounter counts the messages the server routes in one account,
// by requestKind, from a connection subscribed to everything.
type requestCounter struct {
	mu     sync.Mutex
	counts map[string]int
	sub    *nats.Subscription
}

func countRequests(t testing.TB, url string) *requestCounter {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	c := &requestCounter{counts: map[string]int{}}
	c.sub, err = nc.Subscribe(">", func(m *nats.Msg) {
		c.mu.Lock()
		c.counts[requestKind(m)]++
		c.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.sub.SetPendingLimits(-1, -1); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return c
}

// stop ends counting once every message routed so far has arrived, and
// returns the counts.
func (c *requestCounter) stop(t testing.TB) map[string]int {
	t.Helper()
	if err := c.sub.Drain(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); c.sub.IsValid(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("request counter did not drain")
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.counts)
}

// subscriptionChurn is how many subscriptions the server inserted and
// removed so far, in all accounts.
func subscriptionChurn(t testing.TB, s *natsd.Server) uint64 {
	t.Helper()
	sz, err := s.Subsz(nil)
	if err != nil {
		t.Fatal(err)
	}
	return sz.NumInserts + sz.NumRemoves
}

// TestRequestsPerResult lists the NATS traffic one result costs a pusher
// consuming results (quorum 1, one output referring to itself, a scoped
// staged NAR): the requests it sends, by kind, the replies, and the
// subscriptions made and removed on the server. Each is server CPU and a
// client round trip; the test holds the total to a budget so a change
// that adds one per result shows.
func TestRequestsPerResult(t *testing.T) {
	f := newFixture(t)
	ctx := testctx.New(t, 120*time.Second)
	const n = 40
	paths := map[string]bool{}
	for i := range n {
		r, _ := f.result(t, spec{name: fmt.Sprintf("req-%d", i), content: fmt.Sprintf("req %d", i)})
		if _, err := f.conn.PublishResult(ctx, r); err != nil {
			t.Fatal(err)
		}
		paths[r.Outputs[0].Path] = true
	}
	pubSubj, _ := queue.EventsSubject(testTenant, queue.EventPublished)
	done := make(chan struct{})
	var mu sync.Mutex
	sub, err := f.conn.NATS().Subscribe(pubSubj, func(m *nats.Msg) {
		mu.Lock()
		defer mu.Unlock()
		for p := range paths {
			if strings.Contains(string(m.Data), `"storePath":"`+p+`"`) {
				delete(paths, p)
				if len(paths) == 0 {
					close(done)
				}
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	counter := countRequests(t, f.srv.ClientURL())
	churn0 := subscriptionChurn(t, f.srv.NATS())
	start := time.Now()
	if err := f.pusher.Open(ctx, f.conn, queue.ConsumerOptions{Group: "req", FilterSubject: queue.ResultsFilter(testTenant), Concurrency: 4}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatalf("%d results never published", len(paths))
	}
	if err := f.pusher.Close(ctx); err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	churn := subscriptionChurn(t, f.srv.NATS()) - churn0
	counts := counter.stop(t)

	perResult := func(v int) float64 { return float64(v) / n }
	requests, builders := 0, 0
	for _, k := range slices.Sorted(maps.Keys(counts)) {
		t.Logf("%-40s %6.2f per result", k, perResult(counts[k]))
		switch {
		case k == "reply", strings.HasPrefix(k, "advisory"), k == "other results", strings.HasPrefix(k, "api CONSUMER.CREATE"), strings.HasPrefix(k, "api CONSUMER.DURABLE"):
		case strings.HasSuffix(k, queue.BucketBuilders):
			builders += counts[k]
		default:
			requests += counts[k]
		}
	}
	t.Logf("%-40s %6.2f per result", "requests and publications", perResult(requests+builders))
	t.Logf("%-40s %6.2f per result", "subscriptions made and removed", perResult(int(churn)))
	// What one result needs: a pull and an ack, its vote stored and then
	// marked counted, the waiting check before the ingest and the
	// waiters' read after it, the staged NAR (one get), the publication
	// event; 8, plus a little setup (the consumer, the sweeper's list).
	if got := perResult(requests); got > 8.5 {
		t.Errorf("%.2f requests per result besides the builders' records, want at most 8.5", got)
	}
	// The builder's record: read by each handler at most every
	// repCacheTTL, written (read and updated) once per ReputationFlush
	// and when the pusher closes; not per result.
	if max := 4*int(elapsed/repCacheTTL+1) + 2*int(elapsed/DefaultReputationFlush+2); builders > max {
		t.Errorf("%d requests on the builders' records in %s, want at most %d", builders, elapsed, max)
	}
	if got := perResult(counts["api STREAM.INFO"]); got > 0.2 {
		t.Errorf("%.2f stream infos per result: opening a staged NAR must not ask for one", got)
	}
}
