package farm

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testproc"
)

// layered is a synthetic graph of layers×width derivations, each (past
// the first layer) depending on two of the layer before.
func layered(b testing.TB, layers, width int) *Graph {
	rng := rand.New(rand.NewPCG(1, 2))
	s := spec{}
	for l := range layers {
		for w := range width {
			name := fmt.Sprintf("l%d-%d", l, w)
			if l == 0 {
				s[name] = nil
				continue
			}
			x, y := rng.IntN(width), rng.IntN(width)
			s[name] = slices.Compact(slices.Sorted(slices.Values([]string{fmt.Sprintf("l%d-%d", l-1, x), fmt.Sprintf("l%d-%d", l-1, y)})))
		}
	}
	return graphOf(b, s, "x86_64-linux")
}

// BenchmarkSchedule10k measures the farm's scheduling overhead: a
// 10,000-derivation graph (50 layers of 200, two inputs each) built by
// no-op workers whose "build" makes the outputs visible and publishes
// the pusher's event at once. Everything else is real: NATS, the bucket,
// the scheduler, the workers' claims and reports. Run with
// -benchtime=1x; it reports derivations dispatched (and completed) per
// second, from the set record's creation to the last derivation done.
func BenchmarkSchedule10k(b *testing.B) {
	const layers, width = 50, 200
	for b.Loop() {
		b.StopTimer()
		url, conn := setup(b)
		cache := newMemCache()
		g := layered(b, layers, width)
		p := &pusher{conn: conn, cache: cache, quorum: 1}
		log := &buildLog{}
		s, err := NewScheduler(SchedulerConfig{Conn: connect(b, url), Cache: cache, ResyncEvery: time.Hour, Concurrency: 32})
		if err != nil {
			b.Fatal(err)
		}
		if err := s.Open(testctx.New(b, time.Minute)); err != nil {
			b.Fatal(err)
		}
		for i := range 4 {
			testWorker(b, url, nil, cache, p, log, fmt.Sprintf("w%d", i), fmt.Sprintf("o%d", i), nil)
		}
		b.StartTimer()
		t0 := time.Now()
		sub := submit(b, conn, g, cache, 1, 0)
		submitted := time.Now()
		cpu0 := testproc.SelfCPU(b)
		// The last build's event, then the status.
		waitFor(b, 10*time.Minute, func() bool { return len(log.all()) == layers*width })
		st := waitFinishedEvery(b, conn, sub.Set.ID, time.Minute, 10*time.Millisecond)
		took := time.Since(submitted)
		cpu := testproc.SelfCPU(b) - cpu0
		b.StopTimer()
		if st.Counts[Done] != layers*width || len(log.all()) != layers*width {
			b.Fatalf("status %s, %d builds", st, len(log.all()))
		}
		b.ReportMetric(float64(layers*width)/took.Seconds(), "drv/s")
		b.ReportMetric(submitted.Sub(t0).Seconds(), "submit-s")
		b.ReportMetric(took.Seconds(), "dispatch-s")
		// What the whole process (NATS server, scheduler, workers, the
		// stand-in pusher) spent per derivation: unlike drv/s, it does not
		// depend on what else the machine runs.
		b.ReportMetric(float64(cpu.Microseconds())/1000/float64(layers*width), "cpu-ms/drv")
		s.Close(context.Background())
		b.StartTimer()
	}
}

// BenchmarkDispatchLatency measures, along a chain of 300 derivations,
// the time from a derivation's outputs being published (the pusher's
// event) to its dependent's request being delivered to a worker.
func BenchmarkDispatchLatency(b *testing.B) {
	const n = 300
	for b.Loop() {
		b.StopTimer()
		url, conn := setup(b)
		cache := newMemCache()
		s := spec{"c0": nil}
		for i := 1; i < n; i++ {
			s[fmt.Sprintf("c%d", i)] = []string{fmt.Sprintf("c%d", i-1)}
		}
		g := graphOf(b, s, "x86_64-linux")
		var (
			mu        sync.Mutex
			published = map[string]time.Time{}
			lat       []time.Duration
		)
		startScheduler(b, url, cache, "g1")
		p := &pusher{conn: conn, cache: cache, quorum: 1}
		ctx, cancel := context.WithCancel(context.Background())
		w := &Worker{Conn: connect(b, url), Tenant: tenant, Machine: Machine{System: "x86_64-linux"}, Builder: "w", Concurrency: 1,
			Build: func(ctx context.Context, r *Request) (*BuildStats, error) {
				got := time.Now()
				mu.Lock()
				for _, need := range g.Needs(r.DrvPath) {
					lat = append(lat, got.Sub(published[need]))
				}
				published[r.Outputs["out"]] = time.Now()
				mu.Unlock()
				return &BuildStats{}, p.vote(ctx, r, "")
			}}
		done := make(chan error, 1)
		go func() { done <- w.Run(ctx) }()
		b.StartTimer()
		sub := submit(b, conn, g, cache, 1, 0)
		waitFinished(b, conn, sub.Set.ID, 5*time.Minute)
		b.StopTimer()
		cancel()
		<-done
		slices.Sort(lat)
		if len(lat) != n-1 {
			b.Fatalf("%d latencies, want %d", len(lat), n-1)
		}
		q := func(f float64) float64 { return float64(lat[int(f*float64(len(lat)-1))].Microseconds()) / 1000 }
		b.ReportMetric(q(0.5), "p50-ms")
		b.ReportMetric(q(0.9), "p90-ms")
		b.ReportMetric(q(0.99), "p99-ms")
		b.StartTimer()
	}
}
