//go:build linux

package main

import (
	"context"
	"encoding/json"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cache-push/wire"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testnats"
	"codeberg.org/provenix/provenix/internal/testproc"
	"codeberg.org/provenix/provenix/queue"
	natsserver "codeberg.org/provenix/provenix/queue/server"
	"codeberg.org/provenix/provenix/up"
)

// BenchmarkQueueFloor is the floor BenchmarkResultsCluster stands on:
// the same results through the same servers (the embedded one and a
// cluster of three nats-server processes, in one run), consumed by two
// members of one group with wire.DirConcurrency handlers each, by a
// handler that does only the queue's share of a push: read the staged
// NAR, write a vote record, publish an event, double-ack. No signature
// check, no cache file. Its results/s is what no pusher on these servers
// and this machine can pass, whatever it does.
//
//	go test -run '^$' -bench QueueFloor -benchtime 1x ./cmd/provenix/
func BenchmarkQueueFloor(b *testing.B) {
	ctx := testctx.New(b, 20*time.Minute)
	p := up.Paths{Dir: b.TempDir()}
	if _, err := up.Init(p); err != nil {
		b.Fatal(err)
	}
	signer, err := attest.LoadSigner(p.BuilderKey())
	if err != nil {
		b.Fatal(err)
	}
	srv := testnats.Embedded(b, natsserver.Config{})
	cl := startNATSCluster(b, 3)
	setups := []struct {
		name, url    string
		elapsed, cpu time.Duration
	}{{name: "embedded", url: srv.ClientURL()}, {name: "cluster", url: cl.URL()}}
	for b.Loop() {
		for i := range setups {
			b.StopTimer()
			d, cpu := benchFloorRun(b, ctx, signer, setups[i].url)
			setups[i].elapsed += d
			setups[i].cpu += cpu
			b.Logf("%s: %.0f results/s, %.2f ms CPU/result (this process), load average %s", setups[i].name,
				benchResults/d.Seconds(), float64(cpu.Microseconds())/1000/benchResults, loadAvg())
			b.StartTimer()
		}
	}
	n := float64(benchResults * b.N)
	b.ReportMetric(n/setups[0].elapsed.Seconds(), "embedded-results/s")
	b.ReportMetric(n/setups[1].elapsed.Seconds(), "cluster-results/s")
	b.ReportMetric(float64(setups[0].cpu.Microseconds())/1000/n, "embedded-cpu-ms/result")
}

// benchFloorRun stages and publishes benchResults new results on url
// and consumes them with BenchmarkQueueFloor's handler; it returns how
// long that took from the first publish and this process's CPU time.
func benchFloorRun(b *testing.B, ctx context.Context, signer *attest.Signer, url string) (time.Duration, time.Duration) {
	b.Helper()
	conn, err := queue.Connect(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	if err := conn.EnsureStreams(ctx, queue.StreamOptions{}); err != nil {
		b.Fatal(err)
	}
	tag := uniqueMessage(b)[len(b.Name())+1:]
	rs := synthResults(b, ctx, signer, tag, benchResults)
	stageAll(b, ctx, conn, rs)
	st, err := conn.JetStream().Stream(ctx, queue.StreamResults)
	if err != nil {
		b.Fatal(err)
	}
	if err := st.Purge(ctx); err != nil {
		b.Fatal(err)
	}

	var handled atomic.Int64
	done := make(chan struct{})
	handler := func(pc *queue.Conn) queue.Handler {
		return func(ctx context.Context, d *queue.Delivery) error {
			if err := floorPush(ctx, pc, d); err != nil {
				b.Error(err)
			}
			if handled.Add(1) == int64(len(rs)) {
				close(done)
			}
			return nil
		}
	}
	start, startCPU := time.Now(), testproc.SelfCPU(b)
	for range 2 {
		pc, err := queue.Connect(ctx, url)
		if err != nil {
			b.Fatal(err)
		}
		defer pc.Close()
		k, err := pc.ConsumeResults(ctx, queue.ConsumerOptions{Group: "floor" + tag, FilterSubject: queue.ResultsFilter(up.DefaultTenant),
			Concurrency: wire.DirConcurrency}, handler(pc))
		if err != nil {
			b.Fatal(err)
		}
		defer k.Stop()
	}
	next := make(chan int)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for i := range next {
				if _, err := conn.PublishResult(ctx, rs[i].result); err != nil {
					b.Error(err)
				}
			}
		})
	}
	for i := range rs {
		next <- i
	}
	close(next)
	wg.Wait()
	select {
	case <-done:
	case <-time.After(5 * time.Minute):
		b.Fatalf("%d of %d results handled after 5 minutes", handled.Load(), len(rs))
	}
	return time.Since(start), testproc.SelfCPU(b) - startCPU
}

// floorPush is the queue's share of pushing d: its staged NAR read, one
// vote record written, one event published.
func floorPush(ctx context.Context, c *queue.Conn, d *queue.Delivery) error {
	r, err := queue.DecodeResult(d.Data)
	if err != nil {
		return err
	}
	o := r.Outputs[0]
	rc, _, err := c.OpenStaged(ctx, o.StagingKey)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, rc)
	if cerr := rc.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	vote, err := json.Marshal(map[string]string{"builder": r.Builder, "narHash": o.NarHash})
	if err != nil {
		return err
	}
	if _, err := c.KVCreate(ctx, queue.BucketVotes, queue.VoteKey(r.Tenant, o.Path, r.Builder), vote); err != nil {
		return err
	}
	return c.PublishEvent(ctx, r.Tenant, queue.EventPublished, map[string]string{"path": o.Path})
}
