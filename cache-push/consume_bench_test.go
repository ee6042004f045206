package cachepush

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testproc"
	"codeberg.org/provenix/provenix/queue"
)

// BenchmarkConsumeResults measures a pusher consuming results from an
// embedded NATS server, as `provenix up` runs one (256 handlers,
// wire.DirConcurrency; quorum 1, no VSA): the CPU of this process (pusher and server) per result, and
// the messages the server handled per result. Results (one output, a
// small NAR staged in its builder's scope, as builders stage: the
// fixture's results) are signed, staged and published before the clock
// starts; it stops when the last
// publication event arrives.
//
//	go test -run '^$' -bench ConsumeResults -benchtime 3000x ./cache-push/
func BenchmarkConsumeResults(b *testing.B) {
	f := newFixture(b)
	ctx := testctx.New(b, 10*time.Minute)
	pu, err := New(Config{KV: f.conn, Store: f.store, Policy: f.pusher.cfg.Policy, CacheKey: f.pusher.cfg.CacheKey, Staging: f.conn,
		Events: f.conn, UncheckedOutputPathsUnsafe: true})
	if err != nil {
		b.Fatal(err)
	}
	results := make([]*queue.Result, b.N)
	for i := range results {
		results[i], _ = f.result(b, spec{name: fmt.Sprintf("consume-%d", i), content: fmt.Sprint(i)})
	}
	for _, r := range results {
		if _, err := f.conn.PublishResult(ctx, r); err != nil {
			b.Fatal(err)
		}
	}
	pubSubj, _ := queue.EventsSubject(testTenant, queue.EventPublished)
	var published atomic.Int64
	done := make(chan struct{})
	sub, err := f.conn.NATS().Subscribe(pubSubj, func(*nats.Msg) {
		if published.Add(1) == int64(b.N) {
			close(done)
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Unsubscribe()
	rejected, _ := queue.EventsSubject(testTenant, queue.EventRejected)
	rsub, err := f.conn.NATS().Subscribe(rejected, func(m *nats.Msg) { b.Errorf("rejected: %s", m.Data) })
	if err != nil {
		b.Fatal(err)
	}
	defer rsub.Unsubscribe()

	v0 := serverMsgs(b, f)
	cpu0 := testproc.SelfCPU(b)
	b.ResetTimer()
	start := time.Now()
	if err := pu.Open(ctx, f.conn, queue.ConsumerOptions{Group: "bench", FilterSubject: queue.ResultsFilter(testTenant), Concurrency: 256}); err != nil {
		b.Fatal(err)
	}
	select {
	case <-done:
	case <-ctx.Done():
		b.Fatalf("%d of %d published", published.Load(), b.N)
	}
	elapsed := time.Since(start)
	cpu := testproc.SelfCPU(b) - cpu0
	b.StopTimer()
	msgs := serverMsgs(b, f) - v0
	if err := pu.Close(ctx); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "results/s")
	b.ReportMetric(float64(cpu.Microseconds())/1000/float64(b.N), "cpu-ms/result")
	b.ReportMetric(float64(msgs)/float64(b.N), "server-msgs/result")
}

// serverMsgs is how many messages the embedded server received and sent
// so far.
func serverMsgs(t testing.TB, f *fixture) int64 {
	t.Helper()
	v, err := f.srv.NATS().Varz(nil)
	if err != nil {
		t.Fatal(err)
	}
	return v.InMsgs + v.OutMsgs
}
