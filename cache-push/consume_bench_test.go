package cachepush

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nix-community/go-nix/pkg/nar"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testproc"
	"codeberg.org/provenix/provenix/queue"
)

// BenchmarkConsumeResults measures a pusher consuming results from an
// embedded NATS server, as `provenix up` runs one (16 handlers, quorum 1,
// no VSA): the CPU of this process (pusher and server) per result, and
// the messages the server handled per result. Results (one output, a
// small NAR staged in its builder's scope, as builders stage) are signed,
// staged and published before the clock starts; it stops when the last
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
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for range 2 {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < b.N; i = int(next.Add(1) - 1) {
				r, err := benchResult(ctx, f, i)
				if err != nil {
					errs <- err
					return
				}
				results[i] = r
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
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
	if err := pu.Open(ctx, f.conn, queue.ConsumerOptions{Group: "bench", FilterSubject: queue.ResultsFilter(testTenant), Concurrency: 16}); err != nil {
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

// benchResult stages a small NAR for result i in the builder's scope and
// signs the result.
func benchResult(ctx context.Context, f *fixture, i int) (*queue.Result, error) {
	name := fmt.Sprintf("consume-%d", i)
	var buf bytes.Buffer
	w, err := nar.NewWriter(&buf)
	if err != nil {
		return nil, err
	}
	content := fmt.Appendf(nil, "result %d\n", i)
	if err := w.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeRegular, Size: int64(len(content))}); err != nil {
		return nil, err
	}
	if _, err := w.Write(content); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	out := attest.Output{Name: "out", Path: storePath(name), NarHash: sha256.Sum256(buf.Bytes()), NarSize: uint64(buf.Len())}
	drv := storePath(name + ".drv")
	st, err := attest.NewStatement(&attest.Build{DrvPath: drv, System: "x86_64-linux", BuilderID: testBuilder,
		Installable: attest.Installable{Kind: "drv", Ref: drv}, Outputs: []attest.Output{out}})
	if err != nil {
		return nil, err
	}
	bundle, err := attest.Sign(ctx, st, f.signer)
	if err != nil {
		return nil, err
	}
	key := queue.ScopedKey(queue.StagingKey(hex.EncodeToString(out.NarHash[:])), testBuilder)
	if _, err := f.conn.Stage(ctx, key, bytes.NewReader(buf.Bytes())); err != nil {
		return nil, err
	}
	r := &queue.Result{Version: queue.ResultVersion, Tenant: testTenant, Builder: testBuilder, DrvPath: drv, System: "x86_64-linux",
		Outputs: []queue.Output{{Name: "out", Path: out.Path, NarHash: out.NarHashHex(), NarSize: out.NarSize, StagingKey: key}},
		Bundle:  json.RawMessage(bundle)}
	return r, nil
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
